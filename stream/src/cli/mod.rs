//! Command-line parsing and dispatch for the `avlm` binary.

mod bench;
mod bench_captions;
mod bench_latency;
mod bench_lips;
mod bench_models;
mod camera;
mod credentials;
mod eval;
mod info;
mod mouth;
mod paths;
mod print;
mod progress;
mod serve;
mod stream;
mod validate;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The server's log filter when none is given.
const SERVE_LOG: &str = "warn,avlm_stream=info";
/// Client commands print results on stdout and start in-process servers
/// whose info lines would land among them: warnings only, unless asked.
const CLIENT_LOG: &str = "warn";

/// avlm: a live audio-visual language-model server. Send video and audio over
/// a gRPC stream as it is captured; get speech segments, transcripts and
/// captions back while the person is still talking.
#[derive(Debug, Parser)]
#[command(name = "avlm", version, propagate_version = true)]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "AVLM_LOG_JSON")]
    log_json: bool,
    /// Log filter (tracing EnvFilter syntax), e.g. "info" or "avlm_stream=debug"
    /// [default: "warn,avlm_stream=info" for serve, "warn" for the other commands].
    #[arg(long, global = true, env = "AVLM_LOG")]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gRPC server.
    Serve(serve::ServeArgs),
    /// Stream a file, stdin or any FFmpeg input to a server and print events live.
    Stream(stream::StreamArgs),
    /// Transcribe a camera and microphone (or any FFmpeg input) live in the terminal.
    Camera(camera::CameraArgs),
    /// Print a server's version, models and limits.
    Info(info::InfoArgs),
    /// Measure throughput of the live path on this machine.
    Bench(bench::BenchArgs),
    /// Load a model bundle, check its parts fit, and print a summary.
    Validate(validate::ValidateArgs),
    /// Word error rate on a test set (LRS3 layout), clean and in noise.
    Eval(eval::EvalArgs),
    /// Write the live mouth crops of a video file (96x96 at 25 fps, MP4) and count its faces.
    Mouth(mouth::MouthArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let log = cli.log.as_deref().unwrap_or(match cli.command {
        Command::Serve(_) => SERVE_LOG,
        _ => CLIENT_LOG,
    });
    init_logging(log, cli.log_json);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::run(args).await.map(|_| 0),
            Command::Stream(args) => stream::run(args).await,
            Command::Camera(args) => camera::run(args).await,
            Command::Info(args) => info::run(args).await,
            Command::Bench(args) => bench::run(args).await.map(|_| 0),
            Command::Validate(args) => validate::run(args).await.map(|_| 0),
            Command::Eval(args) => eval::run(args).await.map(|_| 0),
            Command::Mouth(args) => mouth::run(args).await.map(|_| 0),
        }
    });
    match result {
        Ok(0) => ExitCode::SUCCESS,
        Ok(code) => ExitCode::from(code.clamp(1, 255) as u8),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A flag set by the first Ctrl-C, so a stream can end cleanly (its last
/// results still arrive); a second Ctrl-C quits at once.
fn stop_on_ctrl_c() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\nstopping: sending the last audio and waiting for its results (Ctrl-C again quits now)");
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });
    stop
}

fn init_logging(filter: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
