//! `avlm bench`: throughput of the live path on this machine, measured side
//! by side in one run and printed as a table of ratios.

use std::path::PathBuf;
use std::time::Instant;

use avlm_proto as pb;
use avlm_stream::client::{self, SendOptions, Source};

use super::serve::RuntimeArgs;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Media to stream (any container the server reads).
    #[arg(long, default_value = "samples/demo.webm")]
    pub input: PathBuf,
    /// Concurrent session counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    pub sessions: Vec<usize>,
    /// Times each session streams the input.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let bytes =
        std::fs::read(&args.input).map_err(|e| anyhow::anyhow!("{}: {e}", args.input.display()))?;
    let max = args.sessions.iter().copied().max().unwrap_or(1);
    let server = avlm_stream::server::start(
        args.runtime.server_config(max, 4 << 20),
        "127.0.0.1:0".parse()?,
    )
    .await?;
    let url = server.url();
    println!(
        "segmentation path (FFmpeg decode + Silero VAD + endpointing), {}",
        args.input.display()
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
