//! An hour of live transcription, run at 30x real time: one utterance every
//! 30 s over a faint noise floor, as raw PCM, through a real server on
//! loopback. Memory at the end must be within 10% of memory after minute
//! 5, and the model time of the last segments within 20% of the first's.

mod common;

use std::time::{Duration, Instant};

use avlm_proto as pb;
use common::*;

const BLOCK_S: usize = 30;
const BLOCKS: usize = 120; // 60 minutes
const PACE: f64 = 30.0;
const RATE: usize = 16_000;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kb * 1024
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// 30 s: the clip's first utterance at 2 s, then a faint deterministic
/// noise floor (never digital silence).
fn block(utterance: &[f32], seed: &mut u64) -> Vec<i16> {
    let mut out = Vec::with_capacity(BLOCK_S * RATE);
    for i in 0..BLOCK_S * RATE {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let noise = ((*seed >> 33) as f64 / f64::from(1u32 << 31) - 0.5) * 2e-3;
        let speech = i
            .checked_sub(2 * RATE)
            .and_then(|j| utterance.get(j))
            .copied()
            .unwrap_or(0.0);
        out.push(((f64::from(speech) + noise).clamp(-1.0, 1.0) * 32767.0) as i16);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hour_stream_keeps_memory_and_decode_time_flat() {
    let server = start_server(short_decode_server_config("long-stream", 6)).await;
    let audio = avlm_stream::media::file::decode_audio_file(&media("speech.wav"))
        .expect("decode speech.wav");
    let span = &manifest().speech[0];
    let from = ((span.start_s - 0.2).max(0.0) * RATE as f64) as usize;
    let to = ((span.end_s + 0.2) * RATE as f64) as usize;
    let utterance = audio[from..to.min(audio.len())].to_vec();

    let config = pb::StreamConfig {
        task: pb::Task::Transcribe as i32,
        modalities: pb::Modalities::Audio as i32,
        input: Some(pb::stream_config::Input::RawPcm(pb::RawPcmInput {
            sample_format: pb::SampleFormat::S16le as i32,
            sample_rate: RATE as u32,
            channels: 1,
        })),
        options: Some(pb::StreamOptions {
            stats_interval_ms: Some(60_000),
            ..Default::default()
        }),
    };
    let requests = async_stream::stream! {
        yield config_msg(config);
        let start = Instant::now();
        let mut seed = 7u64;
        let mut seq = 0u64;
        let mut sent_s = 0.0f64;
        for _ in 0..BLOCKS {
            let samples = block(&utterance, &mut seed);
            for chunk in samples.chunks(RATE / 2) {
                let due = Duration::from_secs_f64(sent_s / PACE);
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
                let bytes: Vec<u8> = chunk.iter().flat_map(|s| s.to_le_bytes()).collect();
                yield media_msg(&bytes, seq);
                seq += 1;
                sent_s += chunk.len() as f64 / RATE as f64;
            }
        }
        yield control_msg(pb::control::Action::EndOfStream);
    };
    let mut client = avlm_stream::client::connect(&server.url()).await.unwrap();
    let mut inbound = client.stream(requests).await.unwrap().into_inner();
    let mut finals = Vec::new();
    let mut rss_minute5 = None;
    while let Some(msg) = inbound.message().await.expect("stream ends OK") {
        match msg.msg {
            Some(pb::server_message::Msg::Final(f)) => finals.push(f),
            Some(pb::server_message::Msg::Stats(s))
                if s.media_seconds_processed >= 300.0 && rss_minute5.is_none() =>
            {
                rss_minute5 = Some(rss_bytes());
            }
            _ => {}
        }
    }
    let rss_end = rss_bytes();
    let rss_minute5 = rss_minute5.expect("a Stats message after minute 5");

    assert_eq!(finals.len(), BLOCKS, "one final per utterance");
    // Where the speech lies in each block, from the clip's manifest.
    let lead = span.start_s - from as f64 / RATE as f64;
    for (i, f) in finals.iter().enumerate() {
        let speech_start = (i * BLOCK_S) as f64 + 2.0 + lead;
        let speech_end = speech_start + (span.end_s - span.start_s);
        assert!(
            f.start_s <= speech_start + 0.15 && f.end_s >= speech_end - 0.15,
            "final {i} ({:.2}–{:.2} s) does not cover the speech at {speech_start:.2}–{speech_end:.2} s",
            f.start_s,
            f.end_s
        );
        if i > 0 {
            assert!(f.start_s >= finals[i - 1].end_s, "finals overlap");
        }
    }
    let growth = rss_end as f64 / rss_minute5 as f64;
    let first = median(finals[..5].iter().map(|f| f.compute_s).collect());
    let last = median(finals[BLOCKS - 5..].iter().map(|f| f.compute_s).collect());
    eprintln!(
        "memory after minute 5 {:.1} MiB, at the end {:.1} MiB ({:+.1}%); model time per segment first {:.0} ms, last {:.0} ms ({:+.1}%)",
        rss_minute5 as f64 / 1048576.0,
        rss_end as f64 / 1048576.0,
        (growth - 1.0) * 100.0,
        first * 1e3,
        last * 1e3,
        (last / first - 1.0) * 100.0
    );
    assert!(growth <= 1.10, "memory grew {:.1}%", (growth - 1.0) * 100.0);
    // Growth is what a long stream must not show (state that accumulates).
    // A drop is the machine, not the stream: on the shared 2-core VM one run's
    // 120 segments took 1.1-1.5 s each for 96 segments, then 0.95-1.07 s for
    // the last 24 with nothing in the stream changed (-18% first 5 to last 5;
    // -26% in a CI run), so only an increase fails.
    assert!(
        last / first - 1.0 <= 0.20,
        "model time per segment grew from {first:.3} s to {last:.3} s"
    );
    server.shutdown().await.unwrap();
}
