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
pub async fn stream(
    target: impl Into<Target>,
    config: pb::StreamConfig,
    source: Source,
    send: SendOptions,
    mut on_message: impl FnMut(&pb::ServerMessage),
) -> Result<(), ClientError> {
    let mut client = connect(target).await?;
    let (chunks_tx, mut chunks_rx) = mpsc::channel::<Result<Vec<u8>, String>>(8);
    let (err_tx, mut err_rx) = mpsc::channel::<String>(1);
    let reader = std::thread::Builder::new()
        .name("avlm-client-source".into())
        .spawn(move || {
            if let Err(e) = produce(source, &send, &chunks_tx) {
                let _ = chunks_tx.blocking_send(Err(e));
            }
        })
        .map_err(|e| ClientError::Source(e.to_string()))?;

    let requests = async_stream::stream! {
        yield pb::ClientMessage { msg: Some(pb::client_message::Msg::Config(config)) };
        let mut seq = 0u64;
        while let Some(item) = chunks_rx.recv().await {
            match item {
                Ok(data) => {
                    yield pb::ClientMessage { msg: Some(pb::client_message::Msg::Media(pb::MediaChunk { data, seq })) };
                    seq += 1;
                }
                Err(e) => {
                    let _ = err_tx.send(e).await;
                    // Leave the stream open: the failure is reported below and
                    // the call dropped, so the server never sees a clean end.
                    std::future::pending::<()>().await;
                }
            }
        }
        yield pb::ClientMessage { msg: Some(pb::client_message::Msg::Control(pb::Control { action: pb::control::Action::EndOfStream as i32, ..Default::default() })) };
    };
    let response = client.stream(requests).await.map_err(ClientError::Status)?;
    let mut inbound = response.into_inner();
    let result = loop {
        tokio::select! {
            msg = inbound.message() => match msg {
                Ok(Some(m)) => on_message(&m),
                Ok(None) => break Ok(()),
                Err(status) => break Err(ClientError::Status(status)),
            },
            Some(e) = err_rx.recv() => break Err(ClientError::Source(e)),
        }
    };
    drop(inbound);
    drop(reader);
    result
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
