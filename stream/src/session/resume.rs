//! Resumable streams: a stream that asked for it (StreamOptions.resumable)
//! survives its connection dropping for the server's grace period.
//!
//! The session's parts send their replies to a relay instead of the call:
//! the relay numbers them, keeps the most recent ones, and forwards them to
//! whichever call carries the stream now. When that call's connection
//! drops, the session goes on (its decoder takes what was accepted; the
//! reader waits for the client's next call) and the relay keeps what it
//! would have sent. A call whose first message is `Resume` with the
//! stream's token is handed to the session: the relay answers `Resumed`
//! (the next MediaChunk seq the reader expects), sends again every reply
//! from the client's count on, and carries on; the reader reads the new
//! call's messages from that seq. No accepted chunk is taken twice or
//! lost: chunks before `next_seq` were written to the decoder, the rest
//! the client sends again. After the grace period without a call the
//! relay stops: the session sees its client gone and frees everything.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use avlm_proto as pb;
use prost::Message;
use tokio::sync::mpsc::{self, Receiver, Sender};
use tonic::Streaming;

use crate::error::{ErrorKind, SessionError};
use crate::replies::Reply;

/// Bytes of sent replies a relay keeps for a client that comes back.
const REPLAY_BYTES: usize = 4 << 20;

/// A call that resumes a stream.
pub struct Attach {
    pub inbound: Streaming<pb::ClientMessage>,
    pub tx: Sender<Reply>,
    /// ServerMessages the client got before its connection dropped.
    pub replies_received: u64,
}

/// Open resumable streams by token.
#[derive(Default)]
pub struct Registry {
    open: Mutex<HashMap<String, Sender<Attach>>>,
}

impl Registry {
    fn insert(&self, token: String, port: Sender<Attach>) {
        self.lock().insert(token, port);
    }

    fn remove(&self, token: &str) {
        self.lock().remove(token);
    }

    /// Hands `attach` to the stream with `token`; it comes back when there
    /// is no such stream (it ended, or its grace period passed).
    pub fn resume(&self, token: &str, attach: Attach) -> Result<(), Box<Attach>> {
        let port = self.lock().get(token).cloned();
        match port {
            Some(port) => port.try_send(attach).map_err(|e| {
                Box::new(match e {
                    mpsc::error::TrySendError::Full(a) | mpsc::error::TrySendError::Closed(a) => a,
                })
            }),
            None => Err(Box::new(attach)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Sender<Attach>>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A new resume token: 244 random bits.
pub fn new_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// What the session's reader needs from the relay.
pub struct ReaderSide {
    /// New calls' message streams, in order; `None` once the stream is over.
    pub inbound: Receiver<Streaming<pb::ClientMessage>>,
    /// The next MediaChunk seq the reader expects (it updates this).
    pub next_seq: Arc<AtomicU64>,
}

/// Starts the relay of a resumable stream whose first call replies on
/// `out`; the session's parts send into the returned sender.
pub fn start(
    registry: Arc<crate::state::ServerState>,
    token: String,
    out: Sender<Reply>,
    queue: usize,
    grace: Duration,
) -> (Sender<Reply>, ReaderSide) {
    let (session_tx, session_rx) = mpsc::channel(queue);
    let (attach_tx, attach_rx) = mpsc::channel(1);
    let (inbound_tx, inbound_rx) = mpsc::channel(1);
    let next_seq = Arc::new(AtomicU64::new(0));
    registry.resumable.insert(token.clone(), attach_tx);
    let relay = Relay {
        replies: session_rx,
        out: Some(out),
        attach: attach_rx,
        inbound: inbound_tx,
        next_seq: next_seq.clone(),
        grace,
        sent: 0,
        kept: VecDeque::new(),
        kept_bytes: 0,
        away_from: 0,
        parked: Vec::new(),
    };
    tokio::spawn(async move {
        relay.run().await;
        registry.resumable.remove(&token);
    });
    (
        session_tx,
        ReaderSide {
            inbound: inbound_rx,
            next_seq,
        },
    )
}

struct Relay {
    replies: Receiver<Reply>,
    /// The call the stream replies on now; `None` while the client is away.
    out: Option<Sender<Reply>>,
    attach: Receiver<Attach>,
    inbound: Sender<Streaming<pb::ClientMessage>>,
    next_seq: Arc<AtomicU64>,
    grace: Duration,
    /// Replies numbered so far.
    sent: u64,
    /// The most recent replies with their numbers.
    kept: VecDeque<(u64, pb::ServerMessage)>,
    kept_bytes: usize,
    /// The first reply the client missed when its connection dropped.
    away_from: u64,
    /// Message streams of calls the reader no longer reads (kept open so
    /// the client's side of them is not reset while replies flow).
    parked: Vec<Streaming<pb::ClientMessage>>,
}

impl Relay {
    async fn run(mut self) {
        let mut away_since: Option<tokio::time::Instant> = None;
        loop {
            let deadline = away_since.map(|t| t + self.grace);
            tokio::select! {
                reply = self.replies.recv() => match reply {
                    // Every part is done: the stream is over.
                    None => break,
                    Some(Ok(msg)) => {
                        let away_from = away_since.map(|_| self.away_from);
                        if !self.keep(msg.clone(), away_from) {
                            tracing::info!("replies for a resumable stream overflowed while its client was away: ending it");
                            break;
                        }
                        if let Some(out) = &self.out {
                            if out.send(Ok(msg)).await.is_err() {
                                self.out = None;
                                self.away_from = self.sent - 1;
                                away_since.get_or_insert_with(tokio::time::Instant::now);
                            }
                        }
                    }
                    Some(Err(e)) => {
                        // The error that ends the stream.
                        if let Some(out) = &self.out {
                            let _ = out.send(Err(e)).await;
                        }
                        break;
                    }
                },
                () = closed(&self.out) => {
                    tracing::info!("the connection of a resumable stream dropped: waiting for its client");
                    self.out = None;
                    self.away_from = self.sent;
                    away_since.get_or_insert_with(tokio::time::Instant::now);
                }
                attach = self.attach.recv() => {
                    let Some(a) = attach else { break };
                    if self.resume(a).await {
                        away_since = None;
                    }
                }
                () = sleep_until(deadline) => {
                    tracing::info!(grace_s = self.grace.as_secs_f64(), "no client came back for a resumable stream: ending it");
                    break;
                }
            }
        }
    }

    /// Keeps `msg` for replay, letting the oldest go past [`REPLAY_BYTES`];
    /// `false` when one of those was sent after `away_from` (the first reply
    /// an absent client cannot have got).
    fn keep(&mut self, msg: pb::ServerMessage, away_from: Option<u64>) -> bool {
        let size = msg.encoded_len();
        self.kept.push_back((self.sent, msg));
        self.sent += 1;
        self.kept_bytes += size;
        let mut whole = true;
        while self.kept_bytes > REPLAY_BYTES && self.kept.len() > 1 {
            if let Some((i, old)) = self.kept.pop_front() {
                self.kept_bytes -= old.encoded_len();
                whole &= away_from.is_none_or(|a| i < a);
            }
        }
        whole
    }

    /// Moves the stream to a new call; `false` when the client's missed
    /// replies are gone (that call ends with DATA_LOSS).
    async fn resume(&mut self, a: Attach) -> bool {
        let first_kept = self.kept.front().map_or(self.sent, |(i, _)| *i);
        if a.replies_received > self.sent || a.replies_received < first_kept {
            let _ = a
                .tx
                .send(Err(SessionError::new(
                    ErrorKind::DataLoss,
                    format!(
                        "Resume.replies_received {} is outside the replies this stream can send again ({first_kept}..={})",
                        a.replies_received, self.sent
                    ),
                )))
                .await;
            return false;
        }
        let next_seq = self.next_seq.load(Ordering::Acquire);
        let resumed = pb::ServerMessage {
            msg: Some(pb::server_message::Msg::Resumed(pb::Resumed { next_seq })),
        };
        if a.tx.send(Ok(resumed)).await.is_err() {
            return false;
        }
        for (i, msg) in &self.kept {
            if *i >= a.replies_received && a.tx.send(Ok(msg.clone())).await.is_err() {
                return false;
            }
        }
        tracing::info!(
            next_seq,
            replayed = self.sent - a.replies_received,
            "a resumable stream's client came back"
        );
        self.out = Some(a.tx);
        // The reader takes the new call's messages if it still reads; else
        // the call stays open until the replies are done.
        if let Err(e) = self.inbound.try_send(a.inbound) {
            let (mpsc::error::TrySendError::Full(s) | mpsc::error::TrySendError::Closed(s)) = e;
            self.parked.push(s);
        }
        true
    }
}

async fn closed(out: &Option<Sender<Reply>>) {
    match out {
        Some(out) => out.closed().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
