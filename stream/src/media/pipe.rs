//! The bounded byte pipe between a session's gRPC reader (async) and its
//! decoder thread (blocking).
//!
//! Bytes sit in a fixed-size `ringbuf` ring. The async side waits for room
//! instead of dropping anything, so a full pipe stops the reader from pulling
//! more messages off the connection (backpressure reaches the client through
//! HTTP/2 flow control). The decoder side blocks until bytes, the end of the
//! stream or an abort arrive. Flush markers travel in order with the bytes.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use ringbuf::traits::{Consumer, Observer, Producer, Split};
use ringbuf::{HeapCons, HeapProd, HeapRb};
use tokio::sync::Notify;

/// State both ends see.
struct Shared {
    /// Set once the writer has sent everything (end of stream).
    closed: AtomicBool,
    /// Set when the session is torn down: readers stop at once.
    aborted: AtomicBool,
    /// Set when the reading side is gone: writes stop at once.
    reader_gone: AtomicBool,
    /// Total bytes written and read, for flush markers and stats.
    written: AtomicU64,
    read: AtomicU64,
    /// Byte offsets at which the client asked for a flush.
    markers: Mutex<VecDeque<u64>>,
    /// Wakes the blocking reader when bytes or a state change arrive.
    data_lock: Mutex<()>,
    data_ready: Condvar,
    /// Wakes the async writer when room frees up.
    room: Notify,
}

impl Shared {
    fn wake_reader(&self) {
        let _guard = self.data_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.data_ready.notify_all();
    }
}

/// Creates a pipe holding at most `capacity` bytes in flight.
pub fn byte_pipe(capacity: usize) -> (PipeWriter, PipeReader) {
    let (prod, cons) = HeapRb::<u8>::new(capacity.max(1)).split();
    let shared = Arc::new(Shared {
        closed: AtomicBool::new(false),
        aborted: AtomicBool::new(false),
        reader_gone: AtomicBool::new(false),
        written: AtomicU64::new(0),
        read: AtomicU64::new(0),
        markers: Mutex::new(VecDeque::new()),
        data_lock: Mutex::new(()),
        data_ready: Condvar::new(),
        room: Notify::new(),
    });
    (
        PipeWriter {
            prod,
            shared: shared.clone(),
        },
        PipeReader {
            cons,
            shared,
            waited: Duration::ZERO,
        },
    )
}

/// Why a write did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipeClosed {
    /// The reading side went away or the session was aborted.
    Aborted,
}

/// The async (gRPC reader) end.
pub struct PipeWriter {
    prod: HeapProd<u8>,
    shared: Arc<Shared>,
}

impl PipeWriter {
    /// Writes all of `data`, waiting for room as needed; never drops bytes.
    pub async fn write_all(&mut self, mut data: &[u8]) -> Result<(), PipeClosed> {
        while !data.is_empty() {
            // Register for a wake-up before checking state so none is missed.
            let room = self.shared.room.notified();
            if self.shared.aborted.load(Ordering::Acquire)
                || self.shared.reader_gone.load(Ordering::Acquire)
            {
                return Err(PipeClosed::Aborted);
            }
            let n = self.prod.push_slice(data);
            if n > 0 {
                data = &data[n..];
                self.shared.written.fetch_add(n as u64, Ordering::AcqRel);
                self.shared.wake_reader();
                continue;
            }
            room.await;
        }
        Ok(())
    }

    /// Asks for a flush once the reader has consumed everything written so far.
    pub fn mark_flush(&self) {
        let at = self.shared.written.load(Ordering::Acquire);
        self.shared
            .markers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(at);
        self.shared.wake_reader();
    }

    /// No more bytes: the reader sees end of stream once it drained the pipe.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.wake_reader();
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.shared.written.load(Ordering::Acquire)
    }

    /// A handle that can abort the pipe from elsewhere.
    pub fn abort_handle(&self) -> PipeAbort {
        PipeAbort(self.shared.clone())
    }
}

impl Drop for PipeWriter {
    fn drop(&mut self) {
        // A writer dropped without close() means the session is going away;
        // but once the reader is gone (the decoder stopped on its own: it
        // failed or finished), the writer is dropped because writes fail,
        // and marking that an abort would turn the decoder's own verdict,
        // still on its way, into "session aborted".
        if !self.shared.closed.load(Ordering::Acquire)
            && !self.shared.reader_gone.load(Ordering::Acquire)
        {
            self.shared.aborted.store(true, Ordering::Release);
            self.shared.wake_reader();
        }
    }
}

/// Tears a pipe down from any thread: both ends stop at once.
#[derive(Clone)]
pub struct PipeAbort(Arc<Shared>);

impl PipeAbort {
    pub fn abort(&self) {
        self.0.aborted.store(true, Ordering::Release);
        self.0.wake_reader();
        self.0.room.notify_waiters();
    }

    pub fn is_aborted(&self) -> bool {
        self.0.aborted.load(Ordering::Acquire)
    }

    /// Bytes the reader has taken out of the pipe.
    pub fn bytes_read(&self) -> u64 {
        self.0.read.load(Ordering::Acquire)
    }

    /// Bytes the writer has put in.
    pub fn bytes_written(&self) -> u64 {
        self.0.written.load(Ordering::Acquire)
    }

    /// Whether the writer closed the pipe cleanly (end of stream).
    pub fn is_closed(&self) -> bool {
        self.0.closed.load(Ordering::Acquire)
    }
}

/// What the blocking reader gets next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// `n` bytes were copied into the buffer.
    Bytes(usize),
    /// The client asked for a flush at this point of the byte stream.
    Flush,
    /// Everything has been read.
    End,
}

/// The blocking (decoder) end.
pub struct PipeReader {
    cons: HeapCons<u8>,
    shared: Arc<Shared>,
    waited: Duration,
}

impl PipeReader {
    /// Blocks until bytes, a flush marker, the end or an abort arrive.
    pub fn next(&mut self, buf: &mut [u8]) -> io::Result<Next> {
        loop {
            if self.shared.aborted.load(Ordering::Acquire) {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "session aborted",
                ));
            }
            let consumed = self.shared.read.load(Ordering::Acquire);
            {
                let mut markers = self
                    .shared
                    .markers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                if markers.front().is_some_and(|&at| at <= consumed) {
                    markers.pop_front();
                    return Ok(Next::Flush);
                }
            }
            // Never read past a pending flush marker.
            let limit = {
                let markers = self
                    .shared
                    .markers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                markers
                    .front()
                    .map_or(buf.len(), |&at| buf.len().min((at - consumed) as usize))
            };
            let n = self.cons.pop_slice(&mut buf[..limit]);
            if n > 0 {
                self.shared.read.fetch_add(n as u64, Ordering::AcqRel);
                self.shared.room.notify_one();
                return Ok(Next::Bytes(n));
            }
            if self.shared.closed.load(Ordering::Acquire) && self.cons.is_empty() {
                return Ok(Next::End);
            }
            let started = Instant::now();
            let guard = self
                .shared
                .data_lock
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            // Re-check under the lock: the writer notifies while holding it.
            if self.cons.is_empty()
                && !self.shared.closed.load(Ordering::Acquire)
                && !self.shared.aborted.load(Ordering::Acquire)
                && !self.has_due_marker()
            {
                let _unused = self
                    .shared
                    .data_ready
                    .wait_timeout(guard, Duration::from_millis(200))
                    .unwrap_or_else(|e| e.into_inner());
            }
            self.waited += started.elapsed();
        }
    }

    fn has_due_marker(&self) -> bool {
        let consumed = self.shared.read.load(Ordering::Acquire);
        self.shared
            .markers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .front()
            .is_some_and(|&at| at <= consumed)
    }

    /// Time spent blocked waiting for the client.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// A handle that can abort the pipe from elsewhere.
    pub fn abort_handle(&self) -> PipeAbort {
        PipeAbort(self.shared.clone())
    }

    pub fn bytes_read(&self) -> u64 {
        self.shared.read.load(Ordering::Acquire)
    }
}

impl Drop for PipeReader {
    fn drop(&mut self) {
        // Nobody will drain the pipe any more: release a waiting writer.
        self.shared.reader_gone.store(true, Ordering::Release);
        self.shared.room.notify_waiters();
    }
}

/// A copy of the first bytes read, kept until [`Head::take`]: what FFmpeg
/// probed, so an error can say what the media looked like.
#[derive(Clone)]
pub struct Head {
    bytes: Arc<Mutex<Option<Vec<u8>>>>,
    limit: usize,
}

impl Head {
    /// Keeps at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Head {
            bytes: Arc::new(Mutex::new(Some(Vec::new()))),
            limit,
        }
    }

    fn record(&self, data: &[u8]) {
        let mut guard = self.bytes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(kept) = guard.as_mut() {
            let n = self.limit.saturating_sub(kept.len()).min(data.len());
            kept.extend_from_slice(&data[..n]);
        }
    }

    /// The bytes kept so far; recording stops.
    pub fn take(&self) -> Vec<u8> {
        let mut guard = self.bytes.lock().unwrap_or_else(|p| p.into_inner());
        guard.take().unwrap_or_default()
    }
}

/// A `Read` over the pipe for FFmpeg's custom I/O; flush markers are handed
/// to `on_flush` as they are passed, in order with the bytes.
pub struct PipeRead<F: FnMut() + Send> {
    pub reader: PipeReader,
    pub on_flush: F,
    pub head: Head,
}

impl<F: FnMut() + Send> Read for PipeRead<F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.reader.next(buf)? {
                Next::Bytes(n) => {
                    self.head.record(&buf[..n]);
                    return Ok(n);
                }
                Next::Flush => (self.on_flush)(),
                Next::End => return Ok(0),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_arrive_in_order_through_a_small_ring() {
        let (mut w, mut r) = byte_pipe(7);
        let data: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        let expected = data.clone();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 13];
            loop {
                match r.next(&mut buf).unwrap() {
                    Next::Bytes(n) => got.extend_from_slice(&buf[..n]),
                    Next::Flush => got.push(b'F'),
                    Next::End => return got,
                }
            }
        });
        w.write_all(&data).await.unwrap();
        w.close();
        assert_eq!(reader.join().unwrap(), expected);
    }

    #[tokio::test]
    async fn flush_marker_sits_between_the_right_bytes() {
        let (mut w, mut r) = byte_pipe(64);
        w.write_all(b"abc").await.unwrap();
        w.mark_flush();
        w.write_all(b"def").await.unwrap();
        w.close();
        let mut seen = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            match r.next(&mut buf).unwrap() {
                Next::Bytes(n) => seen.extend_from_slice(&buf[..n]),
                Next::Flush => seen.push(b'|'),
                Next::End => break,
            }
        }
        assert_eq!(seen, b"abc|def");
    }

    #[tokio::test]
    async fn dropping_the_reader_releases_a_blocked_writer() {
        let (mut w, r) = byte_pipe(4);
        let dropper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(r);
        });
        assert_eq!(w.write_all(&[0u8; 100]).await, Err(PipeClosed::Aborted));
        dropper.join().unwrap();
    }

    #[tokio::test]
    async fn head_keeps_the_first_bytes_until_taken() {
        let (mut w, r) = byte_pipe(64);
        let head = Head::new(5);
        let mut read = PipeRead {
            reader: r,
            on_flush: || {},
            head: head.clone(),
        };
        w.write_all(b"abc").await.unwrap();
        w.write_all(b"defgh").await.unwrap();
        w.close();
        let mut all = Vec::new();
        read.read_to_end(&mut all).unwrap();
        assert_eq!(all, b"abcdefgh");
        assert_eq!(head.take(), b"abcde");
        assert_eq!(head.take(), b"", "recording stops once taken");
    }

    #[tokio::test]
    async fn a_writer_dropped_after_the_reader_left_does_not_abort() {
        let (mut w, r) = byte_pipe(4);
        let abort = w.abort_handle();
        // The decoder stops on its own (an error at open): its reader goes,
        // the session's next write fails and the session lets the writer go.
        drop(r);
        assert_eq!(w.write_all(b"more").await, Err(PipeClosed::Aborted));
        drop(w);
        assert!(
            !abort.is_aborted(),
            "the decoder's own error must not read as an aborted session"
        );
        // A writer dropped while the decoder still reads is a teardown.
        let (w, _r) = byte_pipe(4);
        let abort = w.abort_handle();
        drop(w);
        assert!(abort.is_aborted());
    }

    #[tokio::test]
    async fn abort_wakes_a_blocked_reader() {
        let (w, mut r) = byte_pipe(4);
        let abort = w.abort_handle();
        let t = std::thread::spawn(move || r.next(&mut [0u8; 4]).map_err(|e| e.kind()));
        std::thread::sleep(Duration::from_millis(30));
        abort.abort();
        assert_eq!(t.join().unwrap(), Err(io::ErrorKind::ConnectionAborted));
        drop(w);
    }
}
