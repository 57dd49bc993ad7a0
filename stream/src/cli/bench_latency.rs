//! `avlm bench --parts latency`: how live the transcript feels. Clips with
//! known word timings (tools/make_latency_clips.py, committed under
//! samples/latency) are streamed as raw PCM at exactly real-time pace, so
//! media time t arrives at wall time t0 + t. Measured per stream:
//! - end of speech → Final: from the end of a sentence's last word to its
//!   Final (includes the endpointing silence the VAD waits for);
//! - word end → first Partial: from a word's end to the first Partial (or
//!   Final) whose decode covered that audio.
//!
//! Then the same with N concurrent streams, to find how many real-time
//! streams the machine sustains: the model thread's load (the summed model
//! time of all partials and finals over wall time, i.e. the aggregate
//! real-time factor of the model) must stay at or below 1 and the finals'
//! p95 latency must not run away.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use avlm_proto as pb;
use serde::Deserialize;

use super::serve::RuntimeArgs;

const RATE: usize = avlm_encoders::SAMPLE_RATE as usize;
/// 20 ms of audio per message, as a live capture would send.
const CHUNK: usize = RATE / 50;

#[derive(Debug, Deserialize)]
struct Word {
    end_s: f64,
}

#[derive(Debug, Deserialize)]
struct ClipMeta {
    media: String,
    words: Vec<Word>,
}

struct Clip {
    pcm: Arc<Vec<u8>>,
    duration_s: f64,
    word_ends: Vec<f64>,
}

fn load_clips(dir: &Path) -> anyhow::Result<Vec<Clip>> {
    let mut metas: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| {
            anyhow::anyhow!(
                "{}: {e} (make it with tools/make_latency_clips.py)",
                dir.display()
            )
        })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    metas.sort();
    let mut clips = Vec::new();
    for path in metas {
        let meta: ClipMeta = serde_json::from_slice(&std::fs::read(&path)?)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let samples = avlm_stream::media::file::decode_audio_file(&dir.join(&meta.media))?;
        let pcm: Vec<u8> = samples
            .iter()
            .flat_map(|x| (((x.clamp(-1.0, 1.0)) * 32767.0) as i16).to_le_bytes())
            .collect();
        clips.push(Clip {
            duration_s: samples.len() as f64 / RATE as f64,
            pcm: Arc::new(pcm),
            word_ends: meta.words.iter().map(|w| w.end_s).collect(),
        });
    }
    anyhow::ensure!(!clips.is_empty(), "no clips (*.json) in {}", dir.display());
    Ok(clips)
}

/// What one stream of one clip measured.
#[derive(Default)]
struct Measured {
    final_latency: Vec<f64>,
    partial_latency: Vec<f64>,
    compute_s: f64,
    partials: usize,
    finals: usize,
    media_s: f64,
}

impl Measured {
    fn add(&mut self, other: Measured) {
        self.final_latency.extend(other.final_latency);
        self.partial_latency.extend(other.partial_latency);
        self.compute_s += other.compute_s;
        self.partials += other.partials;
        self.finals += other.finals;
        self.media_s += other.media_s;
    }
}

/// A Partial or Final: its audio end (media s) and arrival (s after t0).
struct Event {
    end_s: f64,
    start_s: f64,
    arrived_s: f64,
    is_final: bool,
}

async fn stream_clip(url: &str, clip: &Clip, partial_interval_ms: u32) -> anyhow::Result<Measured> {
    let config = pb::StreamConfig {
        task: pb::Task::Transcribe as i32,
        modalities: pb::Modalities::Audio as i32,
        input: Some(pb::stream_config::Input::RawPcm(pb::RawPcmInput {
            sample_format: pb::SampleFormat::S16le as i32,
            sample_rate: RATE as u32,
            channels: 1,
        })),
        options: Some(pb::StreamOptions {
            partial_results: Some(true),
            partial_interval_ms: Some(partial_interval_ms),
            stats_interval_ms: Some(0),
            ..Default::default()
        }),
    };
    let t0: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    let (pcm, start) = (clip.pcm.clone(), t0.clone());
    let requests = async_stream::stream! {
        yield pb::ClientMessage { msg: Some(pb::client_message::Msg::Config(config)) };
        for (seq, chunk) in pcm.chunks(CHUNK * 2).enumerate() {
            let t0 = *start.get_or_init(Instant::now);
            let due = Duration::from_secs_f64(seq as f64 * CHUNK as f64 / RATE as f64);
            if let Some(wait) = due.checked_sub(t0.elapsed()) {
                tokio::time::sleep(wait).await;
            }
            yield pb::ClientMessage { msg: Some(pb::client_message::Msg::Media(pb::MediaChunk { data: chunk.to_vec(), seq: seq as u64 })) };
        }
        yield pb::ClientMessage { msg: Some(pb::client_message::Msg::Control(pb::Control { action: pb::control::Action::EndOfStream as i32, ..Default::default() })) };
    };
    let mut client = avlm_stream::client::connect(url).await?;
    let mut inbound = client.stream(requests).await?.into_inner();
    let mut events = Vec::new();
    let mut m = Measured {
        media_s: clip.duration_s,
        ..Default::default()
    };
    while let Some(msg) = inbound.message().await? {
        let arrived_s = t0.get().map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0);
        match msg.msg {
            Some(pb::server_message::Msg::Partial(p)) => {
                m.partials += 1;
                m.compute_s += p.compute_s;
                events.push(Event {
                    start_s: p.start_s,
                    end_s: p.end_s,
                    arrived_s,
                    is_final: false,
                });
            }
            Some(pb::server_message::Msg::Final(f)) => {
                m.finals += 1;
                m.compute_s += f.compute_s;
                events.push(Event {
                    start_s: f.start_s,
                    end_s: f.end_s,
                    arrived_s,
                    is_final: true,
                });
            }
            _ => {}
        }
    }
    // End of speech → Final: the last word inside each final.
    for e in events.iter().filter(|e| e.is_final) {
        if let Some(last_word) = clip
            .word_ends
            .iter()
            .copied()
            .filter(|&w| w > e.start_s - 0.05 && w <= e.end_s + 0.05)
            .reduce(f64::max)
        {
            m.final_latency.push(e.arrived_s - last_word);
        }
    }
    // Word end → the first result whose audio reached past it.
    for &w in &clip.word_ends {
        if let Some(e) = events.iter().find(|e| e.end_s >= w - 0.01) {
            m.partial_latency.push(e.arrived_s - w);
        }
    }
    Ok(m)
}

fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let i = ((s.len() - 1) as f64 * p).round() as usize;
    s[i]
}

fn fmt3(v: &[f64]) -> String {
    format!(
        "{:>6.2} {:>6.2} {:>6.2}",
        percentile(v, 0.5),
        percentile(v, 0.95),
        percentile(v, 1.0)
    )
}

pub async fn latency(
    runtime: &RuntimeArgs,
    clips_dir: &Path,
    streams: &[usize],
    partial_interval_ms: u32,
) -> anyhow::Result<()> {
    let clips = Arc::new(load_clips(clips_dir)?);
    let max = streams.iter().copied().max().unwrap_or(1);
    let config = runtime.server_config(max, avlm_stream::config::DEFAULT_MAX_MESSAGE_BYTES);
    anyhow::ensure!(
        config.bundle.is_some(),
        "no model bundle (run tools/setup.sh or pass --bundle)"
    );
    let server = avlm_stream::server::start(config, "127.0.0.1:0".parse()?).await?;
    let url = server.url();
    let media: f64 = clips.iter().map(|c| c.duration_s).sum();
    let words: usize = clips.iter().map(|c| c.word_ends.len()).sum();
    println!(
        "latency at real-time pace: {} clips, {media:.1} s, {words} words ({}), partials every {partial_interval_ms} ms",
        clips.len(),
        clips_dir.display()
    );
    // Warm the model (first-use allocations) outside the measurement.
    stream_clip(&url, &clips[0], partial_interval_ms).await?;
    println!(
        "{:>7} {:>10} {:>22} {:>22} {:>9} {:>8}",
        "streams", "model load", "speech end→Final s", "word end→Partial s", "partials", "finals"
    );
    println!(
        "{:>7} {:>10} {:>22} {:>22} {:>9} {:>8}",
        "", "", "p50    p95    max", "p50    p95    max", "/stream", ""
    );
    let mut single_p95 = None;
    let (mut sustained, mut behind) = (0, false);
    for &n in streams {
        let started = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..n {
            let (url, clips) = (url.clone(), clips.clone());
            tasks.push(tokio::spawn(async move {
                // Streams start staggered, as independent users would.
                tokio::time::sleep(Duration::from_millis(700 * i as u64)).await;
                let mut m = Measured::default();
                for clip in clips.iter() {
                    m.add(stream_clip(&url, clip, partial_interval_ms).await?);
                }
                anyhow::Ok(m)
            }));
        }
        let mut all = Measured::default();
        for t in tasks {
            all.add(t.await??);
        }
        let wall = started.elapsed().as_secs_f64();
        let load = all.compute_s / wall;
        let p95 = percentile(&all.final_latency, 0.95);
        let base = *single_p95.get_or_insert(p95);
        let keeps_up = load <= 1.0 && p95 <= 2.0 * base + 0.5;
        behind |= !keeps_up;
        if !behind {
            sustained = n;
        }
        println!(
            "{n:>7} {load:>10.2} {:>22} {:>22} {:>9.1} {:>8}{}",
            fmt3(&all.final_latency),
            fmt3(&all.partial_latency),
            all.partials as f64 / n as f64,
            all.finals,
            if keeps_up { "" } else { "  falls behind" }
        );
    }
    println!(
        "sustains {sustained} concurrent real-time stream(s) (model load ≤ 1 and Final p95 ≤ 2× single + 0.5 s)"
    );
    server.shutdown().await?;
    Ok(())
}
