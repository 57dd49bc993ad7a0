//! The LRS3 evaluation protocol (as Llama-AVSR, auto_avsr and AV-HuBERT run
//! it): clips `DIR/<speaker>/<clip>.mp4` with `<clip>.txt` whose first line
//! is `Text:  THE WORDS`; every clip decoded whole; corpus WER and CER. Lip
//! reading (video alone, or with the audio) reads the clip's frames through
//! the face detector and mouth tracker of a live stream (or takes 96x96
//! frames as mouth crops already); noise is mixed into the audio only.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use avlm_proto as pb;
use serde::Serialize;

use super::clip::{read_clip, ClipMedia};
use super::noise::NoiseMixer;
use super::wer::{normalize, Errors};
use crate::client::{self, SendOptions, Source};
use crate::engine::{AsrPipeline, LipClip, SpeechInput};

/// Media file extensions taken as clips (LRS3 ships .mp4).
const MEDIA_EXTENSIONS: [&str; 8] = ["mp4", "mkv", "webm", "wav", "flac", "ogg", "mp3", "m4a"];

#[derive(Debug, Clone, PartialEq)]
pub struct Clip {
    /// `speaker/clip`.
    pub id: String,
    pub media: PathBuf,
    pub reference: String,
}

/// The reference words of an LRS3 `.txt`: the first line after `Text:`.
pub fn read_reference(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let first = text.lines().next().unwrap_or("");
    let words = first.strip_prefix("Text:").ok_or_else(|| {
        format!(
            "{}: the first line does not start with \"Text:\"",
            path.display()
        )
    })?;
    Ok(words
        .replace(['{', '}'], "")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" "))
}

/// All clips under `dir` that have a transcript, sorted by id.
pub fn discover(dir: &Path) -> Result<Vec<Clip>, String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<Clip>) -> Result<(), String> {
        let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in entries {
            let path = entry.map_err(|e| e.to_string())?.path();
            if path.is_dir() {
                walk(root, &path, out)?;
                continue;
            }
            let ext = path
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or("")
                .to_ascii_lowercase();
            if !MEDIA_EXTENSIONS.contains(&ext.as_str()) {
                continue;
            }
            let txt = path.with_extension("txt");
            if !txt.is_file() {
                continue;
            }
            let id = path
                .with_extension("")
                .strip_prefix(root)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            out.push(Clip {
                id,
                reference: read_reference(&txt)?,
                media: path,
            });
        }
        Ok(())
    }
    let mut clips = Vec::new();
    walk(dir, dir, &mut clips)?;
    clips.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(clips)
}

/// A listening condition.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Condition {
    Clean,
    Snr(f64),
}

impl Condition {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "clean" => Ok(Condition::Clean),
            v => v
                .parse::<f64>()
                .map(Condition::Snr)
                .map_err(|_| format!("{v:?} is neither an SNR in dB nor \"clean\"")),
        }
    }

    pub fn label(&self) -> String {
        match self {
            Condition::Clean => "clean".into(),
            Condition::Snr(db) => format!("{db}"),
        }
    }
}

/// Where hypotheses come from.
pub enum Backend {
    /// The model chain in this process (taken out while a clip decodes).
    InProcess(Option<Box<AsrPipeline>>),
    /// A running server, over gRPC.
    Server(client::Target),
}

#[derive(Debug, Clone, Serialize)]
pub struct ClipResult {
    pub id: String,
    pub condition: String,
    pub reference: String,
    pub hypothesis: String,
    pub word_edits: usize,
    pub words: usize,
    pub char_edits: usize,
    pub chars: usize,
    pub audio_s: f64,
    pub decode_s: f64,
}

/// One utterance to decode.
pub struct Utterance<'a> {
    /// The clip's file (a server is sent its bytes when it reads lips).
    pub media: &'a Path,
    /// 16 kHz mono, noise mixed in (empty for lips alone).
    pub samples: Vec<f32>,
    /// The mouth crops (lip reading).
    pub lips: Option<LipClip>,
    /// The audio is the clip's own (no noise mixed in).
    pub clean: bool,
}

impl Backend {
    /// The hypothesis for one utterance.
    pub async fn transcribe(
        &mut self,
        input: SpeechInput,
        u: Utterance<'_>,
    ) -> Result<String, String> {
        match self {
            Backend::InProcess(slot) => {
                let mut pipeline = slot.take().ok_or("the in-process model is gone")?;
                let (pipeline, result) = tokio::task::spawn_blocking(move || {
                    let samples = if input.has_audio() {
                        &u.samples[..]
                    } else {
                        &[]
                    };
                    let r = pipeline
                        .transcribe_clip(samples, u.lips.as_ref())
                        .map(|t| t.text)
                        .map_err(|e| e.to_string());
                    (pipeline, r)
                })
                .await
                .map_err(|e| e.to_string())?;
                *slot = Some(pipeline);
                result
            }
            Backend::Server(url) if input.has_video() => {
                // The server reads the lips from the clip's own frames.
                if !u.clean {
                    return Err("through a server, lip reading runs the clean condition only (noise is mixed into the audio here, and the clip is sent as it is)".into());
                }
                let config = pb::StreamConfig {
                    task: pb::Task::Transcribe as i32,
                    modalities: match input {
                        SpeechInput::Video => pb::Modalities::Video,
                        _ => pb::Modalities::AudioVideo,
                    } as i32,
                    input: Some(pb::stream_config::Input::Container(
                        pb::ContainerInput::default(),
                    )),
                    options: Some(pb::StreamOptions {
                        whole_utterance: Some(true),
                        stats_interval_ms: Some(0),
                        ..Default::default()
                    }),
                };
                // As `avlm stream` sends a file: as it is when it streams,
                // re-muxed when its index sits at the end.
                let source = Source::detect(&u.media.to_string_lossy(), None);
                stream_finals(url, config, source).await
            }
            Backend::Server(url) => {
                let bytes: Vec<u8> = u.samples.iter().flat_map(|s| s.to_le_bytes()).collect();
                let config = pb::StreamConfig {
                    task: pb::Task::Transcribe as i32,
                    modalities: pb::Modalities::Audio as i32,
                    input: Some(pb::stream_config::Input::RawPcm(pb::RawPcmInput {
                        sample_format: pb::SampleFormat::F32le as i32,
                        sample_rate: crate::media::AUDIO_RATE,
                        channels: 1,
                    })),
                    options: Some(pb::StreamOptions {
                        whole_utterance: Some(true),
                        stats_interval_ms: Some(0),
                        ..Default::default()
                    }),
                };
                stream_finals(url, config, Source::Memory(bytes)).await
            }
        }
    }

    /// Whether the backend may drop the crops of a clip where no face was
    /// found and decode the audio alone (as a stream does).
    fn transcribes_audio_alone(&self) -> bool {
        match self {
            Backend::InProcess(Some(p)) => p.transcribes(SpeechInput::Audio),
            _ => false,
        }
    }
}

/// The Finals of one whole-utterance stream, joined.
async fn stream_finals(
    url: &client::Target,
    config: pb::StreamConfig,
    source: Source,
) -> Result<String, String> {
    let mut texts = Vec::new();
    client::stream(
        url,
        config,
        source,
        SendOptions {
            chunk_bytes: 64 * 1024,
            realtime: false,
            stop: None,
        },
        |m| {
            if let Some(pb::server_message::Msg::Final(f)) = &m.msg {
                texts.push(f.text.clone());
            }
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok(texts.join(" "))
}

/// What an evaluation reads, and with what.
pub struct Reading<'a> {
    pub input: SpeechInput,
    /// The face detector's ONNX file (lip reading).
    pub detector: Option<&'a Path>,
}

/// Runs every clip under every condition; `progress` is told after each.
/// Each clip is read once and heard under every condition in turn.
pub async fn run(
    clips: &[Clip],
    conditions: &[Condition],
    backend: &mut Backend,
    mixer: Option<&NoiseMixer>,
    reading: Reading<'_>,
    mut progress: impl FnMut(&ClipResult),
) -> Result<Vec<ClipResult>, String> {
    let input = reading.input;
    let mut results = Vec::with_capacity(clips.len() * conditions.len());
    // A server reading lips is sent the clip itself (clean only).
    let server_reads = input.has_video() && matches!(backend, Backend::Server(_));
    for clip in clips {
        let detector = if input.has_video() && !server_reads {
            Some(
                reading
                    .detector
                    .ok_or("lip reading needs the face detector")?,
            )
        } else {
            None
        };
        // Audio alone is read as the server path sends it (decoded here
        // whole); lip reading through the stream's own ingest and tracker.
        let (clean, lips) = if !input.has_video() {
            let media = clip.media.clone();
            let audio =
                tokio::task::spawn_blocking(move || crate::media::file::decode_audio_file(&media))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("{}: {e}", clip.id))?;
            (audio, None)
        } else if server_reads {
            (Vec::new(), None)
        } else {
            let ClipMedia { audio, lips, .. } = read_clip(&clip.media, input.has_audio(), detector)
                .await
                .map_err(|e| format!("{}: {e}", clip.id))?;
            if lips.is_none() {
                return Err(format!("{}: no video frames", clip.id));
            }
            let lips = crate::session::lips::video_for(
                lips,
                input.has_audio(),
                backend.transcribes_audio_alone(),
            );
            (audio, lips)
        };
        // The clip's length for the real-time factor.
        let clip_s = match (&lips, server_reads) {
            (_, true) => client::media_duration(&clip.media).unwrap_or(0.0),
            (Some(l), _) if !input.has_audio() => l.seconds(),
            _ => clean.len() as f64 / f64::from(crate::media::AUDIO_RATE),
        };
        for condition in conditions {
            let audio = match (condition, mixer) {
                (_, _) if !input.has_audio() => Vec::new(),
                (Condition::Clean, _) => clean.clone(),
                (Condition::Snr(db), Some(m)) => m.mix(&clean, *db, &clip.id),
                (Condition::Snr(_), None) => {
                    return Err("an SNR condition needs a noise recording".into())
                }
            };
            let seconds = clip_s;
            let started = Instant::now();
            let hypothesis = backend
                .transcribe(
                    input,
                    Utterance {
                        media: &clip.media,
                        samples: audio,
                        lips: lips.clone(),
                        clean: *condition == Condition::Clean,
                    },
                )
                .await
                .map_err(|e| format!("{}: {e}", clip.id))?;
            let decode_s = started.elapsed().as_secs_f64();
            let e = Errors::of(&clip.reference, &hypothesis);
            let r = ClipResult {
                id: clip.id.clone(),
                condition: condition.label(),
                reference: normalize(&clip.reference),
                hypothesis: normalize(&hypothesis),
                word_edits: e.word_edits,
                words: e.words,
                char_edits: e.char_edits,
                chars: e.chars,
                audio_s: seconds,
                decode_s,
            };
            progress(&r);
            results.push(r);
        }
    }
    Ok(results)
}

/// Corpus figures of one condition.
#[derive(Debug, Clone, Serialize)]
pub struct ConditionSummary {
    pub condition: String,
    pub clips: usize,
    pub wer: f64,
    pub cer: f64,
    pub word_edits: usize,
    pub words: usize,
    pub audio_s: f64,
    pub decode_s: f64,
    pub real_time_factor: f64,
}

pub fn summarize(results: &[ClipResult], conditions: &[Condition]) -> Vec<ConditionSummary> {
    conditions
        .iter()
        .map(|c| {
            let label = c.label();
            let rows: Vec<&ClipResult> = results.iter().filter(|r| r.condition == label).collect();
            let mut e = Errors::default();
            let (mut audio, mut decode) = (0.0, 0.0);
            for r in &rows {
                e.add(Errors {
                    word_edits: r.word_edits,
                    words: r.words,
                    char_edits: r.char_edits,
                    chars: r.chars,
                });
                audio += r.audio_s;
                decode += r.decode_s;
            }
            ConditionSummary {
                condition: label,
                clips: rows.len(),
                wer: e.wer(),
                cer: e.cer(),
                word_edits: e.word_edits,
                words: e.words,
                audio_s: audio,
                decode_s: decode,
                real_time_factor: if audio > 0.0 { decode / audio } else { 0.0 },
            }
        })
        .collect()
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Writes clips.csv, clips.jsonl, summary.json and wer_vs_snr.png into `out`.
pub fn write_outputs(
    out: &Path,
    results: &[ClipResult],
    summary: &[ConditionSummary],
    meta: serde_json::Value,
    title: &super::plot::PlotTitle,
) -> std::io::Result<()> {
    std::fs::create_dir_all(out)?;
    let mut csv = std::io::BufWriter::new(std::fs::File::create(out.join("clips.csv"))?);
    writeln!(
        csv,
        "id,condition,reference,hypothesis,word_edits,words,char_edits,chars,audio_s,decode_s"
    )?;
    for r in results {
        writeln!(
            csv,
            "{},{},{},{},{},{},{},{},{:.3},{:.3}",
            csv_field(&r.id),
            csv_field(&r.condition),
            csv_field(&r.reference),
            csv_field(&r.hypothesis),
            r.word_edits,
            r.words,
            r.char_edits,
            r.chars,
            r.audio_s,
            r.decode_s
        )?;
    }
    csv.flush()?;
    let mut jsonl = std::io::BufWriter::new(std::fs::File::create(out.join("clips.jsonl"))?);
    for r in results {
        writeln!(
            jsonl,
            "{}",
            serde_json::to_string(r).map_err(std::io::Error::other)?
        )?;
    }
    jsonl.flush()?;
    let headline = summary
        .iter()
        .find(|s| s.condition == "clean")
        .or_else(|| summary.first());
    let audio: f64 = summary.iter().map(|s| s.audio_s).sum();
    let decode: f64 = summary.iter().map(|s| s.decode_s).sum();
    let doc = serde_json::json!({
        "clips": headline.map(|s| s.clips).unwrap_or(0),
        "wer": headline.map(|s| s.wer),
        "cer": headline.map(|s| s.cer),
        "wer_condition": headline.map(|s| s.condition.clone()),
        "real_time_factor": if audio > 0.0 { decode / audio } else { 0.0 },
        "conditions": summary,
        "run": meta,
    });
    std::fs::write(
        out.join("summary.json"),
        serde_json::to_string_pretty(&doc).map_err(std::io::Error::other)? + "\n",
    )?;
    let points: Vec<(String, f64)> = summary
        .iter()
        .map(|s| (s.condition.clone(), s.wer))
        .collect();
    super::plot::wer_vs_snr(&points, title, &out.join("wer_vs_snr.png"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_is_the_text_line_without_braces() {
        let dir = std::env::temp_dir().join(format!("avlm-lrs3-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("spk")).unwrap();
        std::fs::write(
            dir.join("spk/00001.txt"),
            "Text:  HELLO {LAUGH} WORLD\nConf:  3\n\nWORD START END ASDSCORE\n",
        )
        .unwrap();
        std::fs::write(dir.join("spk/00001.mp4"), b"").unwrap();
        std::fs::write(dir.join("spk/00002.mp4"), b"").unwrap(); // no transcript: not a clip
        let clips = discover(&dir).unwrap();
        assert_eq!(clips.len(), 1);
        assert_eq!(clips[0].id, "spk/00001");
        assert_eq!(clips[0].reference, "HELLO LAUGH WORLD");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn conditions_parse() {
        assert_eq!(Condition::parse("clean").unwrap(), Condition::Clean);
        assert_eq!(Condition::parse("-5").unwrap(), Condition::Snr(-5.0));
        assert!(Condition::parse("loud").is_err());
    }
}
