//! `avlm serve`: load the models and serve gRPC until Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;

use avlm_stream::config::{ServerConfig, SessionDefaults};
use avlm_stream::server::{Auth, TlsFiles, Transport};

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
    /// Seconds a shutdown (Ctrl-C, SIGTERM) waits for open streams to finish
    /// before it cuts them.
    #[arg(long, env = "AVLM_SHUTDOWN_GRACE_S", default_value_t = avlm_stream::config::DEFAULT_SHUTDOWN_GRACE_S)]
    pub shutdown_grace_s: u64,
    /// Audio seconds queued for the model (all sessions) beyond which new
    /// transcription and caption streams are refused with RESOURCE_EXHAUSTED (0: no limit).
    #[arg(long, env = "AVLM_MAX_QUEUED_AUDIO_S", default_value_t = avlm_stream::config::DEFAULT_MAX_QUEUED_AUDIO_S)]
    pub max_queued_audio_s: f64,
    /// MiB of decoded media all open sessions may hold, each counted at its
    /// worst case (frame size x queue) when it starts; past it new sessions get
    /// RESOURCE_EXHAUSTED (0: no limit).
    #[arg(long, env = "AVLM_MAX_MEDIA_MEMORY_MB", default_value_t = avlm_stream::config::DEFAULT_MAX_MEDIA_MEMORY_MB)]
    pub max_media_memory_mb: u64,
    /// Seconds a resumable stream (StreamOptions.resumable) waits for its
    /// client to reconnect after its connection dropped.
    #[arg(long, env = "AVLM_RESUME_GRACE_S", default_value_t = avlm_stream::config::DEFAULT_RESUME_GRACE_S)]
    pub resume_grace_s: u64,
    /// Serve OpenAI's realtime transcription events on a WebSocket at
    /// ws://ADDR/v1/realtime (bridged to a session on the gRPC listener).
    #[arg(long, env = "AVLM_OPENAI_REALTIME")]
    pub openai_realtime: Option<SocketAddr>,
    /// Serve the browser demo at http://ADDR/ (camera and microphone from
    /// the page, over a WebSocket bridged to a session on the gRPC listener).
    #[arg(long, env = "AVLM_WEB")]
    pub web: Option<SocketAddr>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 0.0.0.0:9100).
    #[arg(long, env = "AVLM_METRICS")]
    pub metrics: Option<SocketAddr>,
    /// TLS certificate chain (PEM); with --tls-key the server speaks only TLS.
    #[arg(long, env = "AVLM_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "AVLM_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) whose certificates clients must present (mutual TLS).
    #[arg(long, env = "AVLM_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// File of bearer tokens, one a line: every call must carry
    /// `authorization: Bearer TOKEN` with one of them (UNAUTHENTICATED otherwise).
    #[arg(long, env = "AVLM_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// Services that need no token even with --auth-token-file (comma-separated:
    /// health for load-balancer and Kubernetes probes, reflection).
    #[arg(
        long,
        env = "AVLM_AUTH_OPEN",
        value_delimiter = ',',
        requires = "auth_token_file"
    )]
    pub auth_open: Vec<avlm_stream::server::OpenService>,
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
            max_queued_audio_s: Some(avlm_stream::config::DEFAULT_MAX_QUEUED_AUDIO_S),
            max_media_memory_bytes: Some(avlm_stream::config::DEFAULT_MAX_MEDIA_MEMORY_MB << 20),
            resume_grace: std::time::Duration::from_secs(
                avlm_stream::config::DEFAULT_RESUME_GRACE_S,
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
    let transport = Transport {
        tls: match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: args.tls_client_ca.clone(),
            }),
            _ => None,
        },
        auth: match &args.auth_token_file {
            Some(path) => Some(Auth::from_file(path, args.auth_open.clone())?),
            None => None,
        },
    };
    // The metrics endpoint opens first: a scrape during a long model load
    // already sees the process.
    let metrics = match args.metrics {
        Some(addr) => {
            let m = avlm_stream::metrics::serve(addr).await?;
            eprintln!("metrics at http://{}/metrics", m.addr);
            Some(m)
        }
        None => None,
    };
    config.shutdown_grace = std::time::Duration::from_secs(args.shutdown_grace_s);
    config.resume_grace = std::time::Duration::from_secs(args.resume_grace_s);
    config.max_queued_audio_s = (args.max_queued_audio_s > 0.0).then_some(args.max_queued_audio_s);
    config.max_media_memory_bytes =
        (args.max_media_memory_mb > 0).then_some(args.max_media_memory_mb << 20);
    if args.openai_realtime.is_some() && transport.tls.is_some() {
        anyhow::bail!(
            "--openai-realtime bridges to the plaintext gRPC listener: serve the socket behind a TLS-terminating proxy instead of --tls-cert"
        );
    }
    if args.web.is_some() && transport.tls.is_some() {
        anyhow::bail!(
            "--web bridges to the plaintext gRPC listener: serve the page behind a TLS-terminating proxy instead of --tls-cert"
        );
    }
    // A stop while the models load (a pod deleted early) ends at once.
    let server = tokio::select! {
        started = avlm_stream::server::start_with(config, args.listen, transport) => started?,
        _ = stop_signal() => {
            eprintln!("stopped while loading the models");
            return Ok(());
        }
    };
    // The socket's line comes first: a script waiting for the serving line
    // then has every address.
    let realtime = match args.openai_realtime {
        Some(addr) => {
            let r = avlm_stream::realtime::serve(addr, server.url()).await?;
            eprintln!(
                "OpenAI realtime transcription socket at ws://{}/v1/realtime",
                r.addr
            );
            Some(r)
        }
        None => None,
    };
    let web = match args.web {
        Some(addr) => {
            let w = avlm_stream::web::serve(addr, server.url()).await?;
            eprintln!("browser demo at http://{}/", w.addr);
            Some(w)
        }
        None => None,
    };
    eprintln!(
        "avlm serving on {} (Ctrl-C or SIGTERM to stop)",
        server.url()
    );
    server
        .run_until(async {
            stop_signal().await;
            eprintln!("shutting down: taking no new calls, finishing the open ones");
        })
        .await?;
    drop(metrics);
    drop(realtime);
    drop(web);
    Ok(())
}

/// Ctrl-C, or SIGTERM (what container runtimes and Kubernetes send).
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
