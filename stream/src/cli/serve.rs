//! `avlm serve`: load the models and serve gRPC until Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;

use avlm_stream::config::{ServerConfig, SessionDefaults};

use super::paths;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "AVLM_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Most concurrent sessions; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "AVLM_MAX_SESSIONS", default_value_t = avlm_stream::config::DEFAULT_MAX_SESSIONS)]
    pub max_sessions: usize,
    /// Largest client message in bytes; larger ones end the stream with RESOURCE_EXHAUSTED.
    #[arg(long, env = "AVLM_MAX_MESSAGE_BYTES", default_value_t = avlm_stream::config::DEFAULT_MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,
    /// Seconds without any client message before a stream is ended with
    /// DEADLINE_EXCEEDED and its slot freed (0: never).
    #[arg(long, env = "AVLM_IDLE_TIMEOUT_S", default_value_t = avlm_stream::config::DEFAULT_IDLE_TIMEOUT_S)]
    pub idle_timeout_s: u64,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// Where the runtime files are.
#[derive(Debug, Clone, clap::Args)]
pub struct RuntimeArgs {
    /// ONNX Runtime shared library [default: .avlm/lib/libonnxruntime.so.1.31.1].
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_lib: Option<PathBuf>,
    /// Silero VAD ONNX model [default: .avlm/models/silero_vad.onnx].
    #[arg(long, env = "AVLM_VAD_MODEL")]
    pub vad_model: Option<PathBuf>,
    /// Model bundle folder (avlm.toml) for TRANSCRIBE [default: .avlm/bundles/default when present].
    #[arg(long, env = "AVLM_BUNDLE")]
    pub bundle: Option<PathBuf>,
    /// Serve voice-activity segmentation only, without loading a model bundle.
    #[arg(long, conflicts_with = "bundle")]
    pub no_bundle: bool,
    /// Threads for the model thread's audio encoder.
    #[arg(long, env = "AVLM_ENGINE_THREADS", default_value_t = 2)]
    pub engine_threads: usize,
}

impl RuntimeArgs {
    pub fn server_config(&self, max_sessions: usize, max_message_bytes: usize) -> ServerConfig {
        ServerConfig {
            ort_lib: paths::resolve(self.ort_lib.clone(), avlm_stream::config::ORT_LIB),
            vad_model: paths::resolve(self.vad_model.clone(), avlm_stream::config::VAD_MODEL),
            max_sessions,
            max_message_bytes,
            pipe_bytes: 1 << 20,
            defaults: SessionDefaults::default(),
            bundle: if self.no_bundle {
                None
            } else {
                self.bundle.clone().or_else(|| {
                    let default = paths::resolve(None, "bundles/default");
                    default.join("avlm.toml").is_file().then_some(default)
                })
            },
            engine_threads: self.engine_threads,
            idle_timeout: Some(std::time::Duration::from_secs(
                avlm_stream::config::DEFAULT_IDLE_TIMEOUT_S,
            )),
            shutdown_grace: std::time::Duration::from_secs(
                avlm_stream::config::DEFAULT_SHUTDOWN_GRACE_S,
            ),
        }
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = args
        .runtime
        .server_config(args.max_sessions, args.max_message_bytes);
    config.idle_timeout =
        (args.idle_timeout_s > 0).then(|| std::time::Duration::from_secs(args.idle_timeout_s));
    let server = avlm_stream::server::start(config, args.listen).await?;
    eprintln!("avlm serving on {} (Ctrl-C to stop)", server.url());
    server
        .run_until(async {
            let _ = tokio::signal::ctrl_c().await;
            eprintln!("shutting down");
        })
        .await
}
