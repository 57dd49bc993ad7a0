//! Demuxing and decoding container bytes as they arrive, with FFmpeg reading
//! from the session's byte pipe through custom I/O.

use std::sync::atomic::Ordering;
use std::sync::Once;

use ffmpeg::format::context::StreamIo;
use ffmpeg::media::Type as MediaType;
use ffmpeg::{codec, frame, Dictionary, Packet, Rational};
use ffmpeg_next as ffmpeg;

use super::formats;
use super::pipe::{Head, PipeAbort, PipeRead, PipeReader};
use super::resample::ToMono16k;
use super::video::{RateGate, VideoConverter};
use super::{wav, DecodeSpec, MediaError, MediaItem, MediaSink, AUDIO_RATE};
use avlm_encoders::Pcm;

/// Longest a video frame is taken to stay on screen: a longer wait for the
/// next frame is a gap in the stream (its frames are not repeated for it).
const MAX_FRAME_HOLD_S: f64 = 10.0;

/// FFmpeg's I/O buffer: small, so live streams are not held back waiting to fill it.
const IO_BUFFER: usize = 4096;
/// Most bytes one read of FFmpeg's I/O takes from the pipe (see [`cap_reads`]).
const MAX_READ: std::ffi::c_int = 64 * 1024;
/// Longest hole in the audio timestamps filled with silence.
const MAX_GAP_S: f64 = 60.0;
/// Bytes FFmpeg may read to guess the format and its streams.
const PROBE_BYTES: u32 = 262_144;
/// Consecutive packets that fail to decode before the stream is rejected.
const MAX_BAD_PACKETS: u32 = 64;
/// A read error this close to the end of a finished stream ends it.
const MAX_BAD_TAIL: u64 = 64 * 1024;
/// EAGAIN answers in a row, with no byte read in between, before the stream
/// is rejected.
const MAX_STALLED_RETRIES: u32 = 1000;

static INIT: Once = Once::new();

pub fn init_ffmpeg() -> Result<(), MediaError> {
    let mut result = Ok(());
    INIT.call_once(|| {
        if let Err(e) = ffmpeg::init() {
            result = Err(MediaError::Internal(format!(
                "FFmpeg failed to initialise: {e}"
            )));
        }
        // Failures reach clients as statuses; FFmpeg's own log would only
        // interleave unattributed lines with the server's.
        ffmpeg::util::log::set_level(ffmpeg::util::log::Level::Fatal);
    });
    result
}

/// Media times on one timeline starting at the stream's first timestamp.
struct Clock {
    origin: Option<f64>,
}

impl Clock {
    fn seconds(&mut self, ts: Option<i64>, base: Rational) -> Option<f64> {
        let ts = ts?;
        let s = ts as f64 * f64::from(base);
        let origin = *self.origin.get_or_insert(s);
        Some(s - origin)
    }
}

/// Continuous 16 kHz audio timeline: samples are counted, and a gap in the
/// source's timestamps is filled with silence so times stay right.
struct AudioTimeline {
    start_s: Option<f64>,
    emitted: u64,
}

impl AudioTimeline {
    fn now(&self) -> f64 {
        self.start_s.unwrap_or(0.0) + self.emitted as f64 / f64::from(AUDIO_RATE)
    }
}

/// `avformat_open_input` and, with `find_info`, `avformat_find_stream_info`
/// over custom I/O, with the demuxer named by `format` when given
/// (ffmpeg-next's `input_from_stream` always probes).
fn open_input<F: FnMut() -> bool + Send + 'static>(
    mut io: StreamIo,
    format: Option<&str>,
    find_info: bool,
    options: Dictionary,
    interrupted: F,
) -> Result<ffmpeg::format::context::Input, ffmpeg::Error> {
    use ffmpeg::ffi;
    let demuxer = match format {
        None => std::ptr::null(),
        Some(name) => {
            let name = std::ffi::CString::new(name).map_err(|_| ffmpeg::Error::InvalidData)?;
            // SAFETY: a NUL-terminated name; FFmpeg returns static data or null.
            let found = unsafe { ffi::av_find_input_format(name.as_ptr()) };
            if found.is_null() {
                return Err(ffmpeg::Error::DemuxerNotFound);
            }
            found
        }
    };
    // SAFETY: the context is allocated here and handed to FFmpeg's open,
    // which frees it on failure (our custom I/O stays ours, dropped with
    // `io`); on success `Input` owns both, and the interrupt guard keeps the
    // callback's closure alive as long as the context.
    unsafe {
        let mut ctx = ffi::avformat_alloc_context();
        if ctx.is_null() {
            return Err(ffmpeg::Error::Other { errno: ffi::ENOMEM });
        }
        let interrupt = ffmpeg::util::interrupt::new(Box::new(interrupted));
        (*ctx).interrupt_callback = interrupt.interrupt;
        (*ctx).pb = io.as_mut_ptr();
        (*ctx).flags |= ffi::AVFMT_FLAG_CUSTOM_IO;
        let mut opts = options.disown();
        let opened = ffi::avformat_open_input(&mut ctx, std::ptr::null(), demuxer, &mut opts);
        Dictionary::own(opts);
        if opened < 0 {
            return Err(ffmpeg::Error::from(opened));
        }
        let found = if find_info {
            ffi::avformat_find_stream_info(ctx, std::ptr::null_mut())
        } else {
            0
        };
        if found < 0 {
            ffi::avformat_close_input(&mut ctx);
            return Err(ffmpeg::Error::from(found));
        }
        Ok(
            ffmpeg::format::context::Input::wrap_with_custom_io_and_interrupt(
                ctx,
                io,
                interrupt.guard,
            ),
        )
    }
}

/// FFmpeg's custom I/O read callback.
type ReadPacket =
    unsafe extern "C" fn(*mut std::ffi::c_void, *mut u8, std::ffi::c_int) -> std::ffi::c_int;

/// ffmpeg-next's read callback for our pipe's reader type, which
/// [`capped_read`] hands every read to.
static STAGED_READ: std::sync::OnceLock<ReadPacket> = std::sync::OnceLock::new();

/// Hands FFmpeg's read to ffmpeg-next's callback, for at most [`MAX_READ`]
/// bytes; FFmpeg reads on in a loop for the rest.
unsafe extern "C" fn capped_read(
    opaque: *mut std::ffi::c_void,
    buf: *mut u8,
    size: std::ffi::c_int,
) -> std::ffi::c_int {
    match STAGED_READ.get() {
        // SAFETY: the callback FFmpeg was given for this context, with its
        // own opaque and a prefix of FFmpeg's buffer.
        Some(read) => unsafe { read(opaque, buf, size.min(MAX_READ)) },
        None => ffmpeg::ffi::AVERROR(ffmpeg::ffi::EIO),
    }
}

/// Bounds what one read may cost. FFmpeg reads a box or chunk whose size
/// the file claims straight into the demuxer's memory in one read of that
/// size, and ffmpeg-next's read callback stages each read through a buffer
/// as large as the read, zero-filled as it grows: a 95 KB MP4 whose first
/// box claimed 2 GB had 2 GB of memory written before it was refused. With
/// reads capped the staging buffer stays at [`MAX_READ`], and the memory a
/// stream costs follows the bytes it sent.
fn cap_reads(io: &mut StreamIo) -> Result<(), MediaError> {
    let ctx = io.as_mut_ptr();
    // SAFETY: `ctx` is the live context `io` owns; only its read callback is
    // swapped, for one that calls the original with the same opaque.
    unsafe {
        let Some(staged) = (*ctx).read_packet else {
            return Err(MediaError::Internal(
                "FFmpeg I/O without a read callback".into(),
            ));
        };
        // One reader type reaches here, so one callback: another would be a
        // different stream type, which `capped_read` must not be handed.
        if *STAGED_READ.get_or_init(|| staged) as usize != staged as usize {
            return Err(MediaError::Internal(
                "FFmpeg I/O with an unexpected read callback".into(),
            ));
        }
        (*ctx).read_packet = Some(capped_read);
    }
    Ok(())
}

pub fn decode(
    spec: &DecodeSpec,
    format_hint: Option<&str>,
    audio_track: Option<u32>,
    reader: PipeReader,
    sink: MediaSink,
) -> Result<(), MediaError> {
    let cpu_start = super::thread_cpu_time();
    let abort: PipeAbort = reader.abort_handle();
    let flush_sink = sink.clone();
    let head = Head::new(PROBE_BYTES as usize);
    let read = PipeRead {
        reader,
        on_flush: move || {
            let _ = flush_sink.send(MediaItem::Flush);
        },
        head: head.clone(),
    };
    // A PCM WAV is read past its header as headerless samples (wav.rs).
    let (read, pcm_wav) = if matches!(format_hint, None | Some("wav")) {
        wav::sniff(read).map_err(|e| {
            if abort.is_aborted() {
                MediaError::Aborted
            } else {
                MediaError::Internal(format!("reading the stream's first bytes: {e}"))
            }
        })?
    } else {
        (
            wav::Prefixed {
                prefix: Vec::new(),
                at: 0,
                inner: read,
                limit: None,
            },
            None,
        )
    };
    let mut io = StreamIo::from_read_with_capacity(read, IO_BUFFER)
        .map_err(|e| MediaError::Internal(format!("cannot set up FFmpeg I/O: {e}")))?;
    cap_reads(&mut io)?;
    let mut options = Dictionary::new();
    // Probing may only pick a container or stream that carries its media
    // inside, and no demuxer may open another file or URL (formats.rs).
    let accepted = formats::whitelist();
    // Headerless samples (a PCM WAV past its header, or G.711 named by its
    // hint: 8 kHz mono, where FFmpeg's headerless demuxers assume 44.1 kHz)
    // have all their parameters from the start: reading ahead to find them
    // (1 s, analyzeduration) would only delay a live stream.
    let headerless = match (&pcm_wav, format_hint) {
        (Some(w), _) => Some((w.demuxer, w.sample_rate, w.channels)),
        (None, Some(g711 @ ("mulaw" | "alaw"))) => Some((g711, 8000, 1)),
        _ => None,
    };
    let format_hint = match headerless {
        Some((demuxer, rate, channels)) => {
            options.set("sample_rate", &rate.to_string());
            // FFmpeg 5.1's `ch_layout` refuses counts with no default
            // layout (9, 12, ...); its `channels` takes any.
            options.set("channels", &channels.to_string());
            Some(demuxer)
        }
        None => format_hint,
    };
    options.set("format_whitelist", format_hint.unwrap_or(&accepted));
    options.set("protocol_whitelist", formats::NO_PROTOCOLS);
    // Live input: don't sit on seconds of media before the first output.
    options.set("analyzeduration", "1000000");
    options.set("probesize", &PROBE_BYTES.to_string());
    let interrupt_abort = abort.clone();
    // One demuxer named: use it, as probing never picks demuxers that have
    // no probe (G.711, G.722, ...); several: probe among them.
    let forced = format_hint.filter(|h| !h.contains(','));
    let opened = open_input(io, forced, headerless.is_none(), options, move || {
        interrupt_abort.is_aborted()
    });
    let mut input = match opened {
        Ok(input) => {
            head.take();
            input
        }
        Err(_) if abort.is_aborted() => return Err(MediaError::Aborted),
        // The client ended the stream without sending any media: nothing to do.
        Err(_) if abort.is_closed() && abort.bytes_read() == 0 => return Ok(()),
        Err(e) => {
            return open_failed(
                e,
                format_hint,
                &head.take(),
                abort.is_closed(),
                abort.bytes_written(),
            )
        }
    };
    let container = match pcm_wav {
        Some(_) => "wav".to_string(),
        None => input.format().name().to_string(),
    };

    let audio_stream = match audio_track {
        // FFmpeg's best skips an audio stream whose parameters probing did
        // not see yet (MPEG-TS audio starting after a second of video): the
        // first such stream is still the one to decode, and its decoder
        // finds the parameters in the packets.
        None => input
            .streams()
            .best(MediaType::Audio)
            .or_else(|| {
                input
                    .streams()
                    .find(|s| s.parameters().medium() == MediaType::Audio)
            })
            .map(|s| s.index()),
        Some(rank) => {
            let audio: Vec<usize> = input
                .streams()
                .filter(|s| s.parameters().medium() == MediaType::Audio)
                .map(|s| s.index())
                .collect();
            match audio.get(rank as usize) {
                Some(&i) => Some(i),
                None if spec.audio => {
                    return Err(MediaError::MissingStream(format!(
                        "container.audio_track {rank} names no audio stream: the media \
                         ({container}) has {} (they count from 0)",
                        audio.len()
                    )))
                }
                None => None,
            }
        }
    };
    let video_stream = input.streams().best(MediaType::Video).map(|s| s.index());
    if spec.audio && audio_stream.is_none() {
        return Err(MediaError::MissingStream(format!(
            "the media ({container}) has no audio stream, but the session asked for audio"
        )));
    }
    if spec.video.is_some() && video_stream.is_none() {
        return Err(MediaError::MissingStream(format!(
            "the media ({container}) has no video stream, but the session asked for video"
        )));
    }

    let open_decoder = |index: usize| -> Result<codec::decoder::Decoder, MediaError> {
        let stream = input
            .stream(index)
            .ok_or_else(|| MediaError::Internal("stream vanished".into()))?;
        let ctx = codec::context::Context::from_parameters(stream.parameters())
            .map_err(|e| MediaError::Undecodable(format!("stream {index}: {e}")))?;
        Ok(ctx.decoder())
    };
    let mut audio = match audio_stream.filter(|_| spec.audio) {
        Some(i) => Some((
            i,
            input
                .stream(i)
                .map(|s| s.time_base())
                .unwrap_or(Rational(1, 1)),
            open_decoder(i)?
                .audio()
                .map_err(|e| MediaError::Undecodable(format!("audio stream {i}: {e}")))?,
        )),
        None => None,
    };
    let mut video = match (video_stream, spec.video) {
        (Some(i), Some(vspec)) => Some((
            i,
            input
                .stream(i)
                .map(|s| s.time_base())
                .unwrap_or(Rational(1, 1)),
            open_decoder(i)?
                .video()
                .map_err(|e| MediaError::Undecodable(format!("video stream {i}: {e}")))?,
            VideoConverter::new(vspec),
            RateGate::new(vspec.fps),
            None::<(frame::Video, f64)>,
        )),
        _ => None,
    };

    // The container's own start time, when it has one, anchors media time 0
    // (MPEG-TS streams start at arbitrary clock values).
    // SAFETY: reading a plain field of the open format context.
    let start_time = unsafe { (*input.as_ptr()).start_time };
    let mut clock = Clock {
        origin: (start_time != ffmpeg::ffi::AV_NOPTS_VALUE).then(|| start_time as f64 / 1e6),
    };
    let mut timeline = AudioTimeline {
        start_s: None,
        emitted: 0,
    };
    let mut resampler = ToMono16k::default();
    let mut pcm = Vec::new();
    let mut decoded = frame::Audio::empty();
    let mut picture = frame::Video::empty();
    let mut bad_packets = 0u32;
    let mut packets = 0u64;
    // Packets of the streams the session decodes.
    let mut decoded_packets = 0u64;
    // Byte position of the last EAGAIN, and how many followed there.
    let mut again: (Option<u64>, u32) = (None, 0);

    loop {
        let mut packet = Packet::empty();
        let read = packet.read(&mut input);
        match read {
            Ok(()) => {}
            Err(ffmpeg::Error::Eof) => break,
            Err(_) if abort.is_aborted() => return Err(MediaError::Aborted),
            // The MPEG-TS demuxer (among others) answers EAGAIN after skipping
            // bytes it could not find packets in: read on, as long as reading
            // moves forward.
            Err(ffmpeg::Error::Other { errno }) if errno == ffmpeg::ffi::EAGAIN => {
                let at = abort.bytes_read();
                if again.0 == Some(at) {
                    again.1 += 1;
                    if again.1 > MAX_STALLED_RETRIES {
                        return Err(MediaError::Undecodable(format!(
                            "FFmpeg cannot read the {container} stream: it asks to retry without reading on"
                        )));
                    }
                } else {
                    again = (Some(at), 0);
                }
                continue;
            }
            Err(e) => match unread_tail(&abort, &mut input) {
                // A trailing tag the demuxer trips on (APEv2 after WavPack)
                // or a file cut a few bytes short, after media that read
                // fine: everything before it is decoded, as FFmpeg's own
                // tools do. (A demuxer that read to the end without handing
                // out a packet, or wanted to seek, read nothing usable.)
                Some(tail) if tail <= MAX_BAD_TAIL && packets > 0 && !is_seek_failure(e) => {
                    tracing::warn!(container, tail, "stopped {tail} bytes before the end: {e}");
                    break;
                }
                _ => {
                    return Err(MediaError::Undecodable(format!(
                        "FFmpeg cannot read the {container} stream: {e}{}",
                        needs_seek(e)
                    )))
                }
            },
        }
        packets += 1;
        let index = packet.stream();
        if let Some((ai, base, dec)) = audio.as_mut().filter(|(ai, ..)| *ai == index) {
            let _ = ai;
            decoded_packets += 1;
            if let Some(t) = clock.seconds(packet.pts().or(packet.dts()), *base) {
                sink.meter
                    .note_received(t + packet_duration(&packet, *base));
            }
            match dec.send_packet(&packet) {
                Ok(()) => bad_packets = 0,
                Err(e) => {
                    bad_packets += 1;
                    if bad_packets > MAX_BAD_PACKETS {
                        return Err(bad_stream("audio", dec.id(), e));
                    }
                }
            }
            drain_audio(
                dec,
                *base,
                &mut clock,
                &mut timeline,
                &mut resampler,
                &mut decoded,
                &mut pcm,
                &sink,
            )?;
        } else if let Some((_, base, dec, conv, gate, held)) =
            video.as_mut().filter(|v| v.0 == index)
        {
            decoded_packets += 1;
            if let Some(t) = clock.seconds(packet.pts().or(packet.dts()), *base) {
                sink.meter.note_received(t);
            }
            match dec.send_packet(&packet) {
                Ok(()) => bad_packets = 0,
                Err(e) => {
                    bad_packets += 1;
                    if bad_packets > MAX_BAD_PACKETS {
                        return Err(bad_stream("video", dec.id(), e));
                    }
                }
            }
            drain_video(
                dec,
                *base,
                &mut clock,
                conv,
                gate,
                held,
                &mut picture,
                &sink,
                false,
            )?;
        }
        sink.meter.note_cpu(cpu_start);
    }

    // End of input: drain decoders and converters.
    if let Some((_, base, dec)) = audio.as_mut() {
        let _ = dec.send_eof();
        drain_audio(
            dec,
            *base,
            &mut clock,
            &mut timeline,
            &mut resampler,
            &mut decoded,
            &mut pcm,
            &sink,
        )?;
        resampler.flush(&mut pcm);
        emit_audio(&mut timeline, &mut pcm, &sink)?;
    }
    if let Some((_, base, dec, conv, gate, held)) = video.as_mut() {
        let _ = dec.send_eof();
        drain_video(
            dec,
            *base,
            &mut clock,
            conv,
            gate,
            held,
            &mut picture,
            &sink,
            true,
        )?;
    }
    let described = audio.as_ref().is_none_or(|(_, _, dec)| {
        dec.id() != codec::Id::None && dec.rate() > 0 && dec.channels() > 0
    }) && video
        .as_ref()
        .is_none_or(|v| v.2.id() != codec::Id::None && v.2.width() > 0 && v.2.height() > 0);
    sink.meter.note_cpu(cpu_start);
    let emitted = timeline.emitted + sink.meter.video_frames.load(Ordering::Acquire);
    if emitted == 0 && !(decoded_packets == 0 && described) {
        return Err(MediaError::Undecodable(format!(
            "{} bytes received, but no {} could be decoded from them{}: {}",
            abort.bytes_written(),
            if spec.audio { "audio" } else { "video" },
            as_read(format_hint, &container),
            if decoded_packets == 0 {
                "the demuxer found no media packets in them, and its streams have no complete \
                 parameters (no header described them)"
            } else {
                "every packet the demuxer found decoded to nothing"
            }
        )));
    }
    Ok(())
}

/// How the bytes were read, for an error message: the hint given, or the
/// demuxer probing picked.
fn as_read(format_hint: Option<&str>, container: &str) -> String {
    match format_hint {
        Some(h) => format!(" with format hint {h:?}"),
        None => format!(" as {container}"),
    }
}

/// Whether one of the demuxer names in `hint` (a comma-separated list) is
/// one of the names of the demuxer `probed` (FFmpeg names some demuxers
/// with a list, e.g. `matroska,webm`).
fn hint_names(hint: &str, probed: &formats::Probed) -> bool {
    hint.split(',')
        .any(|h| probed.name.split(',').any(|p| p == h.trim()))
}

/// Bytes of a finished stream after the demuxer's position; `None` while the
/// client may still send more.
fn unread_tail(abort: &PipeAbort, input: &mut ffmpeg::format::context::Input) -> Option<u64> {
    if !abort.is_closed() {
        return None;
    }
    // SAFETY: the open context's I/O; a zero SEEK_CUR only reports the
    // position (avio_tell), which works on streams that cannot seek.
    let at = unsafe { ffmpeg::ffi::avio_seek((*input.as_mut_ptr()).pb, 0, ffmpeg::ffi::SEEK_CUR) };
    u64::try_from(at)
        .ok()
        .map(|at| abort.bytes_written().saturating_sub(at))
}

/// What a failed open means: an empty recording (its header and nothing
/// after it) ends the stream like an empty WAV does; anything else is an
/// error naming what the bytes looked like.
fn open_failed(
    e: ffmpeg::Error,
    format_hint: Option<&str>,
    head: &[u8],
    closed: bool,
    received: u64,
) -> Result<(), MediaError> {
    let probed = formats::probe(head);
    if let Some(p) = probed
        .as_ref()
        .filter(|p| !p.accepted() && format_hint.is_none())
    {
        return Err(MediaError::Undecodable(format!(
            "the media looks like {} ({}), which this server does not read: only audio and \
             video containers and streams are, not manifests, playlists or scripts that name \
             other files or addresses (such as DASH, HLS, SDP, ffconcat or image sequences)",
            p.long_name, p.name
        )));
    }
    // A recording's header alone (a WebM cut before its first Cluster)
    // ends the stream like an empty WAV does; but bytes of another format
    // read with a hint that names the wrong demuxer (Ogg read as MPEG-TS)
    // also run out while the demuxer still looks for its header.
    if closed && e == ffmpeg::Error::Eof {
        match (&probed, format_hint) {
            (Some(p), Some(h)) if !hint_names(h, p) => {
                return Err(MediaError::Undecodable(format!(
                    "{} bytes received, but no media could be decoded from them with format hint \
                     {h:?}: its demuxer found none before they ended, and they look like {} ({}) \
                     instead",
                    received, p.long_name, p.name
                )));
            }
            (Some(_), _) => {
                tracing::debug!(
                    bytes = head.len(),
                    "media ended inside its header: empty stream"
                );
                return Ok(());
            }
            (None, _) => {}
        }
    }
    let what = match (format_hint, &probed) {
        (Some(h), _) => format!(" as {h:?}"),
        (None, Some(p)) => format!(" (it looks like {})", p.long_name),
        (None, None) => " (it is no container or stream FFmpeg recognises)".to_string(),
    };
    Err(MediaError::Undecodable(format!(
        "FFmpeg cannot open the media{what}: {e}{}",
        needs_seek(e)
    )))
}

/// FFmpeg's "Broken pipe" here: the demuxer tried to seek, and a stream
/// cannot.
fn is_seek_failure(e: ffmpeg::Error) -> bool {
    matches!(e, ffmpeg::Error::Other { errno } if errno == ffmpeg::ffi::EPIPE)
}

/// What a seek failure means, for the error message.
fn needs_seek(e: ffmpeg::Error) -> &'static str {
    if is_seek_failure(e) {
        " (the demuxer had to seek, which a stream cannot do: data it needs comes later \
         in the file, as in an MP4 whose single fragment holds minutes of media; re-mux \
         it for streaming, e.g. as fragmented MP4 with short fragments, or WebM)"
    } else {
        ""
    }
}

/// The error for a stream whose packets keep failing to decode.
fn bad_stream(kind: &str, codec: codec::Id, e: ffmpeg::Error) -> MediaError {
    MediaError::Undecodable(format!(
        "the {kind} does not decode: {} packets in a row were refused by the {} decoder \
         (the last with: {e})",
        MAX_BAD_PACKETS + 1,
        codec.name()
    ))
}

fn packet_duration(packet: &Packet, base: Rational) -> f64 {
    packet.duration() as f64 * f64::from(base)
}

#[allow(clippy::too_many_arguments)]
fn drain_audio(
    dec: &mut ffmpeg::decoder::Audio,
    base: Rational,
    clock: &mut Clock,
    timeline: &mut AudioTimeline,
    resampler: &mut ToMono16k,
    decoded: &mut frame::Audio,
    pcm: &mut Vec<f32>,
    sink: &MediaSink,
) -> Result<(), MediaError> {
    while dec.receive_frame(decoded).is_ok() {
        let pts = clock.seconds(decoded.timestamp(), base);
        match (timeline.start_s, pts) {
            (None, p) => timeline.start_s = Some(p.unwrap_or(0.0).max(0.0)),
            (Some(_), Some(p)) => {
                // Fill a hole in the source with silence to keep media times right.
                let pending = pcm.len() as f64 / f64::from(AUDIO_RATE);
                let gap = p - (timeline.now() + pending);
                if gap > MAX_GAP_S {
                    return Err(MediaError::Undecodable(format!(
                        "audio timestamps jump forward by {gap:.1} s (at {:.1} s of media); gaps over {MAX_GAP_S} s are refused",
                        timeline.now() + pending
                    )));
                }
                if gap > 0.2 {
                    // Filled in chunks so one gap never builds a huge buffer.
                    let mut n = (gap * f64::from(AUDIO_RATE)).round() as usize;
                    while n > 0 {
                        let k = n.min(AUDIO_RATE as usize);
                        pcm.extend(std::iter::repeat_n(0.0, k));
                        emit_audio(timeline, pcm, sink)?;
                        n -= k;
                    }
                }
            }
            _ => {}
        }
        resampler.push(decoded, pcm)?;
        emit_audio(timeline, pcm, sink)?;
    }
    Ok(())
}

fn emit_audio(
    timeline: &mut AudioTimeline,
    pcm: &mut Vec<f32>,
    sink: &MediaSink,
) -> Result<(), MediaError> {
    if pcm.is_empty() {
        return Ok(());
    }
    let mut samples = std::mem::take(pcm);
    super::sanitize(&mut samples);
    let start_s = timeline.now();
    timeline.emitted += samples.len() as u64;
    sink.send(MediaItem::Audio(Pcm {
        samples,
        sample_rate: AUDIO_RATE,
        start_s,
    }))
}

#[allow(clippy::too_many_arguments)]
fn drain_video(
    dec: &mut ffmpeg::decoder::Video,
    base: Rational,
    clock: &mut Clock,
    conv: &mut VideoConverter,
    gate: &mut RateGate,
    held: &mut Option<(frame::Video, f64)>,
    picture: &mut frame::Video,
    sink: &MediaSink,
    at_end: bool,
) -> Result<(), MediaError> {
    // A frame is shown until the next one starts, so each frame is emitted
    // once its successor's time is known (or at the end of the stream).
    while dec.receive_frame(picture).is_ok() {
        let Some(pts) = clock.seconds(picture.timestamp(), base) else {
            continue;
        };
        let next = std::mem::replace(picture, frame::Video::empty());
        if let Some((prev, prev_pts)) = held.replace((next, pts)) {
            if pts > prev_pts {
                // A jump in the timestamps is a gap, not a picture held for
                // its length: the frame stays up for MAX_FRAME_HOLD_S at most.
                for t in gate.take(prev_pts, pts.min(prev_pts + MAX_FRAME_HOLD_S)) {
                    emit_frame(conv, &prev, t, sink)?;
                }
            }
        }
    }
    if at_end {
        if let Some((last, pts)) = held.take() {
            // The last frame stays up for its own duration (a still image may
            // be shown for seconds), or one 25 fps period when it has none.
            let duration = last.packet().duration as f64 * f64::from(base);
            let shown = if duration > 0.0 {
                duration.min(MAX_FRAME_HOLD_S)
            } else {
                1.0 / 25.0
            };
            for t in gate.take(pts, pts + shown) {
                emit_frame(conv, &last, t, sink)?;
            }
        }
    }
    Ok(())
}

fn emit_frame(
    conv: &mut VideoConverter,
    frame: &frame::Video,
    t: f64,
    sink: &MediaSink,
) -> Result<(), MediaError> {
    let out = conv.convert(frame, t)?;
    sink.meter.video_frames.fetch_add(1, Ordering::AcqRel);
    sink.send(MediaItem::Video(out))
}
