//! Media ingest: bytes that arrive over time in, 16 kHz mono audio and
//! fixed-rate video frames with media times out.
//!
//! Everything here runs on a session's blocking decoder thread; the async
//! side only writes into the [`pipe`].

pub mod container;
pub mod file;
pub mod formats;
pub mod pipe;
pub mod raw;
pub mod resample;
pub mod sniff;
pub mod video;
pub mod wav;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;

use avlm_encoders::{Frame, Pcm};

/// Sample rate of all decoded audio.
pub const AUDIO_RATE: u32 = avlm_encoders::SAMPLE_RATE;

/// Sample layout of raw PCM input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawSampleFormat {
    S16le,
    F32le,
}

impl RawSampleFormat {
    pub fn bytes(self) -> usize {
        match self {
            RawSampleFormat::S16le => 2,
            RawSampleFormat::F32le => 4,
        }
    }
}

/// What the bytes are.
#[derive(Debug, Clone, PartialEq)]
pub enum InputSpec {
    /// A container FFmpeg demuxes; `format_hint` restricts probing to that
    /// demuxer; `audio_track` picks an audio stream by its rank among them.
    Container {
        format_hint: Option<String>,
        audio_track: Option<u32>,
    },
    /// Headerless interleaved PCM.
    RawPcm {
        format: RawSampleFormat,
        sample_rate: u32,
        channels: u16,
    },
}

/// Decoded video geometry and rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VideoSpec {
    pub fps: f64,
    pub width: u32,
    pub height: u32,
    /// `width` x `height` is a box the frame is shrunk to fit, keeping its
    /// aspect ratio (never enlarged), instead of the exact output size.
    pub keep_aspect: bool,
}

/// What to decode.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeSpec {
    pub input: InputSpec,
    pub audio: bool,
    pub video: Option<VideoSpec>,
}

/// What the decoder thread hands to the analysis thread, in media order.
#[derive(Debug)]
pub enum MediaItem {
    Audio(Pcm),
    Video(Frame),
    /// The client's flush, after the media decoded before it.
    Flush,
}

/// Why decoding stopped early.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum MediaError {
    /// FFmpeg could not make sense of the bytes.
    #[error("{0}")]
    Undecodable(String),
    /// The media lacks a stream the client asked for.
    #[error("{0}")]
    MissingStream(String),
    /// A plain MP4 whose index (moov) comes after its media data.
    #[error("the MP4 stores its index (moov box) after the media data (mdat), so it cannot be decoded while it streams: send fragmented MP4 (-movflags frag_keyframe+empty_moov) or faststart MP4 (-movflags +faststart), or another streamable container such as WebM or MPEG-TS")]
    IndexAtEnd,
    /// The session went away.
    #[error("session aborted")]
    Aborted,
    /// Something in FFmpeg failed that is not the client's fault.
    #[error("internal media error: {0}")]
    Internal(String),
}

/// Counters the decoder updates for `Stats`, shared with the session.
#[derive(Debug, Default)]
pub struct DecodeMeter {
    /// Media time demuxed so far, microseconds.
    pub received_us: AtomicU64,
    /// Video frames emitted.
    pub video_frames: AtomicU64,
    /// CPU time the decoder thread has used, microseconds (see
    /// [`thread_cpu_time`]).
    pub busy_us: AtomicU64,
}

impl DecodeMeter {
    /// Records the decoder thread's CPU time since `start` (its
    /// [`thread_cpu_time`] when decoding began); call on that thread.
    pub fn note_cpu(&self, start: std::time::Duration) {
        let used = thread_cpu_time().saturating_sub(start);
        self.busy_us
            .store(used.as_micros() as u64, Ordering::Release);
    }

    pub fn note_received(&self, media_s: f64) {
        if media_s.is_finite() && media_s > 0.0 {
            self.received_us
                .fetch_max((media_s * 1e6) as u64, Ordering::AcqRel);
        }
    }
}

/// Where decoded media goes; a closed channel means the session is gone.
#[derive(Clone)]
pub struct MediaSink {
    pub tx: SyncSender<MediaItem>,
    pub meter: Arc<DecodeMeter>,
}

impl MediaSink {
    pub fn send(&self, item: MediaItem) -> Result<(), MediaError> {
        self.tx.send(item).map_err(|_| MediaError::Aborted)
    }
}

/// CPU time the calling thread has used. A session's real-time factor is
/// made of it: the work its own threads did, without the time they waited
/// for bytes, for the client, for the model, or for a free core on a
/// loaded machine (wall time counted all of that).
pub fn thread_cpu_time() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer for the calling thread's CPU clock.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// Replaces NaN and infinite samples (possible in float PCM from a client)
/// with silence, since one would poison the VAD's recurrent state for good,
/// and clips the rest to full scale: float audio may carry any finite value,
/// and one absurd sample (1e19, say) would set the log-mel's range for its
/// whole utterance and flatten the speech around it.
pub fn sanitize(samples: &mut [f32]) {
    for s in samples.iter_mut() {
        *s = if s.is_finite() {
            s.clamp(-1.0, 1.0)
        } else {
            0.0
        };
    }
}

/// Runs the decoder for `spec` over `reader` until the end of the bytes.
pub fn decode(
    spec: &DecodeSpec,
    reader: pipe::PipeReader,
    sink: MediaSink,
) -> Result<(), MediaError> {
    crate::media::container::init_ffmpeg()?;
    match &spec.input {
        InputSpec::Container {
            format_hint,
            audio_track,
        } => container::decode(spec, format_hint.as_deref(), *audio_track, reader, sink),
        InputSpec::RawPcm {
            format,
            sample_rate,
            channels,
        } => raw::decode(*format, *sample_rate, *channels, reader, sink),
    }
}
