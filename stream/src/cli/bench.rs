//! `avlm bench`: throughput of the live path on this machine, measured side
//! by side in one run and printed as a table of ratios.

use std::path::PathBuf;
use std::time::Instant;

use avlm_proto as pb;
use avlm_stream::client::{self, SendOptions, Source};

use super::bench_models as models;
use super::paths;
use super::serve::RuntimeArgs;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    Segments,
    Encoder,
    Llm,
    Latency,
    /// Batched decode: aggregate tokens/s at 1, 4, 8 and 16 rows.
    Rows,
    /// Live captions: vision front end frames/s, the caption loop's step over
    /// a long stream (time and memory), concurrent caption streams.
    Captions,
    /// Chaos: concurrent good and misbehaving clients against a separate
    /// server process for minutes; every stream's outcome, memory, threads,
    /// descriptors and active sessions before and after.
    Chaos,
    /// Lip reading: mouth crops per second, lip encoder ms per second of
    /// video (the bundle's, Base and Large-sized), concurrent real-time
    /// audio+video streams.
    Lips,
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Sections to run.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "segments,encoder,llm,latency"
    )]
    pub parts: Vec<Part>,
    /// Thread counts for the LLM and encoder measurements.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub threads: Vec<usize>,
    /// Prompt length of the LLM measurement.
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// New tokens decoded in the LLM measurement.
    #[arg(long, default_value_t = 128)]
    pub new_tokens: usize,
    /// Python with llama-cpp-python for the side-by-side [default: .avlm/venv/bin/python].
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Internal: measure the LLM in this process with this weight mode and print JSON.
    #[arg(long, hide = true)]
    pub llm_worker: Option<String>,
    /// Internal: the GGUF for --llm-worker.
    #[arg(long, hide = true)]
    pub gguf: Option<PathBuf>,
    /// Media to stream (any container the server reads) [default: the
    /// checkout's samples/demo.webm].
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Concurrent session counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    pub sessions: Vec<usize>,
    /// Clips with word timings for the latency section
    /// (tools/make_latency_clips.py) [default: the checkout's samples/latency].
    #[arg(long)]
    pub latency_clips: Option<PathBuf>,
    /// Concurrent real-time stream counts for the latency section, ascending.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    pub latency_streams: Vec<usize>,
    /// Partial re-decode interval for the latency section, in ms.
    #[arg(long, default_value_t = 500)]
    pub partial_interval_ms: u32,
    /// Times each session streams the input.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Minutes of video the captions section's loop simulates (at the bundle's frame rate).
    #[arg(long, default_value_t = 10.0)]
    pub caption_minutes: f64,
    /// Concurrent real-time caption stream counts for the captions section.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    pub caption_streams: Vec<usize>,
    /// Video the captions section streams.
    /// [default: the checkout's tests/media/generated/slides.webm]
    #[arg(long)]
    pub caption_input: Option<PathBuf>,
    /// Concurrent clients in the chaos section.
    #[arg(long, default_value_t = 32)]
    pub chaos_clients: usize,
    /// Minutes the chaos section's clients keep starting streams.
    #[arg(long, default_value_t = 5.0)]
    pub chaos_minutes: f64,
    /// The chaos server's --max-queued-audio-s: past it new transcriptions
    /// are shed (counted apart from failures).
    #[arg(long, default_value_t = 600.0)]
    pub chaos_max_queued_audio_s: f64,
    /// Seed of the chaos section's mix of behaviours.
    #[arg(long, default_value_t = 1)]
    pub chaos_seed: u64,
    /// Concurrent real-time audio+video stream counts for the lips section, ascending.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    pub lips_streams: Vec<usize>,
    /// A talking-face clip for the lips section [default: a face photo
    /// moving over a background with samples/demo.webm's speech, made here].
    #[arg(long)]
    pub lips_input: Option<PathBuf>,
    /// Random lip encoders timed beside the bundle's (empty: none).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "base")]
    pub lip_sizes: Vec<super::bench_lips::LipSize>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let Some(mode) = &args.llm_worker {
        let gguf = args
            .gguf
            .clone()
            .ok_or_else(|| anyhow::anyhow!("--llm-worker needs --gguf"))?;
        let mode = match mode.as_str() {
            "f32" => avlm_llm::WeightMode::F32,
            "q8" => avlm_llm::WeightMode::Q8,
            "mixed" => avlm_llm::WeightMode::Mixed,
            _ => avlm_llm::WeightMode::Quantized,
        };
        let speed = models::measure_llm(&gguf, mode, args.prompt_tokens, args.new_tokens)?;
        println!("{}", serde_json::to_string(&speed)?);
        return Ok(());
    }
    if args.parts.contains(&Part::Segments) {
        segments(&args).await?;
    }
    if args.parts.contains(&Part::Latency) {
        super::bench_latency::latency(
            &args.runtime,
            &args
                .latency_clips
                .clone()
                .unwrap_or_else(|| paths::in_checkout("samples/latency")),
            &args.latency_streams,
            args.partial_interval_ms,
        )
        .await?;
    }
    if args.parts.contains(&Part::Captions) {
        super::bench_captions::captions(
            &args.runtime,
            args.caption_minutes,
            &args.caption_streams,
            &args
                .caption_input
                .clone()
                .unwrap_or_else(|| paths::in_checkout("tests/media/generated/slides.webm")),
        )
        .await?;
    }
    if args.parts.contains(&Part::Chaos) {
        chaos(&args).await?;
    }
    if args.parts.contains(&Part::Lips) {
        super::bench_lips::lips(
            &args.runtime,
            &args.lips_streams,
            args.lips_input.as_deref(),
            &args.lip_sizes,
        )
        .await?;
    }
    if !args
        .parts
        .iter()
        .any(|p| matches!(p, Part::Encoder | Part::Llm | Part::Rows))
    {
        return Ok(());
    }
    let config = args.runtime.server_config(1, 1);
    let bundle = config
        .bundle
        .clone()
        .ok_or_else(|| anyhow::anyhow!("no model bundle (run tools/setup.sh or pass --bundle)"))?;
    let (gguf, encoder) = models::bundle_paths(&bundle)?;
    if args.parts.contains(&Part::Encoder) {
        avlm_encoders::runtime::init(&config.ort_lib)?;
        for &t in &args.threads {
            models::encoder_table(&encoder, t)?;
        }
    }
    if args.parts.contains(&Part::Rows) {
        let mode = avlm_stream::bundle::manifest::Manifest::read(&bundle)
            .map_err(|e| anyhow::anyhow!(e))?
            .llm
            .weight_mode
            .into();
        models::rows_table(&gguf, mode, args.new_tokens.min(64))?;
    }
    if args.parts.contains(&Part::Llm) {
        let python = args
            .python
            .clone()
            .unwrap_or_else(|| paths::resolve(None, "venv/bin/python"));
        let python = python.is_file().then_some(python);
        models::llm_table(
            &gguf,
            python,
            &args.threads,
            args.prompt_tokens,
            args.new_tokens,
        )?;
        println!(
            "KV cache: {} bytes per token (f32 keys and values, all layers)",
            models::kv_bytes(&gguf)?
        );
    }
    Ok(())
}

async fn segments(args: &BenchArgs) -> anyhow::Result<()> {
    let input = args
        .input
        .clone()
        .unwrap_or_else(|| paths::in_checkout("samples/demo.webm"));
    let bytes = std::fs::read(&input).map_err(|e| anyhow::anyhow!("{}: {e}", input.display()))?;
    let max = args.sessions.iter().copied().max().unwrap_or(1);
    let server = avlm_stream::server::start(
        args.runtime
            .server_config(max, avlm_stream::config::DEFAULT_MAX_MESSAGE_BYTES),
        "127.0.0.1:0".parse()?,
    )
    .await?;
    let url = server.url();
    println!(
        "segmentation path (FFmpeg decode + Silero VAD + endpointing), {}",
        input.display()
    );
    println!(
        "{:>8} {:>12} {:>10} {:>16} {:>14}",
        "sessions", "media s", "wall s", "x real time", "session RTF"
    );
    for &n in &args.sessions {
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..n {
            let url = url.clone();
            let bytes = bytes.clone();
            let repeats = args.repeats;
            tasks.push(tokio::spawn(async move {
                let mut media = 0.0;
                let mut rtf = Vec::new();
                for _ in 0..repeats {
                    let mut last: Option<pb::Stats> = None;
                    let config = pb::StreamConfig {
                        options: Some(pb::StreamOptions {
                            stats_interval_ms: Some(0),
                            ..Default::default()
                        }),
                        ..Default::default()
                    };
                    client::stream(
                        &url,
                        config,
                        Source::Memory(bytes.clone()),
                        SendOptions {
                            chunk_bytes: 16 * 1024,
                            realtime: false,
                            stop: None,
                        },
                        |m| {
                            if let Some(pb::server_message::Msg::Stats(s)) = &m.msg {
                                last = Some(*s);
                            }
                        },
                    )
                    .await?;
                    let s = last.ok_or_else(|| anyhow::anyhow!("no stats"))?;
                    media += s.media_seconds_processed;
                    rtf.push(s.real_time_factor);
                }
                anyhow::Ok((media, rtf))
            }));
        }
        let mut media = 0.0;
        let mut rtfs = Vec::new();
        for t in tasks {
            let (m, r) = t.await??;
            media += m;
            rtfs.extend(r);
        }
        let wall = started.elapsed().as_secs_f64();
        let mean_rtf = rtfs.iter().sum::<f64>() / rtfs.len().max(1) as f64;
        println!(
            "{n:>8} {media:>12.1} {wall:>10.2} {:>16.1} {mean_rtf:>14.4}",
            media / wall
        );
    }
    server.shutdown().await?;
    Ok(())
}

/// The chaos load test against `avlm serve` run from this binary with the
/// runtime files this command was given.
async fn chaos(args: &BenchArgs) -> anyhow::Result<()> {
    let config = args.runtime.server_config(1, 1);
    let mut serve_args = vec![
        "--ort-lib".to_string(),
        config.ort_lib.display().to_string(),
        "--vad-model".to_string(),
        config.vad_model.display().to_string(),
    ];
    match &config.bundle {
        Some(b) => serve_args.extend(["--bundle".to_string(), b.display().to_string()]),
        None => anyhow::bail!("no model bundle (run tools/setup.sh or pass --bundle)"),
    }
    println!(
        "chaos: {} clients for {:.1} min against a separate server (seed {})",
        args.chaos_clients, args.chaos_minutes, args.chaos_seed
    );
    let report = avlm_stream::chaos::run(avlm_stream::chaos::ChaosConfig {
        avlm: std::env::current_exe()?,
        serve_args,
        media: args
            .input
            .clone()
            .unwrap_or_else(|| paths::in_checkout("samples/demo.webm")),
        clients: args.chaos_clients,
        duration: std::time::Duration::from_secs_f64(args.chaos_minutes * 60.0),
        seed: args.chaos_seed,
        idle_timeout_s: 5,
        max_message_bytes: 1 << 20,
        max_queued_audio_s: args.chaos_max_queued_audio_s,
    })
    .await?;
    report.print();
    anyhow::ensure!(
        report.failures() == 0 && report.active_after == 0,
        "the chaos run found {} streams that did not end as they must, {} sessions left",
        report.failures(),
        report.active_after
    );
    Ok(())
}
