//! One evaluation clip read as a live stream reads it: its bytes through the
//! server's ingest (FFmpeg fed from a pipe, never opening the file itself),
//! the audio at 16 kHz mono and, for lip reading, the frames at 25 a second
//! through the same face detector and mouth tracker a TRANSCRIBE stream
//! runs, so in-process hypotheses equal a server's.

use std::path::Path;
use std::sync::mpsc::sync_channel;
use std::sync::Arc;

use tokio::io::AsyncReadExt;

use crate::media::pipe::byte_pipe;
use crate::media::{self, DecodeMeter, DecodeSpec, InputSpec, MediaItem, MediaSink, VideoSpec};
use crate::session::lips::{LipTrack, SegmentClip};

/// Box frames are shrunk to before face detection (as a lip-reading stream's).
const FRAME_BOX: u32 = 640;

/// What a clip holds for the model.
pub struct ClipMedia {
    /// 16 kHz mono; empty when the audio was not asked for.
    pub audio: Vec<f32>,
    /// Media time of the first sample.
    pub audio_start_s: f64,
    /// The mouth crops over the audio's span (the whole video without
    /// audio), when the video was asked for and has frames.
    pub lips: Option<SegmentClip>,
}

/// Reads `path`: its audio when `audio`, its mouth crops when `detector`
/// (the face detector's ONNX file) is given. ONNX Runtime must be set up.
pub async fn read_clip(
    path: &Path,
    audio: bool,
    detector: Option<&Path>,
) -> Result<ClipMedia, String> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let (mut writer, reader) = byte_pipe(1 << 20);
    let (tx, rx) = sync_channel(16);
    let spec = DecodeSpec {
        input: InputSpec::Container {
            format_hint: None,
            audio_track: None,
        },
        audio,
        video: detector.map(|_| VideoSpec {
            fps: f64::from(crate::session::valid::LIP_FPS),
            width: FRAME_BOX,
            height: FRAME_BOX,
            keep_aspect: true,
        }),
    };
    let sink = MediaSink {
        tx,
        meter: Arc::new(DecodeMeter::default()),
    };
    let decoder = std::thread::Builder::new()
        .name("avlm-eval-decode".into())
        .spawn(move || media::decode(&spec, reader, sink))
        .map_err(|e| format!("cannot start a decoder thread: {e}"))?;
    let feeder = tokio::spawn(async move {
        let mut buf = vec![0u8; 1 << 16];
        let result = async {
            loop {
                let n = file.read(&mut buf).await?;
                if n == 0 || writer.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            std::io::Result::Ok(())
        }
        .await;
        writer.close();
        result
    });
    let detector = detector.map(Path::to_path_buf);
    let consumer = tokio::task::spawn_blocking(move || -> Result<ClipMedia, String> {
        let mut track = match &detector {
            Some(d) => Some(LipTrack::new(d).map_err(|e| e.message)?),
            None => None,
        };
        let mut samples = Vec::new();
        let mut start = None;
        let mut events = Vec::new();
        for item in rx {
            match item {
                MediaItem::Audio(pcm) => {
                    start.get_or_insert(pcm.start_s);
                    samples.extend_from_slice(&pcm.samples);
                }
                MediaItem::Video(frame) => {
                    if let Some(t) = &mut track {
                        t.frame(&frame, &mut events).map_err(|e| e.message)?;
                    }
                }
                MediaItem::Flush => {}
            }
        }
        let audio_start_s = start.unwrap_or(0.0);
        let lips = match &mut track {
            Some(t) => {
                t.finish(&mut events);
                // The span a whole-utterance stream takes: the audio's,
                // or the crops' own without audio.
                let span = if samples.is_empty() {
                    t.span()
                } else {
                    Some((
                        audio_start_s,
                        audio_start_s + samples.len() as f64 / f64::from(media::AUDIO_RATE),
                    ))
                };
                span.and_then(|(a, b)| t.clip(a, b))
            }
            None => None,
        };
        Ok(ClipMedia {
            audio: samples,
            audio_start_s,
            lips,
        })
    });
    let clip = consumer
        .await
        .map_err(|e| format!("the clip reader stopped: {e}"))??;
    match decoder.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(format!("{}: {e}", path.display())),
        Err(_) => return Err("the decoder thread panicked".into()),
    }
    feeder
        .await
        .map_err(|e| format!("the file reader stopped: {e}"))?
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(clip)
}
