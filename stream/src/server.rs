//! Building and running the gRPC server: the avlm service, the standard
//! health service and server reflection, on a given listener.

use std::net::SocketAddr;
use std::sync::Arc;

use avlm_proto as pb;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::config::ServerConfig;
use crate::service::AvlmService;
use crate::state::ServerState;

/// A server running in this process (used by `avlm serve`, `avlm stream`
/// without `--server`, and the tests).
pub struct RunningServer {
    pub addr: SocketAddr,
    pub state: Arc<ServerState>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl RunningServer {
    /// The URL clients connect to.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting calls and waits for the open ones to finish, for at
    /// most the configured grace period; calls still open then are dropped.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let grace = self.state.config.shutdown_grace;
        match tokio::time::timeout(grace, &mut self.task).await {
            Ok(served) => served??,
            Err(_) => {
                tracing::warn!(
                    "calls still open {:.1} s after the shutdown began: dropping them",
                    grace.as_secs_f64()
                );
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

/// Loads the models and starts serving on `listen` (port 0 picks a free one).
pub async fn start(config: ServerConfig, listen: SocketAddr) -> anyhow::Result<RunningServer> {
    let state = Arc::new(tokio::task::spawn_blocking(move || ServerState::load(config)).await??);
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    let max_message = state.config.max_message_bytes;

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<pb::avlm_server::AvlmServer<AvlmService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let avlm = pb::avlm_server::AvlmServer::new(AvlmService::new(state.clone()))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(16 << 20);

    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let incoming = TcpListenerStream::new(listener);
    let task = tokio::spawn(
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(health_service)
            .add_service(reflection)
            .add_service(avlm)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = shutdown_rx.await;
            }),
    );
    tracing::info!(%addr, "avlm listening");
    Ok(RunningServer {
        addr,
        state,
        shutdown: Some(shutdown_tx),
        task,
    })
}
