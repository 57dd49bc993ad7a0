//! The reply side of a `Stream` call: a bounded queue the session sends into
//! and tonic takes from as the client reads.
//!
//! A client that stops reading (while staying connected) fills the queue, and
//! then every part of its session waits on a full queue forever: the analysis
//! thread's send, the decoder behind it, the reader behind that, and with
//! them the session's slot. So a watchdog closes the queue once it has been
//! full with nothing taken for the idle timeout: every waiting send fails, the
//! session unwinds and frees its slot, and should the client read again its
//! call ends with DEADLINE_EXCEEDED.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use avlm_proto as pb;
use futures::Stream;
use tokio::sync::mpsc::{self, Receiver, Sender};
use tonic::Status;

use crate::error::SessionError;

/// What a session sends its client: a message, or the error that ends the call.
pub type Reply = Result<pb::ServerMessage, SessionError>;

/// What tonic streams to the client.
pub struct Replies {
    shared: Arc<Mutex<Shared>>,
}

struct Shared {
    /// `None` once the watchdog closed the queue.
    rx: Option<Receiver<Reply>>,
    last_taken: Instant,
    /// The status owed to the client after the watchdog closed the queue.
    owed: Option<SessionError>,
}

/// A reply queue of `capacity` messages; with `stall_limit`, a watchdog
/// closes it when the client takes nothing from a full queue for that long.
pub fn channel(capacity: usize, stall_limit: Option<Duration>) -> (Sender<Reply>, Replies) {
    let (tx, rx) = mpsc::channel(capacity);
    let shared = Arc::new(Mutex::new(Shared {
        rx: Some(rx),
        last_taken: Instant::now(),
        owed: None,
    }));
    if let Some(limit) = stall_limit {
        // Weak both ways: the watchdog must keep neither the session's
        // senders nor the queue alive (a dropped queue is how the session
        // learns that its client went away).
        let weak = tx.downgrade();
        let watched = Arc::downgrade(&shared);
        let period = (limit / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                // Every sender gone: the session is over.
                let Some(tx) = weak.upgrade() else { break };
                let full = tx.capacity() == 0;
                drop(tx);
                // tonic dropped the reply stream: the client is gone.
                let Some(watched) = watched.upgrade() else {
                    break;
                };
                let mut s = watched.lock().unwrap_or_else(|e| e.into_inner());
                if full && s.last_taken.elapsed() >= limit {
                    tracing::info!(
                        "the client took no reply for {:.1} s: ending its session",
                        limit.as_secs_f64()
                    );
                    s.rx = None;
                    s.owed = Some(SessionError::deadline(format!(
                        "the client read no reply for {} s while replies waited (serve --idle-timeout-s)",
                        limit.as_secs_f64()
                    )));
                    break;
                }
            }
        });
    }
    (tx, Replies { shared })
}

/// The transport edge: a session's errors become gRPC statuses here.
impl Stream for Replies {
    type Item = Result<pb::ServerMessage, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        match s.rx.as_mut() {
            Some(rx) => {
                let next = rx.poll_recv(cx);
                if matches!(next, Poll::Ready(Some(_))) {
                    s.last_taken = Instant::now();
                }
                next.map(|r| r.map(|r| r.map_err(Status::from)))
            }
            None => Poll::Ready(s.owed.take().map(|e| Err(e.into()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn msg() -> Reply {
        Ok(pb::ServerMessage { msg: None })
    }

    #[tokio::test]
    async fn a_queue_left_full_is_closed_and_its_senders_released() {
        let (tx, mut replies) = channel(2, Some(Duration::from_millis(200)));
        tx.send(msg()).await.unwrap();
        tx.send(msg()).await.unwrap();
        // The third send waits for the client, which never reads: the
        // watchdog must release it with an error.
        let blocked = tokio::time::timeout(Duration::from_secs(3), tx.send(msg())).await;
        assert!(matches!(blocked, Ok(Err(_))), "{blocked:?}");
        let status = replies.next().await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert!(replies.next().await.is_none());
    }

    #[tokio::test]
    async fn a_client_that_keeps_reading_is_never_cut_off() {
        let (tx, mut replies) = channel(2, Some(Duration::from_millis(100)));
        let sender = tokio::spawn(async move {
            for _ in 0..40 {
                tx.send(msg()).await.unwrap();
            }
        });
        // Slow but steady: one message per 30 ms, well inside the limit,
        // while the queue stays full.
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(30)).await;
            assert!(replies.next().await.unwrap().is_ok());
        }
        sender.await.unwrap();
        assert!(replies.next().await.is_none());
    }

    #[tokio::test]
    async fn dropping_the_replies_closes_the_queue_at_once() {
        let (tx, replies) = channel(2, Some(Duration::from_secs(60)));
        drop(replies);
        tokio::time::timeout(Duration::from_secs(1), tx.closed())
            .await
            .expect("the session sees its client gone");
    }

    #[tokio::test]
    async fn an_idle_queue_that_is_not_full_stays_open() {
        let (tx, mut replies) = channel(4, Some(Duration::from_millis(50)));
        tx.send(msg()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(replies.next().await.unwrap().is_ok());
        drop(tx);
        assert!(replies.next().await.is_none());
    }
}
