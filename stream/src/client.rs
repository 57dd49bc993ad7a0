//! The avlm client: sends media to a server as it is read (at the media's
//! own pace with `realtime`) and hands back every server message as it
//! arrives. Used by `avlm stream`, the camera demo and the tests.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use avlm_proto as pb;
use ffmpeg_next as ffmpeg;
use tokio::sync::mpsc;
use tonic::Status;

use crate::media::sniff::{Mp4Layout, Mp4Sniffer};

/// Where the media comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A file whose bytes are sent unchanged (the server demuxes them).
    File(PathBuf),
    /// Standard input, sent unchanged.
    Stdin,
    /// Anything FFmpeg opens (a URL, a device, a file that can't stream as
    /// is), re-muxed here without re-encoding into a streamable Matroska.
    Remux {
        input: String,
        format: Option<String>,
    },
    /// Bytes already in memory, sent unchanged.
    Memory(Vec<u8>),
    /// Live capture (camera, microphone or any FFmpeg input), decoded and
    /// re-encoded here into a compact live Matroska stream.
    Capture(crate::capture::CaptureSpec),
}

impl Source {
    /// Picks how to send `input`: `-` is stdin; a file is sent as is when it
    /// can stream and re-muxed when it can't (an MP4 with its index at the
    /// end); anything else goes through FFmpeg.
    pub fn detect(input: &str, format: Option<String>) -> Source {
        if input == "-" {
            return Source::Stdin;
        }
        let path = Path::new(input);
        if format.is_none() && path.is_file() {
            if file_streams_as_is(path) {
                return Source::File(path.to_path_buf());
            }
            tracing::info!("{input} keeps its index at the end; re-muxing it to stream");
        }
        Source::Remux {
            input: input.to_string(),
            format,
        }
    }
}

/// Whether a file's bytes can be decoded as they arrive.
pub fn file_streams_as_is(path: &Path) -> bool {
    let Ok(mut f) = std::fs::File::open(path) else {
        return true;
    };
    let mut sniffer = Mp4Sniffer::default();
    let mut buf = vec![0u8; 64 * 1024];
    for _ in 0..64 {
        match f.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if sniffer.push(&buf[..n]) != Mp4Layout::Undecided {
                    break;
                }
            }
        }
    }
    sniffer.verdict() != Mp4Layout::IndexAtEnd
}

/// How to send.
#[derive(Debug, Clone)]
pub struct SendOptions {
    /// Bytes per MediaChunk.
    pub chunk_bytes: usize,
    /// Send at the media's own pace instead of as fast as the server takes it.
    pub realtime: bool,
    /// When set, the source stops at the next chunk and the stream ends
    /// normally (END_OF_STREAM), so the server still sends its last results.
    pub stop: Option<Arc<AtomicBool>>,
}

impl SendOptions {
    fn stopped(&self) -> bool {
        self.stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::Relaxed))
    }
}

/// Why a stream failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("server ended the stream with {:?}: {}", .0.code(), .0.message())]
    Status(Status),
    #[error("cannot read the input: {0}")]
    Source(String),
}

impl ClientError {
    /// Process exit code for the command line: distinct per failure class.
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Connect { .. } => 3,
            ClientError::Status(s) => 10 + s.code() as i32,
            ClientError::Source(_) => 4,
        }
    }
}

/// Where a client connects, and with what credentials.
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// `http://host:port`, `https://host:port`, or `host:port` (https when a
    /// CA or client certificate is given, http otherwise).
    pub url: String,
    /// CA certificate (PEM) the server's certificate must chain to; without
    /// it an https server is checked against the system's roots.
    pub ca: Option<PathBuf>,
    /// Sent as `authorization: Bearer TOKEN` on every call.
    pub token: Option<String>,
    /// Client certificate and key (PEM) for servers that ask for one.
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl Target {
    /// The URL with its scheme.
    pub fn full_url(&self) -> String {
        if self.url.contains("://") {
            self.url.clone()
        } else if self.ca.is_some() || self.identity.is_some() {
            format!("https://{}", self.url)
        } else {
            format!("http://{}", self.url)
        }
    }
}

impl From<&str> for Target {
    fn from(url: &str) -> Self {
        Target {
            url: url.to_string(),
            ..Default::default()
        }
    }
}

impl From<&String> for Target {
    fn from(url: &String) -> Self {
        Target::from(url.as_str())
    }
}

impl From<&Target> for Target {
    fn from(t: &Target) -> Self {
        t.clone()
    }
}

/// Adds the bearer token, when there is one, to every call.
#[derive(Clone)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

/// A connected client.
pub type Client = pb::avlm_client::AvlmClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>,
>;

/// A client over a channel made elsewhere (custom HTTP/2 settings), without a token.
pub fn on_channel(channel: tonic::transport::Channel) -> Client {
    pb::avlm_client::AvlmClient::with_interceptor(channel, Bearer(None))
}

/// Connects to `target` (a URL, or a [`Target`] with credentials).
pub async fn connect(target: impl Into<Target>) -> Result<Client, ClientError> {
    let target = target.into();
    let (channel, bearer) = channel(&target).await?;
    Ok(
        pb::avlm_client::AvlmClient::with_interceptor(channel, bearer)
            .max_decoding_message_size(16 << 20)
            .max_encoding_message_size(64 << 20),
    )
}

/// A channel to `target` and the interceptor that authenticates its calls
/// (for other services on the same server: health, reflection).
pub async fn channel(target: &Target) -> Result<(tonic::transport::Channel, Bearer), ClientError> {
    let url = target.full_url();
    let failed = |reason: String| ClientError::Connect {
        url: url.clone(),
        reason,
    };
    let bearer = match &target.token {
        Some(t) => Some(
            format!("Bearer {}", t.trim())
                .parse()
                .map_err(|_| failed("the token has characters a header cannot carry".into()))?,
        ),
        None => None,
    };
    let mut endpoint =
        tonic::transport::Endpoint::from_shared(url.clone()).map_err(|e| failed(e.to_string()))?;
    if url.starts_with("https://") {
        let mut tls = tonic::transport::ClientTlsConfig::new();
        tls = match &target.ca {
            Some(ca) => tls.ca_certificate(tonic::transport::Certificate::from_pem(
                std::fs::read(ca).map_err(|e| {
                    failed(format!("cannot read the CA file {}: {e}", ca.display()))
                })?,
            )),
            None => tls.with_native_roots(),
        };
        if let Some((cert, key)) = &target.identity {
            let read = |p: &PathBuf| {
                std::fs::read(p).map_err(|e| failed(format!("cannot read {}: {e}", p.display())))
            };
            tls = tls.identity(tonic::transport::Identity::from_pem(
                read(cert)?,
                read(key)?,
            ));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| failed(format!("TLS configuration: {e}")))?;
    } else if target.ca.is_some() || target.identity.is_some() {
        return Err(failed(
            "a CA or client certificate was given for a plain http:// URL; use https://".into(),
        ));
    }
    let channel = endpoint
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| {
            let mut reason = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                reason.push_str(&format!(": {s}"));
                source = s.source();
            }
            failed(reason)
        })?;
    Ok((channel, Bearer(bearer)))
}

/// Streams `source` under `config` and calls `on_message` for each server
/// message as it arrives. Returns when the server ends the stream with OK.
///
/// A resumable stream (`options.resumable`) whose connection drops is
/// resumed: the client reconnects with back-off for up to
/// [`RESUME_BUDGET`], sends the stream's token and how many replies it got,
/// sends again the chunks the server had not acknowledged, and goes on;
/// `on_message` sees every reply once (never `Ack` or `Resumed`).
pub async fn stream(
    target: impl Into<Target>,
    config: pb::StreamConfig,
    source: Source,
    send: SendOptions,
    mut on_message: impl FnMut(&pb::ServerMessage),
) -> Result<(), ClientError> {
    let target: Target = target.into();
    let resumable = config.options.as_ref().and_then(|o| o.resumable) == Some(true);
    let mut client = connect(target.clone()).await?;
    let (chunks_tx, chunks_rx) = mpsc::channel::<Result<Vec<u8>, String>>(8);
    let (err_tx, mut err_rx) = mpsc::channel::<String>(1);
    let reader = std::thread::Builder::new()
        .name("avlm-client-source".into())
        .spawn(move || {
            if let Err(e) = produce(source, &send, &chunks_tx) {
                let _ = chunks_tx.blocking_send(Err(e));
            }
        })
        .map_err(|e| ClientError::Source(e.to_string()))?;
    let outgoing = Arc::new(Outgoing {
        chunks: tokio::sync::Mutex::new(chunks_rx),
        state: std::sync::Mutex::new(Sent {
            generation: 0,
            next_seq: 0,
            unacked: std::collections::VecDeque::new(),
            ended: false,
        }),
        keep: resumable,
    });

    let mut first = pb::client_message::Msg::Config(config);
    let mut token = String::new();
    let mut replies_received = 0u64;
    let mut away: Option<Instant> = None;
    let mut backoff = Duration::from_millis(100);
    let result = 'calls: loop {
        let generation = outgoing.next_generation();
        let (from_tx, from_rx) = tokio::sync::oneshot::channel::<u64>();
        // A resumable stream sends media once its Ready (with the token
        // that can resume it) or its Resumed is in.
        let requests = outgoing.requests(
            generation,
            first.clone(),
            resumable.then_some(from_rx),
            err_tx.clone(),
        );
        let mut from_tx = Some(from_tx);
        let call = match client.stream(requests).await {
            Ok(response) => Ok(response.into_inner()),
            Err(status) => Err(status),
        };
        let failure = match call {
            Ok(mut inbound) => loop {
                tokio::select! {
                    msg = inbound.message() => match msg {
                        Ok(Some(m)) => {
                            match &m.msg {
                                Some(pb::server_message::Msg::Resumed(r)) => {
                                    if let Some(tx) = from_tx.take() {
                                        let _ = tx.send(r.next_seq);
                                    }
                                    away = None;
                                    backoff = Duration::from_millis(100);
                                    continue;
                                }
                                Some(pb::server_message::Msg::Ack(a)) => outgoing.acked(a.next_seq),
                                Some(pb::server_message::Msg::Ready(r)) => {
                                    token = r.resume_token.clone();
                                    if let Some(tx) = from_tx.take() {
                                        let _ = tx.send(0);
                                    }
                                    on_message(&m);
                                }
                                _ => on_message(&m),
                            }
                            replies_received += 1;
                        }
                        Ok(None) => break 'calls Ok(()),
                        Err(status) => break status,
                    },
                    Some(e) = err_rx.recv() => break 'calls Err(ClientError::Source(e)),
                }
            },
            Err(status) => status,
        };
        // A resumable stream whose connection broke tries again.
        let since = *away.get_or_insert_with(Instant::now);
        if !(resumable && !token.is_empty() && transient(&failure))
            || since.elapsed() > RESUME_BUDGET
        {
            break Err(ClientError::Status(failure));
        }
        tracing::info!(status = %failure.message(), "connection lost: resuming the stream");
        first = pb::client_message::Msg::Resume(pb::Resume {
            token: token.clone(),
            replies_received,
        });
        loop {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
            match connect(target.clone()).await {
                Ok(c) => {
                    client = c;
                    break;
                }
                Err(e) if since.elapsed() > RESUME_BUDGET => break 'calls Err(e),
                Err(_) => {}
            }
        }
    };
    drop(reader);
    result
}

/// How long a resumable stream's client keeps trying to reconnect.
pub const RESUME_BUDGET: Duration = Duration::from_secs(30);

/// Whether a call failed below gRPC (the connection broke), not by the server's word.
fn transient(status: &Status) -> bool {
    use tonic::Code;
    let m = status.message();
    match status.code() {
        Code::Unavailable | Code::Unknown | Code::Cancelled => true,
        Code::Internal => m.contains("h2") || m.contains("transport") || m.contains("connection"),
        _ => false,
    }
}

/// What a stream has sent, shared by its calls (one after another).
struct Outgoing {
    chunks: tokio::sync::Mutex<mpsc::Receiver<Result<Vec<u8>, String>>>,
    state: std::sync::Mutex<Sent>,
    /// Keep chunks until acknowledged (resumable streams).
    keep: bool,
}

struct Sent {
    /// The call that takes new chunks; older calls' request streams stop.
    generation: u64,
    next_seq: u64,
    /// Chunks not yet acknowledged, with their seq.
    unacked: std::collections::VecDeque<(u64, Vec<u8>)>,
    /// The source is done (END_OF_STREAM goes after the chunks).
    ended: bool,
}

impl Outgoing {
    fn lock(&self) -> std::sync::MutexGuard<'_, Sent> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn next_generation(&self) -> u64 {
        let mut s = self.lock();
        s.generation += 1;
        s.generation
    }

    fn acked(&self, next_seq: u64) {
        let mut s = self.lock();
        while s.unacked.front().is_some_and(|(seq, _)| *seq < next_seq) {
            s.unacked.pop_front();
        }
    }

    /// The messages of call `generation`: `first`, then (resumable, once the
    /// server said where from: 0 in Ready, `next_seq` in Resumed) the
    /// unacknowledged chunks again, then new chunks from the source and
    /// END_OF_STREAM.
    fn requests(
        self: &Arc<Self>,
        generation: u64,
        first: pb::client_message::Msg,
        resume_from: Option<tokio::sync::oneshot::Receiver<u64>>,
        err_tx: mpsc::Sender<String>,
    ) -> impl futures::Stream<Item = pb::ClientMessage> + Send + 'static {
        use pb::client_message::Msg;
        let out = self.clone();
        let media = |seq, data| pb::ClientMessage {
            msg: Some(Msg::Media(pb::MediaChunk { data, seq })),
        };
        let end = || pb::ClientMessage {
            msg: Some(Msg::Control(pb::Control {
                action: pb::control::Action::EndOfStream as i32,
                ..Default::default()
            })),
        };
        async_stream::stream! {
            yield pb::ClientMessage { msg: Some(first) };
            if let Some(from) = resume_from {
                let Ok(from) = from.await else {
                    std::future::pending::<()>().await;
                    return;
                };
                // Wait out an older call still taking a chunk, so every
                // chunk it took is in `unacked`.
                drop(out.chunks.lock().await);
                out.acked(from);
                let (again, ended): (Vec<(u64, Vec<u8>)>, bool) = {
                    let s = out.lock();
                    (s.unacked.iter().cloned().collect(), s.ended)
                };
                for (seq, data) in again {
                    yield media(seq, data);
                }
                if ended {
                    yield end();
                    return;
                }
            }
            loop {
                let taken = {
                    let mut chunks = out.chunks.lock().await;
                    if out.lock().generation != generation {
                        Taken::Superseded
                    } else {
                        match chunks.recv().await {
                            Some(Ok(data)) => {
                                let mut s = out.lock();
                                let seq = s.next_seq;
                                s.next_seq += 1;
                                if out.keep {
                                    s.unacked.push_back((seq, data.clone()));
                                }
                                Taken::Chunk(seq, data)
                            }
                            Some(Err(e)) => Taken::Failed(e),
                            None => {
                                out.lock().ended = true;
                                Taken::End
                            }
                        }
                    }
                };
                match taken {
                    // A newer call took over.
                    Taken::Superseded => {
                        std::future::pending::<()>().await;
                        return;
                    }
                    Taken::End => {
                        yield end();
                        return;
                    }
                    Taken::Chunk(seq, data) => yield media(seq, data),
                    Taken::Failed(e) => {
                        let _ = err_tx.send(e).await;
                        // Leave the stream open: the failure is reported and
                        // the call dropped, so the server never sees a clean end.
                        std::future::pending::<()>().await;
                        return;
                    }
                }
            }
        }
    }
}

/// What a call's request stream took from the source.
enum Taken {
    Chunk(u64, Vec<u8>),
    /// The source is done: END_OF_STREAM.
    End,
    Failed(String),
    /// A newer call takes the chunks now.
    Superseded,
}

/// Reads the source and sends chunks, pacing them for `realtime`.
fn produce(
    source: Source,
    send: &SendOptions,
    tx: &mpsc::Sender<Result<Vec<u8>, String>>,
) -> Result<(), String> {
    let chunk = send.chunk_bytes.max(1);
    match source {
        Source::Memory(bytes) => {
            for c in bytes.chunks(chunk) {
                if send.stopped() || tx.blocking_send(Ok(c.to_vec())).is_err() {
                    return Ok(());
                }
            }
            Ok(())
        }
        Source::Stdin => copy_reader(std::io::stdin().lock(), chunk, None, send, tx),
        Source::File(path) => {
            let file =
                std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let pace = if send.realtime {
                let size = file.metadata().map(|m| m.len()).unwrap_or(0);
                media_duration(&path)
                    .filter(|d| *d > 0.0)
                    .map(|d| size as f64 / d)
            } else {
                None
            };
            copy_reader(file, chunk, pace, send, tx)
        }
        Source::Remux { input, format } => remux(&input, format.as_deref(), chunk, send, tx),
        Source::Capture(spec) => {
            let stop = send.stop.clone().unwrap_or_default();
            crate::capture::capture(&spec, chunk, stop, tx)
        }
    }
}

/// Duration of a media file in seconds, if FFmpeg can tell.
pub fn media_duration(path: &Path) -> Option<f64> {
    crate::media::container::init_ffmpeg().ok()?;
    let input = ffmpeg::format::input(path).ok()?;
    let d = input.duration();
    (d > 0).then(|| d as f64 / f64::from(ffmpeg::ffi::AV_TIME_BASE))
}

fn copy_reader(
    mut reader: impl Read,
    chunk: usize,
    bytes_per_s: Option<f64>,
    send: &SendOptions,
    tx: &mpsc::Sender<Result<Vec<u8>, String>>,
) -> Result<(), String> {
    let start = Instant::now();
    let mut sent = 0u64;
    while !send.stopped() {
        let mut buf = vec![0u8; chunk];
        let mut filled = 0;
        while filled < chunk {
            match reader.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.to_string()),
            }
            // Stdin and pipes deliver live data: don't wait to fill a chunk.
            if bytes_per_s.is_none() && filled > 0 {
                break;
            }
        }
        if filled == 0 {
            return Ok(());
        }
        buf.truncate(filled);
        if let Some(rate) = bytes_per_s {
            let due = Duration::from_secs_f64(sent as f64 / rate);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        sent += filled as u64;
        if tx.blocking_send(Ok(buf)).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// Collects muxer output into chunks for the channel.
pub(crate) struct ChunkWriter {
    tx: mpsc::Sender<Result<Vec<u8>, String>>,
    buf: Vec<u8>,
    chunk: usize,
}

impl ChunkWriter {
    pub(crate) fn new(tx: mpsc::Sender<Result<Vec<u8>, String>>, chunk: usize) -> Self {
        ChunkWriter {
            tx,
            buf: Vec::new(),
            chunk: chunk.max(1),
        }
    }

    fn send_full(&mut self, all: bool) -> std::io::Result<()> {
        while self.buf.len() >= self.chunk || (all && !self.buf.is_empty()) {
            let n = self.chunk.min(self.buf.len());
            let rest = self.buf.split_off(n);
            let out = std::mem::replace(&mut self.buf, rest);
            self.tx.blocking_send(Ok(out)).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, "stream closed")
            })?;
        }
        Ok(())
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        self.send_full(false)?;
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send_full(true)
    }
}

/// Re-muxes any FFmpeg input into live Matroska without re-encoding.
fn remux(
    input: &str,
    format: Option<&str>,
    chunk: usize,
    send: &SendOptions,
    tx: &mpsc::Sender<Result<Vec<u8>, String>>,
) -> Result<(), String> {
    let realtime = send.realtime;
    crate::media::container::init_ffmpeg().map_err(|e| e.to_string())?;
    ffmpeg::device::register_all();
    let mut ictx = match format {
        Some(f) => open_input_as(input, f)?,
        None => {
            ffmpeg::format::input(input).map_err(|e| format!("FFmpeg cannot open {input}: {e}"))?
        }
    };
    let writer = ChunkWriter::new(tx.clone(), chunk);
    let io = ffmpeg::format::context::StreamIo::from_write_with_capacity(writer, 4096)
        .map_err(|e| e.to_string())?;
    let mut octx =
        ffmpeg::format::output_to_stream(io, None, Some("matroska")).map_err(|e| e.to_string())?;
    let mut mapping = vec![-1i32; ictx.nb_streams() as usize];
    let mut in_bases = vec![ffmpeg::Rational(1, 1); ictx.nb_streams() as usize];
    let mut next = 0;
    for ist in ictx.streams() {
        let medium = ist.parameters().medium();
        if medium != ffmpeg::media::Type::Audio && medium != ffmpeg::media::Type::Video {
            continue;
        }
        mapping[ist.index()] = next;
        in_bases[ist.index()] = ist.time_base();
        next += 1;
        let mut ost = octx
            .add_stream(ffmpeg::encoder::find(ffmpeg::codec::Id::None))
            .map_err(|e| e.to_string())?;
        ost.set_parameters(ist.parameters());
        // SAFETY: clearing the source container's codec tag on our own
        // stream's parameters, as FFmpeg's remuxer does.
        unsafe {
            (*ost.parameters().as_mut_ptr()).codec_tag = 0;
        }
    }
    if next == 0 {
        return Err(format!("{input} has no audio or video stream"));
    }
    let mut opts = ffmpeg::Dictionary::new();
    opts.set("live", "1");
    opts.set("cluster_time_limit", "250");
    opts.set("flush_packets", "1");
    octx.write_header_with(opts)
        .map_err(|e| format!("cannot re-mux {input} to Matroska: {e}"))?;
    let start = Instant::now();
    let mut first_ts: Option<f64> = None;
    while !send.stopped() {
        let mut packet = ffmpeg::Packet::empty();
        match packet.read(&mut ictx) {
            Ok(()) => {}
            Err(ffmpeg::Error::Eof) => break,
            Err(ffmpeg::Error::Other { errno }) if errno == ffmpeg::ffi::EAGAIN => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(e) => return Err(format!("reading {input}: {e}")),
        }
        let ist = packet.stream();
        // A stream that appeared after the header (MPEG-TS can do that) is not sent.
        let ost = mapping.get(ist).copied().unwrap_or(-1);
        if ost < 0 {
            continue;
        }
        if realtime {
            if let Some(ts) = packet.dts().or(packet.pts()) {
                let t = ts as f64 * f64::from(in_bases[ist]);
                let t0 = *first_ts.get_or_insert(t);
                let due = Duration::from_secs_f64((t - t0).max(0.0));
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        }
        let out_base = octx
            .stream(ost as usize)
            .map(|s| s.time_base())
            .unwrap_or(in_bases[ist]);
        packet.rescale_ts(in_bases[ist], out_base);
        packet.set_position(-1);
        packet.set_stream(ost as usize);
        if packet.write_interleaved(&mut octx).is_err() {
            // The receiving side is gone (the stream ended); stop quietly.
            return Ok(());
        }
    }
    octx.write_trailer().map_err(|e| e.to_string())?;
    Ok(())
}

fn open_input_as(input: &str, format: &str) -> Result<ffmpeg::format::context::Input, String> {
    let name =
        std::ffi::CString::new(format).map_err(|_| format!("bad input format name {format:?}"))?;
    // SAFETY: av_find_input_format returns a pointer to a static format
    // description or null.
    let fmt = unsafe { ffmpeg::ffi::av_find_input_format(name.as_ptr()) };
    if fmt.is_null() {
        return Err(format!("FFmpeg has no input format {format:?}"));
    }
    // SAFETY: `fmt` is a valid, static AVInputFormat.
    let fmt = unsafe { ffmpeg::format::Input::wrap(fmt as *mut _) };
    let ctx = ffmpeg::format::open(input, &ffmpeg::Format::Input(fmt))
        .map_err(|e| format!("FFmpeg cannot open {input} as {format}: {e}"))?;
    match ctx {
        ffmpeg::format::context::Context::Input(i) => Ok(i),
        _ => Err(format!("{input} did not open as an input")),
    }
}
