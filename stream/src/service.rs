//! The tonic service: a thin edge that turns gRPC calls into sessions.

use std::pin::Pin;
use std::sync::Arc;

use avlm_proto as pb;
use futures::Stream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::state::ServerState;

/// Server messages buffered per session before the session waits for the client.
const REPLY_QUEUE: usize = 64;

pub struct AvlmService {
    state: Arc<ServerState>,
}

impl AvlmService {
    pub fn new(state: Arc<ServerState>) -> Self {
        AvlmService { state }
    }
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<pb::ServerMessage, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::avlm_server::Avlm for AvlmService {
    type StreamStream = ReplyStream;

    async fn stream(
        &self,
        request: Request<Streaming<pb::ClientMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let Some(lease) = self.state.try_lease() else {
            return Err(Status::resource_exhausted(format!(
                "the server is at its limit of {} concurrent sessions (serve --max-sessions); retry later",
                self.state.config.max_sessions
            )));
        };
        let peer = request.remote_addr();
        let span = tracing::info_span!("session", id = %lease.id, peer = ?peer);
        let (tx, replies) = crate::replies::channel(REPLY_QUEUE, self.state.config.idle_timeout);
        let state = self.state.clone();
        tokio::spawn(crate::session::run(state, request.into_inner(), tx, lease).instrument(span));
        Ok(Response::new(Box::pin(replies)))
    }

    async fn get_info(
        &self,
        _request: Request<pb::GetInfoRequest>,
    ) -> Result<Response<pb::ServerInfo>, Status> {
        Ok(Response::new(pb::ServerInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            models: vec![self.state.model_info()],
            max_sessions: self.state.config.max_sessions as u32,
            active_sessions: self.state.active_sessions() as u32,
            max_message_bytes: self.state.config.max_message_bytes as u64,
            tasks: self.state.tasks().into_iter().map(|t| t as i32).collect(),
        }))
    }
}
