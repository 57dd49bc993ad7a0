//! Building and running the gRPC server: the avlm service, the standard
//! health service and server reflection (v1 and v1alpha), on a given
//! listener, optionally over TLS and behind bearer tokens.
//!
//! The listener opens before the models load: health answers NOT_SERVING
//! (and the avlm service UNAVAILABLE) until they are loaded, and again once
//! a shutdown begins, so a balancer sends calls only to a server that can
//! take them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use avlm_proto as pb;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic_health::ServingStatus;

use crate::config::ServerConfig;
use crate::service::{AvlmService, StateSlot};
use crate::state::ServerState;

/// TLS for the listener: the server's certificate chain and key (PEM), and
/// optionally a CA whose certificates clients must present.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// Services callers may use without a token when tokens are required.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OpenService {
    /// `grpc.health.v1.Health` (load balancer and Kubernetes probes).
    Health,
    /// Server reflection, v1 and v1alpha.
    Reflection,
}

/// Bearer tokens every call must carry (`authorization: Bearer TOKEN`),
/// except on the services in `open`.
#[derive(Clone)]
pub struct Auth {
    tokens: Arc<[String]>,
    pub open: Vec<OpenService>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("tokens", &self.tokens.len())
            .field("open", &self.open)
            .finish()
    }
}

impl Auth {
    /// Tokens from a file: one a line; blank lines and `#` comments are skipped.
    pub fn from_file(path: &Path, open: Vec<OpenService>) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read the token file {}: {e}", path.display()))?;
        let tokens: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect();
        Self::new(tokens, open).map_err(|e| anyhow::anyhow!("token file {}: {e}", path.display()))
    }

    pub fn new(tokens: Vec<String>, open: Vec<OpenService>) -> anyhow::Result<Self> {
        if tokens.is_empty() {
            anyhow::bail!("no tokens (one a line; lines starting with # are comments)");
        }
        if let Some(t) = tokens
            .iter()
            .find(|t| t.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            anyhow::bail!(
                "a token may not contain spaces or control characters (one starting {:?})",
                t.chars().take(4).collect::<String>()
            );
        }
        Ok(Auth {
            tokens: tokens.into(),
            open,
        })
    }

    fn check(&self, service: Option<OpenService>) -> TokenCheck {
        let open = service.is_some_and(|s| self.open.contains(&s));
        TokenCheck {
            tokens: (!open).then(|| self.tokens.clone()),
        }
    }
}

/// How the listener talks to clients, beyond plain HTTP/2.
#[derive(Debug, Clone, Default)]
pub struct Transport {
    pub tls: Option<TlsFiles>,
    pub auth: Option<Auth>,
}

/// The interceptor in front of every service: passes a call carrying one
/// of the tokens (or any call when there are none to check).
#[derive(Clone)]
pub struct TokenCheck {
    tokens: Option<Arc<[String]>>,
}

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let Some(tokens) = &self.tokens else {
            return Ok(request);
        };
        let Some(value) = request.metadata().get("authorization") else {
            return Err(tonic::Status::unauthenticated(
                "this server needs a token: send `authorization: Bearer TOKEN` metadata",
            ));
        };
        let given = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .unwrap_or("");
        // Every token is compared, each in constant time, so the answer's
        // timing tells nothing about which or how much matched.
        let mut ok = false;
        for t in tokens.iter() {
            ok |= constant_time_eq(t.as_bytes(), given.as_bytes());
        }
        if ok {
            Ok(request)
        } else {
            Err(tonic::Status::unauthenticated(
                "the authorization token is not valid (expected `Bearer TOKEN` with a token from the server's token file)",
            ))
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// How long streams ended at the end of a shutdown's grace period have to
/// get their status to the client before their connections are dropped.
const CUT_FLUSH: std::time::Duration = std::time::Duration::from_secs(2);

/// A server running in this process (used by `avlm serve`, `avlm stream`
/// without `--server`, and the tests).
pub struct RunningServer {
    pub addr: SocketAddr,
    pub state: Arc<ServerState>,
    tls: bool,
    health: tonic_health::server::HealthReporter,
    cut: tokio::sync::watch::Sender<bool>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl RunningServer {
    /// The URL clients connect to.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Stops accepting calls and waits for the open ones to finish, for at
    /// most the configured grace period; calls still open then are dropped.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        set_health(&self.health, ServingStatus::NotServing).await;
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let grace = self.state.config.shutdown_grace;
        if let Ok(served) = tokio::time::timeout(grace, &mut self.task).await {
            return Ok(served??);
        }
        // Streams still open end with UNAVAILABLE, so their clients know to
        // retry elsewhere; a client that no longer reads is dropped.
        tracing::warn!(
            "streams still open {:.1} s after the shutdown began: ending them with UNAVAILABLE",
            grace.as_secs_f64()
        );
        let _ = self.cut.send(true);
        match tokio::time::timeout(CUT_FLUSH, &mut self.task).await {
            Ok(served) => served??,
            Err(_) => {
                tracing::warn!("calls still open after they were ended: dropping them");
                self.task.abort();
            }
        }
        Ok(())
    }

    /// Serves until `signal` completes (then shuts down gracefully) or the
    /// server fails.
    pub async fn run_until(
        mut self,
        signal: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        tokio::select! {
            r = &mut self.task => {
                r??;
                Ok(())
            }
            _ = signal => self.shutdown().await,
        }
    }
}

async fn set_health(reporter: &tonic_health::server::HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    reporter
        .set_service_status(
            <pb::avlm_server::AvlmServer<AvlmService> as tonic::server::NamedService>::NAME,
            status,
        )
        .await;
}

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| anyhow::anyhow!("cannot read the {what} {}: {e}", path.display()))
}

/// Starts serving plain HTTP/2 on `listen` (port 0 picks a free one) and
/// returns once the models are loaded.
pub async fn start(config: ServerConfig, listen: SocketAddr) -> anyhow::Result<RunningServer> {
    start_with(config, listen, Transport::default()).await
}

/// [`start`] with TLS and tokens as `transport` says.
pub async fn start_with(
    config: ServerConfig,
    listen: SocketAddr,
    transport: Transport,
) -> anyhow::Result<RunningServer> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    start_on(listener, config, transport).await
}

/// [`start_with`] on a listener bound by the caller (who then knows the
/// address while the models load).
pub async fn start_on(
    listener: TcpListener,
    config: ServerConfig,
    transport: Transport,
) -> anyhow::Result<RunningServer> {
    // Everything a client could trip on is checked before the models load.
    let tls = match &transport.tls {
        Some(files) => {
            let identity = Identity::from_pem(
                read(&files.cert, "TLS certificate")?,
                read(&files.key, "TLS key")?,
            );
            let mut tls = ServerTlsConfig::new().identity(identity);
            if let Some(ca) = &files.client_ca {
                tls = tls.client_ca_root(Certificate::from_pem(read(ca, "client CA")?));
            }
            Some(tls)
        }
        None => None,
    };
    let addr = listener.local_addr()?;
    let max_message = config.max_message_bytes;

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    set_health(&health_reporter, ServingStatus::NotServing).await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let slot = StateSlot::default();
    let (cut, cut_rx) = tokio::sync::watch::channel(false);
    let avlm = pb::avlm_server::AvlmServer::new(AvlmService::new(slot.clone(), cut_rx))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(16 << 20);
    let check = |service: Option<OpenService>| match &transport.auth {
        Some(auth) => auth.check(service),
        None => TokenCheck { tokens: None },
    };

    let mut builder = tonic::transport::Server::builder().tcp_nodelay(true);
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tls)
            .map_err(|e| anyhow::anyhow!("TLS configuration: {e}"))?;
    }
    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let incoming = TcpListenerStream::new(listener);
    let mut task = tokio::spawn(
        builder
            .add_service(InterceptedService::new(
                health_service,
                check(Some(OpenService::Health)),
            ))
            .add_service(InterceptedService::new(
                reflection_v1,
                check(Some(OpenService::Reflection)),
            ))
            .add_service(InterceptedService::new(
                reflection_v1alpha,
                check(Some(OpenService::Reflection)),
            ))
            .add_service(InterceptedService::new(avlm, check(None)))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = shutdown_rx.await;
            }),
    );
    tracing::info!(%addr, tls = transport.tls.is_some(), tokens = transport.auth.is_some(), "avlm listening; loading models");

    let loading = tokio::task::spawn_blocking(move || ServerState::load(config));
    let state = tokio::select! {
        loaded = loading => match loaded {
            Ok(Ok(state)) => Arc::new(state),
            failed => {
                let _ = shutdown_tx.send(());
                let _ = task.await;
                return Err(match failed {
                    Ok(Err(e)) => e,
                    Err(e) => anyhow::anyhow!("loading the models panicked: {e}"),
                    Ok(Ok(_)) => unreachable!(),
                });
            }
        },
        served = &mut task => {
            served??;
            anyhow::bail!("the server stopped while the models were loading");
        }
    };
    slot.set(state.clone());
    set_health(&health_reporter, ServingStatus::Serving).await;
    tracing::info!(%addr, "avlm serving");
    Ok(RunningServer {
        addr,
        state,
        tls: transport.tls.is_some(),
        health: health_reporter,
        cut,
        shutdown: Some(shutdown_tx),
        task,
    })
}
