//! Live capture for `avlm camera`: opens camera and microphone devices (or
//! any FFmpeg input), decodes them, converts the audio to 16 kHz mono PCM
//! and the video to scaled-down Motion JPEG, and muxes a live Matroska
//! stream that leaves in chunks as it is written.
//!
//! Each input is read on its own thread (a camera and a microphone block on
//! their own clocks); packets meet in one muxer on the calling thread. A
//! stop flag ends the capture cleanly: blocked device reads are interrupted,
//! decoders and encoders are drained and the Matroska trailer is written, so
//! the server sees a normal end of stream and flushes its last results.

use std::ffi::{c_int, c_void, CString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Duration, Instant};

use ffmpeg::format::{self, Pixel};
use ffmpeg::software::scaling;
use ffmpeg::{codec, encoder, frame, ChannelLayout, Packet, Rational};
use ffmpeg_next as ffmpeg;
use tokio::sync::mpsc;

use crate::client::ChunkWriter;
use crate::media::resample::ToMono16k;

/// One FFmpeg input: a device, a file, a URL or a lavfi graph.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptureInput {
    pub url: String,
    /// FFmpeg input format (`v4l2`, `alsa`, `pulse`, `avfoundation`,
    /// `dshow`, `lavfi`, ...); probed when absent.
    pub format: Option<String>,
    /// Input options such as `video_size` or `framerate`.
    pub options: Vec<(String, String)>,
}

/// What to capture and how to code it.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptureSpec {
    pub inputs: Vec<CaptureInput>,
    /// Audio is required: capture fails when no input has an audio stream.
    pub audio: bool,
    /// Video is sent when an input has it.
    pub video: bool,
    /// Frames wider than this are scaled down (keeping the aspect ratio).
    pub max_width: u32,
    /// Frames closer together than 1/max_fps are dropped.
    pub max_fps: f64,
}

const AUDIO_RATE: i32 = avlm_encoders::SAMPLE_RATE as i32;
/// MJPEG quantiser (2 best – 31 worst) and FFmpeg's lambda scale for it.
const JPEG_QSCALE: i32 = 5;
const FF_QP2LAMBDA: i32 = 118;

/// Formats that deliver data on their own clock; everything else (files,
/// URLs, lavfi) is paced to its timestamps, as a live source would be.
fn is_device(format: Option<&str>) -> bool {
    matches!(
        format,
        Some(
            "v4l2"
                | "video4linux2"
                | "alsa"
                | "pulse"
                | "jack"
                | "oss"
                | "avfoundation"
                | "dshow"
                | "vfwcap"
                | "gdigrab"
                | "x11grab"
                | "kmsgrab"
                | "fbdev"
        )
    )
}

enum Msg {
    Packet(Packet),
    Failed(String),
}

/// Captures until every input ends or `stop` is set, sending the Matroska
/// bytes in chunks of `chunk` bytes.
pub fn capture(
    spec: &CaptureSpec,
    chunk: usize,
    stop: Arc<AtomicBool>,
    tx: &mpsc::Sender<Result<Vec<u8>, String>>,
) -> Result<(), String> {
    let mut opened = open_all(spec, &stop)?;
    // An input none of whose streams is used is not read at all.
    opened.retain(|o| o.audio.is_some() || o.video.is_some());
    let writer = ChunkWriter::new(tx.clone(), chunk);
    let io = format::context::StreamIo::from_write_with_capacity(writer, 4096)
        .map_err(|e| e.to_string())?;
    let mut octx =
        format::output_to_stream(io, None, Some("matroska")).map_err(|e| e.to_string())?;
    let mut next_out = 0;
    for o in &mut opened {
        if let Some(a) = &mut o.audio {
            let mut ost = octx
                .add_stream(encoder::find(codec::Id::PCM_S16LE))
                .map_err(|e| e.to_string())?;
            ost.set_parameters(&a.encoder);
            ost.set_time_base(Rational(1, AUDIO_RATE));
            a.out = next_out;
            next_out += 1;
        }
        if let Some(v) = &mut o.video {
            let mut ost = octx
                .add_stream(encoder::find(codec::Id::MJPEG))
                .map_err(|e| e.to_string())?;
            ost.set_parameters(&v.encoder);
            ost.set_time_base(Rational(1, 1000));
            v.out = next_out;
            next_out += 1;
        }
    }
    let mut opts = ffmpeg::Dictionary::new();
    opts.set("live", "1");
    opts.set("cluster_time_limit", "250");
    opts.set("flush_packets", "1");
    // SAFETY: a plain field of our own output context, set before the
    // header; it bounds how long the interleaver waits for a stalled stream.
    unsafe {
        (*octx.as_mut_ptr()).max_interleave_delta = 500_000;
    }
    octx.write_header_with(opts)
        .map_err(|e| format!("cannot start the Matroska stream: {e}"))?;
    let out_bases: Vec<Rational> = (0..next_out)
        .map(|i| {
            octx.stream(i)
                .map(|s| s.time_base())
                .unwrap_or(Rational(1, 1000))
        })
        .collect();

    let start = Instant::now();
    let several = opened.len() > 1;
    let (msg_tx, msg_rx) = std_mpsc::sync_channel::<Msg>(64);
    let mut threads = Vec::new();
    for o in opened {
        let msg_tx = msg_tx.clone();
        let stop = stop.clone();
        let out_bases = out_bases.clone();
        let max_fps = spec.max_fps;
        let label = o.label.clone();
        let thread = std::thread::Builder::new()
            .name("avlm-capture".into())
            .spawn(move || {
                let mut reader = Reader::new(o, start, several, max_fps, &out_bases);
                if let Err(e) = reader.run(&stop, &msg_tx) {
                    let _ = msg_tx.send(Msg::Failed(format!("{label}: {e}")));
                }
            })
            .map_err(|e| e.to_string())?;
        threads.push(thread);
    }
    drop(msg_tx);

    let mut failure = None;
    for msg in msg_rx {
        match msg {
            Msg::Packet(packet) => {
                if packet.write_interleaved(&mut octx).is_err() {
                    // The stream is gone (the server ended it): stop reading.
                    stop.store(true, Ordering::Relaxed);
                    break;
                }
            }
            Msg::Failed(e) => {
                failure.get_or_insert(e);
                stop.store(true, Ordering::Relaxed);
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let _ = octx.write_trailer();
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Opens `spec`'s inputs and checks there is something to send, then closes
/// them: for reporting a wrong device or file before any model is loaded.
pub fn check(spec: &CaptureSpec) -> Result<(), String> {
    let open = || open_all(spec, &Arc::new(AtomicBool::new(false))).map(drop);
    if spec.inputs.iter().any(|i| is_device(i.format.as_deref())) {
        without_stderr(open)
    } else {
        open()
    }
}

/// Runs `f` with the process's stderr sent to /dev/null. Device libraries
/// print their own diagnostics there (ALSA writes a dozen "ALSA lib ..."
/// lines for a missing card) while FFmpeg returns the error that matters.
#[cfg(unix)]
fn without_stderr<T>(f: impl FnOnce() -> T) -> T {
    use std::os::fd::AsRawFd;
    let null = std::fs::OpenOptions::new().write(true).open("/dev/null");
    // SAFETY: dup, dup2 and close on this process's own descriptors;
    // stderr is put back before returning.
    let saved = unsafe { libc::dup(2) };
    let swapped = match &null {
        Ok(null) if saved >= 0 => (unsafe { libc::dup2(null.as_raw_fd(), 2) }) >= 0,
        _ => false,
    };
    let out = f();
    if swapped {
        // SAFETY: as above; `saved` is a descriptor this function opened.
        unsafe { libc::dup2(saved, 2) };
    }
    if saved >= 0 {
        // SAFETY: as above.
        unsafe { libc::close(saved) };
    }
    out
}

#[cfg(not(unix))]
fn without_stderr<T>(f: impl FnOnce() -> T) -> T {
    f()
}

/// Opens every input and picks the first audio and the first video stream.
fn open_all(spec: &CaptureSpec, stop: &Arc<AtomicBool>) -> Result<Vec<Opened>, String> {
    crate::media::container::init_ffmpeg().map_err(|e| e.to_string())?;
    ffmpeg::device::register_all();
    if spec.inputs.is_empty() {
        return Err("nothing to capture: no input given".into());
    }

    let mut opened = Vec::new();
    let (mut have_audio, mut have_video) = (false, false);
    for input in &spec.inputs {
        let mut o = Opened::open(input, stop)?;
        if spec.audio && !have_audio {
            o.audio = AudioPath::new(&o.ctx)?;
            have_audio = o.audio.is_some();
        }
        if spec.video && !have_video {
            o.video = VideoPath::new(&o.ctx, spec)?;
            have_video = o.video.is_some();
        }
        opened.push(o);
    }
    if spec.audio && !have_audio {
        let names: Vec<_> = spec.inputs.iter().map(|i| i.url.as_str()).collect();
        return Err(format!(
            "no audio stream in {}: a microphone or a source with sound is needed",
            names.join(", ")
        ));
    }
    if !have_audio && !have_video {
        return Err("the inputs have no audio or video stream".into());
    }

    Ok(opened)
}

/// An input opened with an interrupt callback tied to the stop flag.
struct Opened {
    ctx: format::context::Input,
    label: String,
    paced: bool,
    audio: Option<AudioPath>,
    video: Option<VideoPath>,
    // Read by the interrupt callback; dropped after `ctx` (field order).
    _flag: Arc<AtomicBool>,
}

unsafe extern "C" fn interrupted(opaque: *mut c_void) -> c_int {
    // SAFETY: `opaque` points at the flag kept alive by the `Opened` that
    // owns the context calling us.
    let flag = unsafe { &*(opaque as *const AtomicBool) };
    c_int::from(flag.load(Ordering::Relaxed))
}

impl Opened {
    fn open(input: &CaptureInput, stop: &Arc<AtomicBool>) -> Result<Opened, String> {
        let label = match &input.format {
            Some(f) => format!("{} ({f})", input.url),
            None => input.url.clone(),
        };
        let url = CString::new(input.url.as_str())
            .map_err(|_| format!("{label}: the name contains a NUL byte"))?;
        let fmt = match &input.format {
            Some(f) => {
                let name =
                    CString::new(f.as_str()).map_err(|_| format!("bad input format {f:?}"))?;
                // SAFETY: returns a static format description or null.
                let p = unsafe { ffmpeg::ffi::av_find_input_format(name.as_ptr()) };
                if p.is_null() {
                    return Err(format!(
                        "FFmpeg has no input format {f:?} (is libavdevice built with it?)"
                    ));
                }
                p
            }
            None => std::ptr::null(),
        };
        let flag = stop.clone();
        let mut options = ffmpeg::Dictionary::new();
        for (k, v) in &input.options {
            options.set(k, v);
        }
        // SAFETY: the standard FFmpeg open sequence. The context is allocated
        // here so the interrupt callback is in place before the (possibly
        // blocking) open; avformat_open_input frees it on failure. The
        // callback's opaque pointer stays valid: `Opened` holds a reference
        // to the flag and drops it after the context.
        unsafe {
            let mut ps = ffmpeg::ffi::avformat_alloc_context();
            if ps.is_null() {
                return Err("out of memory".into());
            }
            (*ps).interrupt_callback = ffmpeg::ffi::AVIOInterruptCB {
                callback: Some(interrupted),
                opaque: Arc::as_ptr(&flag) as *mut c_void,
            };
            let mut raw_opts = options.disown();
            let r = ffmpeg::ffi::avformat_open_input(&mut ps, url.as_ptr(), fmt, &mut raw_opts);
            let unused = ffmpeg::Dictionary::own(raw_opts);
            if r < 0 {
                return Err(format!("cannot open {label}: {}", ffmpeg::Error::from(r)));
            }
            for (k, _) in unused.iter() {
                tracing::warn!("{label}: input option {k} was not used");
            }
            let r = ffmpeg::ffi::avformat_find_stream_info(ps, std::ptr::null_mut());
            if r < 0 {
                ffmpeg::ffi::avformat_close_input(&mut ps);
                return Err(format!(
                    "cannot read the streams of {label}: {}",
                    ffmpeg::Error::from(r)
                ));
            }
            Ok(Opened {
                ctx: format::context::Input::wrap(ps),
                label,
                paced: !is_device(input.format.as_deref()),
                audio: None,
                video: None,
                _flag: flag,
            })
        }
    }
}

struct AudioPath {
    index: usize,
    decoder: ffmpeg::decoder::Audio,
    encoder: encoder::audio::Encoder,
    out: usize,
}

impl AudioPath {
    fn new(ctx: &format::context::Input) -> Result<Option<AudioPath>, String> {
        let Some(ist) = ctx.streams().best(ffmpeg::media::Type::Audio) else {
            return Ok(None);
        };
        let decoder = codec::context::Context::from_parameters(ist.parameters())
            .and_then(|c| c.decoder().audio())
            .map_err(|e| format!("cannot decode the audio: {e}"))?;
        let codec = encoder::find(codec::Id::PCM_S16LE).ok_or("FFmpeg has no PCM encoder")?;
        let mut enc = codec::context::Context::new_with_codec(codec)
            .encoder()
            .audio()
            .map_err(|e| e.to_string())?;
        enc.set_rate(AUDIO_RATE);
        enc.set_format(format::Sample::I16(format::sample::Type::Packed));
        enc.set_channel_layout(ChannelLayout::MONO);
        enc.set_channels(1);
        enc.set_time_base(Rational(1, AUDIO_RATE));
        let encoder = enc
            .open_as(codec)
            .map_err(|e| format!("cannot open the PCM encoder: {e}"))?;
        Ok(Some(AudioPath {
            index: ist.index(),
            decoder,
            encoder,
            out: 0,
        }))
    }
}

struct VideoPath {
    index: usize,
    decoder: ffmpeg::decoder::Video,
    encoder: encoder::video::Encoder,
    out: usize,
    width: u32,
    height: u32,
}

impl VideoPath {
    fn new(ctx: &format::context::Input, spec: &CaptureSpec) -> Result<Option<VideoPath>, String> {
        let Some(ist) = ctx.streams().best(ffmpeg::media::Type::Video) else {
            return Ok(None);
        };
        let decoder = codec::context::Context::from_parameters(ist.parameters())
            .and_then(|c| c.decoder().video())
            .map_err(|e| format!("cannot decode the video: {e}"))?;
        let (w, h) = (decoder.width(), decoder.height());
        if w == 0 || h == 0 {
            return Err("the video stream has no frame size".into());
        }
        let (width, height) = output_size(w, h, spec.max_width);
        let codec = encoder::find(codec::Id::MJPEG).ok_or("FFmpeg has no MJPEG encoder")?;
        let mut enc = codec::context::Context::new_with_codec(codec)
            .encoder()
            .video()
            .map_err(|e| e.to_string())?;
        enc.set_width(width);
        enc.set_height(height);
        enc.set_format(Pixel::YUVJ420P);
        enc.set_time_base(Rational(1, 1000));
        enc.set_flags(codec::Flags::QSCALE);
        enc.set_global_quality(JPEG_QSCALE * FF_QP2LAMBDA);
        let encoder = enc
            .open_as(codec)
            .map_err(|e| format!("cannot open the MJPEG encoder: {e}"))?;
        Ok(Some(VideoPath {
            index: ist.index(),
            decoder,
            encoder,
            out: 0,
            width,
            height,
        }))
    }
}

/// The size a `w`×`h` frame is coded at: at most `max_width` wide, aspect
/// kept, both sides even (4:2:0 chroma).
pub fn output_size(w: u32, h: u32, max_width: u32) -> (u32, u32) {
    let max_width = max_width.max(2);
    let (w2, h2) = if w > max_width {
        let h2 = (u64::from(h) * u64::from(max_width) / u64::from(w)) as u32;
        (max_width, h2)
    } else {
        (w, h)
    };
    ((w2 & !1).max(2), (h2 & !1).max(2))
}

/// The per-input thread: read, decode, convert, encode, hand to the muxer.
struct Reader {
    o: Opened,
    start: Instant,
    several: bool,
    min_gap_ms: i64,
    audio_base: Rational,
    video_base: Rational,
    /// Milliseconds from the capture's start to this input's first packet.
    offset_ms: Option<i64>,
    /// This input's first packet timestamp, in seconds (the pacing origin).
    first_ts: Option<f64>,
    samples: i64,
    resampler: ToMono16k,
    pcm: Vec<f32>,
    scaler: Option<scaling::Context>,
    first_video_ts: Option<i64>,
    last_video_ms: Option<i64>,
}

impl Reader {
    fn new(o: Opened, start: Instant, several: bool, max_fps: f64, bases: &[Rational]) -> Self {
        let base = |p: Option<usize>| {
            p.and_then(|i| bases.get(i).copied())
                .unwrap_or(Rational(1, 1000))
        };
        let audio_base = base(o.audio.as_ref().map(|a| a.out));
        let video_base = base(o.video.as_ref().map(|v| v.out));
        Reader {
            o,
            start,
            several,
            min_gap_ms: if max_fps > 0.0 {
                (1000.0 / max_fps).floor() as i64
            } else {
                0
            },
            audio_base,
            video_base,
            offset_ms: None,
            first_ts: None,
            samples: 0,
            resampler: ToMono16k::default(),
            pcm: Vec::new(),
            scaler: None,
            first_video_ts: None,
            last_video_ms: None,
        }
    }

    fn run(&mut self, stop: &AtomicBool, tx: &std_mpsc::SyncSender<Msg>) -> Result<(), String> {
        let audio_index = self.o.audio.as_ref().map(|a| a.index);
        let video_index = self.o.video.as_ref().map(|v| v.index);
        while !stop.load(Ordering::Relaxed) {
            let mut packet = Packet::empty();
            match packet.read(&mut self.o.ctx) {
                Ok(()) => {}
                Err(ffmpeg::Error::Eof | ffmpeg::Error::Exit) => break,
                Err(ffmpeg::Error::Other { errno }) if errno == ffmpeg::ffi::EAGAIN => {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                Err(e) => {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    return Err(format!("reading failed: {e}"));
                }
            }
            let index = packet.stream();
            if Some(index) != audio_index && Some(index) != video_index {
                continue;
            }
            if self.offset_ms.is_none() {
                self.offset_ms = Some(if self.several {
                    self.start.elapsed().as_millis() as i64
                } else {
                    0
                });
            }
            if self.o.paced {
                self.pace(&packet, stop);
            }
            if Some(index) == audio_index {
                self.audio_packet(Some(&packet), tx)?;
            } else {
                self.video_packet(Some(&packet), tx)?;
            }
        }
        // Drain what the decoders and encoders still hold.
        if audio_index.is_some() {
            self.audio_packet(None, tx)?;
        }
        if video_index.is_some() {
            self.video_packet(None, tx)?;
        }
        Ok(())
    }

    /// Sleeps until the packet's time has come, measured from the input's
    /// first timestamp (what `ffmpeg -re` does).
    fn pace(&mut self, packet: &Packet, stop: &AtomicBool) {
        let Some(ts) = packet.dts().or(packet.pts()) else {
            return;
        };
        let Some(stream) = self.o.ctx.stream(packet.stream()) else {
            return;
        };
        let t = ts as f64 * f64::from(stream.time_base());
        let t0 = *self.first_ts.get_or_insert(t);
        let due = self.start + Duration::from_millis(self.offset_ms.unwrap_or(0) as u64);
        let due = due + Duration::from_secs_f64((t - t0).clamp(0.0, 86_400.0));
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= due {
                break;
            }
            std::thread::sleep((due - now).min(Duration::from_millis(50)));
        }
    }

    fn audio_packet(
        &mut self,
        packet: Option<&Packet>,
        tx: &std_mpsc::SyncSender<Msg>,
    ) -> Result<(), String> {
        let Some(a) = self.o.audio.as_mut() else {
            return Ok(());
        };
        match packet {
            Some(p) => {
                // A packet that fails to decode is skipped, as players do.
                if a.decoder.send_packet(p).is_err() {
                    return Ok(());
                }
            }
            None => {
                let _ = a.decoder.send_eof();
            }
        }
        let mut decoded = frame::Audio::empty();
        while a.decoder.receive_frame(&mut decoded).is_ok() {
            self.resampler
                .push(&decoded, &mut self.pcm)
                .map_err(|e| e.to_string())?;
        }
        if packet.is_none() {
            self.resampler.flush(&mut self.pcm);
        }
        if self.samples == 0 {
            self.samples = self.offset_ms.unwrap_or(0) * i64::from(AUDIO_RATE) / 1000;
        }
        if !self.pcm.is_empty() {
            let n = self.pcm.len();
            let mut f = frame::Audio::new(
                format::Sample::I16(format::sample::Type::Packed),
                n,
                ChannelLayout::MONO,
            );
            f.set_rate(AUDIO_RATE as u32);
            let data = f.data_mut(0);
            for (i, x) in self.pcm.drain(..).enumerate() {
                let s = (x.clamp(-1.0, 1.0) * 32767.0).round() as i16;
                data[2 * i..2 * i + 2].copy_from_slice(&s.to_le_bytes());
            }
            f.set_pts(Some(self.samples));
            self.samples += n as i64;
            a.encoder
                .send_frame(&f)
                .map_err(|e| format!("PCM encoding failed: {e}"))?;
        }
        if packet.is_none() {
            let _ = a.encoder.send_eof();
        }
        let out = a.out;
        let base = self.audio_base;
        let mut encoded = Packet::empty();
        while a.encoder.receive_packet(&mut encoded).is_ok() {
            encoded.rescale_ts(Rational(1, AUDIO_RATE), base);
            encoded.set_stream(out);
            encoded.set_position(-1);
            let p = std::mem::replace(&mut encoded, Packet::empty());
            tx.send(Msg::Packet(p))
                .map_err(|_| "the muxer stopped".to_string())?;
        }
        Ok(())
    }

    fn video_packet(
        &mut self,
        packet: Option<&Packet>,
        tx: &std_mpsc::SyncSender<Msg>,
    ) -> Result<(), String> {
        let Some(v) = self.o.video.as_mut() else {
            return Ok(());
        };
        let in_base = self
            .o
            .ctx
            .stream(v.index)
            .map(|s| s.time_base())
            .unwrap_or(Rational(1, 1000));
        match packet {
            Some(p) => {
                if v.decoder.send_packet(p).is_err() {
                    return Ok(());
                }
            }
            None => {
                let _ = v.decoder.send_eof();
            }
        }
        let mut decoded = frame::Video::empty();
        while v.decoder.receive_frame(&mut decoded).is_ok() {
            let Some(ts) = decoded.timestamp().or(decoded.pts()) else {
                continue;
            };
            let first = *self.first_video_ts.get_or_insert(ts);
            let ms = ((ts - first) as f64 * f64::from(in_base) * 1000.0).round() as i64
                + self.offset_ms.unwrap_or(0);
            if let Some(last) = self.last_video_ms {
                if ms < last + self.min_gap_ms.max(1) {
                    continue;
                }
            }
            self.last_video_ms = Some(ms);
            let key = (decoded.format(), decoded.width(), decoded.height());
            if self.scaler.is_none() {
                self.scaler = Some(
                    scaling::Context::get(
                        key.0,
                        key.1,
                        key.2,
                        Pixel::YUVJ420P,
                        v.width,
                        v.height,
                        scaling::Flags::BILINEAR,
                    )
                    .map_err(|e| format!("cannot set up the scaler: {e}"))?,
                );
            }
            let Some(scaler) = self.scaler.as_mut() else {
                continue;
            };
            let mut scaled = frame::Video::empty();
            if scaler.run(&decoded, &mut scaled).is_err() {
                // The camera changed its frame size: set up again next frame.
                self.scaler = None;
                continue;
            }
            scaled.set_pts(Some(ms));
            // SAFETY: a plain field of our own frame; with QSCALE the encoder
            // takes each frame's quantiser from it.
            unsafe {
                (*scaled.as_mut_ptr()).quality = JPEG_QSCALE * FF_QP2LAMBDA;
            }
            v.encoder
                .send_frame(&scaled)
                .map_err(|e| format!("MJPEG encoding failed: {e}"))?;
            drain_video(v, self.video_base, tx)?;
        }
        if packet.is_none() {
            let _ = v.encoder.send_eof();
            drain_video(v, self.video_base, tx)?;
        }
        Ok(())
    }
}

fn drain_video(
    v: &mut VideoPath,
    base: Rational,
    tx: &std_mpsc::SyncSender<Msg>,
) -> Result<(), String> {
    let mut encoded = Packet::empty();
    while v.encoder.receive_packet(&mut encoded).is_ok() {
        encoded.rescale_ts(Rational(1, 1000), base);
        encoded.set_stream(v.out);
        encoded.set_position(-1);
        let p = std::mem::replace(&mut encoded, Packet::empty());
        tx.send(Msg::Packet(p))
            .map_err(|_| "the muxer stopped".to_string())?;
    }
    Ok(())
}

/// Capture devices FFmpeg can list for `format` (e.g. `v4l2`, `alsa`,
/// `pulse`): (name, description) pairs.
pub fn list_devices(format: &str) -> Result<Vec<(String, String)>, String> {
    without_stderr(|| list_devices_of(format))
}

fn list_devices_of(format: &str) -> Result<Vec<(String, String)>, String> {
    crate::media::container::init_ffmpeg().map_err(|e| e.to_string())?;
    ffmpeg::device::register_all();
    let name = CString::new(format).map_err(|_| format!("bad format {format:?}"))?;
    // SAFETY: FFmpeg's device listing; the list is freed before returning
    // and every string is copied out first.
    unsafe {
        let fmt = ffmpeg::ffi::av_find_input_format(name.as_ptr());
        if fmt.is_null() {
            return Err(format!("FFmpeg has no input format {format:?}"));
        }
        let mut list: *mut ffmpeg::ffi::AVDeviceInfoList = std::ptr::null_mut();
        let r = ffmpeg::ffi::avdevice_list_input_sources(
            fmt as *mut _,
            std::ptr::null(),
            std::ptr::null_mut(),
            &mut list,
        );
        if r < 0 {
            return Err(ffmpeg::Error::from(r).to_string());
        }
        let mut out = Vec::new();
        if !list.is_null() {
            let n = (*list).nb_devices.max(0) as usize;
            for i in 0..n {
                let d = *(*list).devices.add(i);
                if d.is_null() {
                    continue;
                }
                let s = |p: *const std::ffi::c_char| {
                    if p.is_null() {
                        String::new()
                    } else {
                        std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
                    }
                };
                out.push((s((*d).device_name), s((*d).device_description)));
            }
            ffmpeg::ffi::avdevice_free_list_devices(&mut list);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_scaled_to_even_sizes_within_the_width() {
        assert_eq!(output_size(1920, 1080, 640), (640, 360));
        assert_eq!(output_size(320, 240, 640), (320, 240));
        assert_eq!(output_size(641, 481, 640), (640, 480));
        assert_eq!(output_size(333, 201, 640), (332, 200));
        assert_eq!(output_size(1, 1, 640), (2, 2));
    }

    #[test]
    fn devices_are_not_paced_files_and_lavfi_are() {
        assert!(is_device(Some("v4l2")));
        assert!(is_device(Some("pulse")));
        assert!(!is_device(Some("lavfi")));
        assert!(!is_device(None));
    }
}
