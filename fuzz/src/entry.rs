//! The entry points the fuzz targets drive. The regression replay test
//! (stream/tests/fuzz_regressions.rs) includes this file as a module, so a
//! reproducer runs the same code under libFuzzer and under `cargo test`.
//!
//! Each entry decodes its input as its target's format, runs the server's
//! own code on it, and panics on anything a client must never cause: a
//! panic in our code, an INTERNAL error, an abort nobody asked for, output
//! that breaks the decoder's promises (16 kHz audio on one continuous
//! timeline, finite samples in [-1, 1], frames of the asked size in time
//! order).

use std::io::Read;
use std::sync::mpsc::sync_channel;
use std::sync::Arc;

use avlm_proto as pb;
use avlm_stream::config::SessionDefaults;
use avlm_stream::engine::CaptionSettings;
use avlm_stream::media::sniff::{Mp4Layout, Mp4Sniffer};
use avlm_stream::media::{
    self, formats, pipe, wav, DecodeMeter, DecodeSpec, InputSpec, MediaError, MediaItem, MediaSink,
    RawSampleFormat, VideoSpec, AUDIO_RATE,
};
use avlm_stream::session::valid::{self, Capabilities};
use prost::Message;

/// Decoded items in flight between decoder and consumer, as in a session.
const MEDIA_QUEUE: usize = 32;

/// What one decode handed out.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Decoded {
    pub audio_samples: u64,
    pub video_frames: u64,
    pub flushes: u64,
}

/// Runs the session's decoder (`media::decode`) over `bytes` as one client
/// stream that ends after them, with a flush at `flush_at` when given, and
/// checks what comes out. `Err` is a refusal the client is told about.
pub fn decode_stream(
    spec: &DecodeSpec,
    bytes: &[u8],
    flush_at: Option<usize>,
) -> Result<Decoded, MediaError> {
    // Room for every byte: the writer never waits, and the decoder sees the
    // stream already closed, as after a fast client's last message.
    let (mut writer, reader) = pipe::byte_pipe(bytes.len() + 1);
    let (first, rest) = bytes.split_at(flush_at.unwrap_or(bytes.len()).min(bytes.len()));
    futures::executor::block_on(async {
        writer.write_all(first).await.expect("pipe has room");
        if flush_at.is_some() {
            writer.mark_flush();
        }
        writer.write_all(rest).await.expect("pipe has room");
    });
    writer.close();

    let (tx, rx) = sync_channel(MEDIA_QUEUE);
    let sink = MediaSink {
        tx,
        meter: Arc::new(DecodeMeter::default()),
    };
    let video = spec.video;
    let consumer = std::thread::spawn(move || check_items(rx, video));
    let result = media::decode(spec, reader, sink);
    drop(writer);
    let decoded = consumer.join().expect("the output checks hold");
    match result {
        Ok(()) => Ok(decoded),
        Err(MediaError::Internal(why)) => {
            panic!("client bytes caused an internal media error: {why}")
        }
        Err(MediaError::Aborted) => panic!("the decoder aborted a session nobody aborted"),
        Err(e) => Err(e),
    }
}

/// Drains the decoder's output as the analysis thread would, checking it.
fn check_items(rx: std::sync::mpsc::Receiver<MediaItem>, video: Option<VideoSpec>) -> Decoded {
    let mut out = Decoded::default();
    let mut next_audio_s: Option<f64> = None;
    let mut last_frame_s = f64::NEG_INFINITY;
    for item in rx {
        match item {
            MediaItem::Audio(pcm) => {
                assert_eq!(pcm.sample_rate, AUDIO_RATE);
                assert!(
                    pcm.start_s.is_finite() && pcm.start_s >= 0.0,
                    "audio starts at {}",
                    pcm.start_s
                );
                if let Some(expected) = next_audio_s {
                    assert!(
                        (pcm.start_s - expected).abs() < 1e-6,
                        "audio timeline broken: chunk at {} after audio up to {expected}",
                        pcm.start_s
                    );
                }
                assert!(
                    pcm.samples.iter().all(|s| s.is_finite() && s.abs() <= 1.0),
                    "audio samples outside [-1, 1]"
                );
                next_audio_s = Some(pcm.start_s + pcm.samples.len() as f64 / f64::from(AUDIO_RATE));
                out.audio_samples += pcm.samples.len() as u64;
            }
            MediaItem::Video(frame) => {
                let spec = video.expect("video frames only when video was asked for");
                assert!(frame.pts_s.is_finite(), "frame at {}", frame.pts_s);
                assert!(
                    frame.pts_s >= last_frame_s,
                    "frames out of order: {} after {last_frame_s}",
                    frame.pts_s
                );
                last_frame_s = frame.pts_s;
                if spec.keep_aspect {
                    assert!(frame.width <= spec.width && frame.height <= spec.height);
                } else {
                    assert_eq!((frame.width, frame.height), (spec.width, spec.height));
                }
                assert!(frame.width > 0 && frame.height > 0);
                assert!(frame.stride >= frame.width as usize * 3);
                assert!(
                    frame.data.len()
                        >= frame.stride * (frame.height as usize - 1) + frame.width as usize * 3
                );
                out.video_frames += 1;
            }
            MediaItem::Flush => out.flushes += 1,
        }
    }
    out
}

/// Format hints a client may name (every single accepted demuxer name and
/// the two G.711 ones), in a fixed order: the ingest input's second byte
/// picks one, 0 for none.
pub fn hints() -> Vec<&'static str> {
    let mut h: Vec<&'static str> = formats::ACCEPTED
        .iter()
        .flat_map(|d| d.split(','))
        .chain(["mulaw", "alaw"])
        .filter(|h| formats::check_hint(h).is_ok())
        .collect();
    h.dedup();
    h
}

/// Ingest input: byte 0 picks the modalities (bits 0-1: audio, video,
/// both), a flush halfway (bit 2) and aspect-kept video (bit 3); byte 1 the
/// format hint ([`hints`], 0 for none); the rest is the stream's bytes.
pub fn ingest(data: &[u8]) -> Option<Result<Decoded, MediaError>> {
    let [mode, hint, bytes @ ..] = data else {
        return None;
    };
    let (audio, video) = match mode & 3 {
        0 | 3 => (true, mode & 3 == 3),
        1 => (false, true),
        _ => (true, true),
    };
    let hints = hints();
    let format_hint = match *hint as usize {
        0 => None,
        i => Some(hints[(i - 1) % hints.len()].to_string()),
    };
    let spec = DecodeSpec {
        input: InputSpec::Container {
            format_hint,
            audio_track: None,
        },
        audio,
        video: video.then_some(VideoSpec {
            fps: 25.0,
            width: 224,
            height: 224,
            keep_aspect: mode & 8 != 0,
        }),
    };
    check_mp4_sniffer(bytes);
    let flush_at = (mode & 4 != 0).then_some(bytes.len() / 2);
    Some(decode_stream(&spec, bytes, flush_at))
}

/// The session's MP4 layout check reaches the same verdict however the
/// bytes are split into messages.
fn check_mp4_sniffer(bytes: &[u8]) {
    let mut whole = Mp4Sniffer::default();
    let verdict = whole.push(bytes);
    let mut split = Mp4Sniffer::default();
    for chunk in bytes.chunks(7) {
        split.push(chunk);
    }
    assert_eq!(split.verdict(), verdict, "MP4 verdict depends on chunking");
    if verdict == Mp4Layout::IndexAtEnd {
        assert!(bytes.windows(4).any(|w| w == b"mdat"));
    }
}

/// Raw PCM input: byte 0 picks the sample format (bit 0: s16le, f32le),
/// the channels (bit 1: 1, 2) and a flush halfway (bit 2); bytes 1-3 (LE)
/// the sample rate, 8 kHz plus their value modulo the accepted range; the
/// rest is samples.
pub fn raw_pcm(data: &[u8]) -> Option<Result<Decoded, MediaError>> {
    let [mode, r0, r1, r2, bytes @ ..] = data else {
        return None;
    };
    let rate = 8_000 + u32::from_le_bytes([*r0, *r1, *r2, 0]) % (192_000 - 8_000 + 1);
    let format = if mode & 1 == 0 {
        RawSampleFormat::S16le
    } else {
        RawSampleFormat::F32le
    };
    let channels = 1 + u16::from(mode & 2 != 0);
    let spec = DecodeSpec {
        input: InputSpec::RawPcm {
            format,
            sample_rate: rate,
            channels,
        },
        audio: true,
        video: None,
    };
    let flush_at = (mode & 4 != 0).then_some(bytes.len() / 2);
    let decoded = decode_stream(&spec, bytes, flush_at);
    if let Ok(d) = &decoded {
        // Every whole input frame becomes output at 16 kHz: a few samples
        // of resampler delay either way, never more or less audio.
        let frames = bytes.len() / (format.bytes() * usize::from(channels));
        let expected = frames as f64 * f64::from(AUDIO_RATE) / f64::from(rate);
        assert!(
            (d.audio_samples as f64 - expected).abs() <= 64.0,
            "{frames} frames at {rate} Hz became {} samples at 16 kHz (expected about {expected:.0})",
            d.audio_samples
        );
    }
    Some(decoded)
}

/// A reader that hands out its bytes in reads of at most `step` bytes.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.step).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// WAV header input: byte 0 sets the size of the reads the header reader
/// gets (1-256 bytes); the rest is the stream.
pub fn wav_header(data: &[u8]) -> Option<()> {
    let [step, bytes @ ..] = data else {
        return None;
    };
    let full = wav::parse(bytes);
    let (mut reader, found) = wav::sniff(Trickle {
        data: bytes,
        step: usize::from(*step) + 1,
    })
    .expect("reading from memory cannot fail");
    let mut out = Vec::new();
    reader
        .read_to_end(&mut out)
        .expect("reading from memory cannot fail");
    match (&found, &full) {
        (Some(w), wav::Header::Pcm(p)) => {
            assert_eq!(w, p, "the header read as it arrived differs from the whole");
            let end = match w.data_len {
                Some(n) => bytes.len().min(w.data_offset.saturating_add(n as usize)),
                None => bytes.len(),
            };
            assert_eq!(out, bytes[w.data_offset..end], "samples after the header");
            assert!(w.channels > 0 && w.sample_rate > 0);
        }
        (Some(w), other) => panic!("sniffed {w:?} from a prefix, but the whole reads {other:?}"),
        // Fuzz inputs are shorter than the most header the reader looks at.
        (None, wav::Header::Pcm(p)) => panic!("the whole reads {p:?}, but the reader gave up"),
        (None, _) => assert_eq!(out, bytes, "a stream not read as PCM WAV comes back whole"),
    }
    Some(())
}

/// The client messages of a protocol input: each a varint length and that
/// many bytes of an encoded `ClientMessage`; decoding stops at the first
/// that does not decode.
pub fn client_messages(data: &[u8]) -> Vec<pb::ClientMessage> {
    let mut buf = data;
    let mut out = Vec::new();
    while !buf.is_empty() {
        match pb::ClientMessage::decode_length_delimited(&mut buf) {
            Ok(m) => out.push(m),
            Err(_) => break,
        }
    }
    out
}

/// Encodes messages as [`client_messages`] reads them (for seeds).
pub fn encode_messages(messages: &[pb::ClientMessage]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in messages {
        m.encode_length_delimited(&mut out)
            .expect("a Vec grows as needed");
    }
    out
}

/// The servers a config is checked against: segmentation only, with a
/// transcription model, and with a captioner too.
fn capabilities() -> [Capabilities; 3] {
    let segments = Capabilities {
        model_name: "fuzz".into(),
        transcribe: false,
        lips: avlm_stream::session::valid::LipCaps::default(),
        caption: None,
    };
    [
        segments.clone(),
        Capabilities {
            transcribe: true,
            ..segments.clone()
        },
        Capabilities {
            transcribe: true,
            caption: Some((
                CaptionSettings {
                    threshold: 0.5,
                    max_new_tokens: 32,
                },
                1.0,
            )),
            ..segments
        },
    ]
}

/// Protocol input through validation: every `StreamConfig` among the
/// messages is validated against each kind of server. A config accepted
/// once is accepted again as `Ready` echoes it back (its effective form),
/// with the same settings; a refusal names its field in a short message.
pub fn protocol(data: &[u8]) -> usize {
    let messages = client_messages(data);
    let defaults = SessionDefaults::default();
    for m in &messages {
        let Some(pb::client_message::Msg::Config(config)) = &m.msg else {
            continue;
        };
        for caps in capabilities() {
            match valid::validate(config.clone(), &defaults, &caps) {
                Ok(v) => {
                    let again = valid::validate(v.effective.clone(), &defaults, &caps)
                        .unwrap_or_else(|e| {
                            panic!("the effective config of an accepted one is refused: {e:?}")
                        });
                    assert_eq!(again.effective, v.effective, "effective config not stable");
                    assert_eq!(again.decode, v.decode);
                    assert_eq!(again.task, v.task);
                    assert_eq!(again.captions, v.captions);
                    assert_eq!(again.endpoint, v.endpoint);
                }
                Err(e) => assert!(
                    e.message.len() <= 4096,
                    "a refusal message of {} bytes",
                    e.message.len()
                ),
            }
        }
    }
    messages.len()
}
