//! `avlm bench --parts captions`: the live caption path on this machine.
//! 1. the vision front end (resize, encoder, token layout, projector) in frames/s;
//! 2. the caption loop's per-frame LLM step (frame tokens + the speak-or-not
//!    decision) with the bundle's bounded KV cache, over a long simulated
//!    stream: step time and process memory early and late, and the cache's
//!    bytes at the window bound (flat by construction: it is preallocated);
//! 3. concurrent caption streams of a real video, sent as fast as the server
//!    takes them: media seconds captioned per wall second over all streams
//!    (how many live 2 fps streams the machine keeps up with) and the latency.

use std::path::Path;
use std::time::{Duration, Instant};

use avlm_encoders::Frame;
use avlm_llm::Llama;
use avlm_proto as pb;
use avlm_stream::bundle::LoadedBundle;
use avlm_stream::client::{self, SendOptions, Source};
use avlm_stream::engine::{caption_cache, VisionFrontEnd};
use candle_core::Tensor;

use super::serve::RuntimeArgs;

/// Resident memory of this process, in MiB (Linux).
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |pages| pages * 4096.0 / (1 << 20) as f64)
}

fn median_ms(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v.get(v.len() / 2).map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// A 640x360 test picture (gradients and a few blocks).
fn picture(seed: u32) -> Frame {
    let (w, h) = (640u32, 360u32);
    let mut data = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            let block = ((x / 80 + y / 60 + seed) % 3) as u8;
            data.extend_from_slice(&[
                (x * 255 / w) as u8 ^ (block * 60),
                (y * 255 / h) as u8,
                (block * 90).wrapping_add(seed as u8 * 40),
            ]);
        }
    }
    Frame {
        width: w,
        height: h,
        stride: (w * 3) as usize,
        data,
        pts_s: 0.0,
    }
}

pub async fn captions(
    runtime: &RuntimeArgs,
    minutes: f64,
    streams: &[usize],
    input: &Path,
) -> anyhow::Result<()> {
    let config = runtime.server_config(1, 1);
    let dir = config
        .bundle
        .clone()
        .ok_or_else(|| anyhow::anyhow!("no model bundle (run tools/setup.sh or pass --bundle)"))?;
    avlm_encoders::runtime::init(&config.ort_lib)?;
    let mut bundle = LoadedBundle::load(&dir, 1)?;
    let parts = bundle.vision.take().ok_or_else(|| {
        anyhow::anyhow!(
            "the bundle in {} has no [vision]: it does not caption",
            dir.display()
        )
    })?;
    let (front, format) = VisionFrontEnd::new(parts);

    println!("\nCaptions: vision front end ({}, 1 thread)", front.name());
    let frames: Vec<Frame> = (0..4).map(picture).collect();
    front.embed(&frames[0])?;
    let mut times = Vec::new();
    for i in 0..20 {
        let t = Instant::now();
        let e = front.embed(&frames[i % frames.len()])?;
        times.push(t.elapsed());
        if i == 0 {
            println!("  tokens per frame: {}", e.dims()[0]);
        }
    }
    let front_ms = median_ms(times);
    println!(
        "  640x360 frame -> LLM embeddings: {front_ms:.1} ms median ({:.1} frames/s)",
        1e3 / front_ms
    );

    let llm: &Llama = &bundle.llm;
    let embeds = front.embed(&frames[1])?;
    let per_frame = embeds.dims()[0] + 1;
    let mut cache = caption_cache(llm, &format)?;
    llm.forward(&format.system, &mut cache, false)?;
    let total = (minutes * 60.0 * f64::from(format.fps)).round() as usize;
    println!(
        "  caption loop step ({per_frame} positions a frame, KV window {} sink + {} recent), {total} frames = {minutes} min at {} frames/s:",
        format.system.len(), format.window, format.fps
    );
    let sep = llm.embed_tokens(&[format.separator])?;
    let x = Tensor::cat(&[&sep, &embeds], 0)?;
    let rss_start = rss_mib();
    let mut early = Vec::new();
    let mut late = Vec::new();
    let started = Instant::now();
    let mut rss_after_fill = None;
    for i in 0..total {
        let t = Instant::now();
        let logits = llm.forward_embeds(&x, &mut cache, false)?;
        let _ = Llama::last_logits(&logits)?;
        let dt = t.elapsed();
        if i < 100 {
            early.push(dt);
        } else if i + 100 >= total {
            late.push(dt);
        }
        if rss_after_fill.is_none() && cache.evicted() > 0 {
            rss_after_fill = Some(rss_mib());
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let media = total as f64 / f64::from(format.fps);
    println!(
        "    step: {:.1} ms median over the first 100 frames, {:.1} ms over the last 100; {:.0}x real time",
        median_ms(early),
        median_ms(late),
        media / wall
    );
    println!(
        "    KV cache: {:.1} MiB at the window bound ({} positions evicted); process memory {rss_start:.0} MiB at the start, {:.0} MiB when the window first filled, {:.0} MiB at the end",
        cache.bytes() as f64 / (1 << 20) as f64,
        cache.evicted(),
        rss_after_fill.unwrap_or(rss_start),
        rss_mib()
    );
    drop(bundle);

    if streams.is_empty() {
        return Ok(());
    }
    let bytes = std::fs::read(input).map_err(|e| anyhow::anyhow!("{}: {e}", input.display()))?;
    let max = streams.iter().copied().max().unwrap_or(1);
    let server = avlm_stream::server::start(
        runtime.server_config(max, avlm_stream::config::DEFAULT_MAX_MESSAGE_BYTES),
        "127.0.0.1:0".parse()?,
    )
    .await?;
    println!(
        "  concurrent caption streams of {}, sent as fast as the server takes them ({} frames/s each):",
        input.display(),
        format.fps
    );
    println!(
        "{:>10} {:>10} {:>10} {:>14} {:>10} {:>16} {:>10}",
        "streams", "media s", "wall s", "x real time", "captions", "latency p50 s", "frames"
    );
    for &n in streams {
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..n {
            let url = server.url();
            let bytes = bytes.clone();
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut last: Option<pb::Stats> = None;
                let config = pb::StreamConfig {
                    task: pb::Task::Caption as i32,
                    options: Some(pb::StreamOptions {
                        stats_interval_ms: Some(0),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                client::stream(
                    &url,
                    config,
                    Source::Memory(bytes),
                    SendOptions {
                        chunk_bytes: 16 * 1024,
                        realtime: false,
                        stop: None,
                    },
                    |m| match &m.msg {
                        Some(pb::server_message::Msg::Caption(c)) => latencies.push(c.latency_s),
                        Some(pb::server_message::Msg::Stats(s)) => last = Some(*s),
                        _ => {}
                    },
                )
                .await?;
                anyhow::Ok((latencies, last.unwrap_or_default()))
            }));
        }
        let mut latencies = Vec::new();
        let mut media = 0.0f64;
        let mut frames = 0;
        for t in tasks {
            let (l, s) = t.await??;
            latencies.extend(l);
            media = media.max(s.media_seconds_processed);
            frames += s.caption_frames;
        }
        let wall = started.elapsed().as_secs_f64();
        latencies.sort_by(f64::total_cmp);
        let p50 = latencies.get(latencies.len() / 2).copied().unwrap_or(0.0);
        println!(
            "{n:>10} {media:>10.1} {wall:>10.1} {:>14.2} {:>10} {p50:>16.2} {frames:>10}",
            media * n as f64 / wall,
            latencies.len()
        );
    }
    server.shutdown().await?;
    Ok(())
}
