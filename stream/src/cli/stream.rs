//! `avlm stream`: send media to a server and print its events live.

use std::io::Write;

use avlm_proto as pb;
use avlm_stream::capture::{CaptureInput, CaptureSpec};
use avlm_stream::client::{self, ClientError, SendOptions, Source};

use super::print;
use super::serve::RuntimeArgs;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum TaskArg {
    Segments,
    Transcribe,
    Caption,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ModalitiesArg {
    Audio,
    Video,
    Av,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum PcmArg {
    S16le,
    F32le,
}

#[derive(Debug, clap::Args)]
pub struct StreamArgs {
    /// A media file, `-` for stdin, or any FFmpeg input (URL, device; see --format).
    pub input: String,
    /// Server URL; without it a server is started in this process.
    #[arg(long, env = "AVLM_SERVER")]
    pub server: Option<String>,
    #[command(flatten)]
    pub credentials: super::credentials::Credentials,
    /// What the server should do with the media [default: transcribe with
    /// --partials, --srt or --vtt, else segments].
    #[arg(long, value_enum)]
    pub task: Option<TaskArg>,
    /// Which streams of the media to use [default: video for --task caption,
    /// audio and video with --captions, else audio].
    #[arg(long, value_enum, alias = "modality")]
    pub modalities: Option<ModalitiesArg>,
    /// Also caption the video (with --task transcribe or segments).
    #[arg(long)]
    pub captions: bool,
    /// Frames a second the captioner looks at (the model's default when absent).
    #[arg(long)]
    pub caption_fps: Option<f32>,
    /// Speak when the captioner's probability of staying silent falls below this (0-1).
    #[arg(long)]
    pub caption_threshold: Option<f32>,
    /// Most tokens of one caption.
    #[arg(long)]
    pub caption_max_tokens: Option<u32>,
    /// Send at the media's own pace (as a live capture would) instead of as
    /// fast as the server takes it: files and FFmpeg inputs by their
    /// timestamps, --pcm by its rate, stdin by re-muxing it here (not with
    /// --as-is, whose bytes have no known pace).
    #[arg(long)]
    pub realtime: bool,
    /// Bytes per MediaChunk message, at least 256: HTTP/2 servers (avlm's too)
    /// end a connection that buffers floods of tiny DATA frames.
    #[arg(long, default_value_t = 16 * 1024, value_parser = parse_chunk_bytes)]
    pub chunk_bytes: usize,
    /// Print one JSON object per line per event.
    #[arg(long)]
    pub json: bool,
    /// Open INPUT with this FFmpeg input format (e.g. lavfi, v4l2, alsa) and re-mux it here.
    #[arg(long)]
    pub format: Option<String>,
    /// Send the input's bytes unchanged even if it cannot stream (for testing servers).
    #[arg(long)]
    pub as_is: bool,
    /// Demuxer the server should use (e.g. webm, mpegts); probed when absent.
    #[arg(long)]
    pub format_hint: Option<String>,
    /// Audio stream to use, counting INPUT's audio streams from 0 (FFmpeg's best when absent).
    #[arg(long)]
    pub audio_track: Option<u32>,
    /// INPUT is headerless PCM in this sample format.
    #[arg(long, value_enum)]
    pub pcm: Option<PcmArg>,
    /// Sample rate of --pcm input.
    #[arg(long, default_value_t = 16_000)]
    pub pcm_rate: u32,
    /// Channels of --pcm input.
    #[arg(long, default_value_t = 1)]
    pub pcm_channels: u32,
    /// Speech probability that opens a segment (0-1).
    #[arg(long)]
    pub vad_threshold: Option<f32>,
    /// Trailing silence that closes a segment, in ms.
    #[arg(long)]
    pub min_silence_ms: Option<u32>,
    /// Shortest speech reported, in ms.
    #[arg(long)]
    pub min_speech_ms: Option<u32>,
    /// Audio kept before a detected onset, in ms.
    #[arg(long)]
    pub pre_roll_ms: Option<u32>,
    /// Longest segment before it is split, in ms.
    #[arg(long)]
    pub max_segment_ms: Option<u32>,
    /// Media time between Stats messages, in ms (0: only at the end).
    #[arg(long)]
    pub stats_interval_ms: Option<u32>,
    /// Model name (the server's default when absent).
    #[arg(long)]
    pub model: Option<String>,
    /// Ask for partial transcripts of the open segment (TRANSCRIBE).
    #[arg(long)]
    pub partials: bool,
    /// Transcribe the whole input as one utterance, without voice activity
    /// segmentation (TRANSCRIBE; at most 30 s).
    #[arg(long)]
    pub whole_utterance: bool,
    /// Do not resume the stream when the connection drops (by default the
    /// client reconnects with back-off and the server keeps the stream for
    /// its grace period, serve --resume-grace-s).
    #[arg(long)]
    pub no_resume: bool,
    /// Media time between partial re-decodes, in ms.
    #[arg(long)]
    pub partial_interval_ms: Option<u32>,
    /// Write the transcript's finals as SubRip subtitles to this file.
    #[arg(long)]
    pub srt: Option<std::path::PathBuf>,
    /// Subtitles with a cue per word (from each final's word times) instead
    /// of one per final.
    #[arg(long)]
    pub word_cues: bool,
    /// Write the transcript's finals as WebVTT subtitles to this file.
    #[arg(long)]
    pub vtt: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

impl StreamArgs {
    /// The task asked for; partials and subtitles mean transcription.
    fn task(&self) -> TaskArg {
        match self.task {
            Some(t) => t,
            None if self.partials || self.srt.is_some() || self.vtt.is_some() => {
                TaskArg::Transcribe
            }
            None => TaskArg::Segments,
        }
    }

    /// Options that cannot give what they ask for with the task chosen,
    /// found before anything connects.
    fn check_options(&self) -> Result<(), String> {
        let task = self.task();
        if self.partials && !matches!(task, TaskArg::Transcribe) {
            return Err("--partials are partial transcripts: they need --task transcribe".into());
        }
        if (self.srt.is_some() || self.vtt.is_some())
            && matches!(task, TaskArg::Segments)
            && !self.captions
        {
            return Err(
                "--srt/--vtt write transcripts and captions, which --task segments has none of: use --task transcribe or --captions"
                    .into(),
            );
        }
        Ok(())
    }

    fn config(&self) -> pb::StreamConfig {
        let input = match self.pcm {
            Some(fmt) => pb::stream_config::Input::RawPcm(pb::RawPcmInput {
                sample_format: match fmt {
                    PcmArg::S16le => pb::SampleFormat::S16le,
                    PcmArg::F32le => pb::SampleFormat::F32le,
                } as i32,
                sample_rate: self.pcm_rate,
                channels: self.pcm_channels,
            }),
            None => pb::stream_config::Input::Container(pb::ContainerInput {
                format_hint: self.format_hint.clone().unwrap_or_default(),
                audio_track: self.audio_track,
            }),
        };
        pb::StreamConfig {
            task: match self.task() {
                TaskArg::Segments => pb::Task::Segments,
                TaskArg::Transcribe => pb::Task::Transcribe,
                TaskArg::Caption => pb::Task::Caption,
            } as i32,
            modalities: match self.modalities {
                Some(ModalitiesArg::Audio) => pb::Modalities::Audio,
                Some(ModalitiesArg::Video) => pb::Modalities::Video,
                Some(ModalitiesArg::Av) => pb::Modalities::AudioVideo,
                None if matches!(self.task(), TaskArg::Caption) => pb::Modalities::Video,
                None if self.captions => pb::Modalities::AudioVideo,
                None => pb::Modalities::Audio,
            } as i32,
            input: Some(input),
            options: Some(pb::StreamOptions {
                vad_threshold: self.vad_threshold,
                min_silence_ms: self.min_silence_ms,
                min_speech_ms: self.min_speech_ms,
                pre_roll_ms: self.pre_roll_ms,
                max_segment_ms: self.max_segment_ms,
                stats_interval_ms: self.stats_interval_ms,
                model: self.model.clone().unwrap_or_default(),
                partial_results: self.partials.then_some(true),
                whole_utterance: self.whole_utterance.then_some(true),
                partial_interval_ms: self.partial_interval_ms,
                captions: self.captions.then_some(true),
                caption_fps: self.caption_fps,
                caption_threshold: self.caption_threshold,
                caption_max_tokens: self.caption_max_tokens,
                resumable: Some(!self.no_resume),
                ..Default::default()
            }),
        }
    }
}

/// Returns the process exit code: 0 when the server ended the stream with OK.
pub async fn run(mut args: StreamArgs) -> anyhow::Result<i32> {
    // Before any server starts or model loads: a typo fails at once.
    if let Err(e) = args.check_options() {
        eprintln!("error: {e}");
        return Ok(2);
    }
    if let Err(e) = check_input(&args) {
        return finish(Err(ClientError::Source(e)), args.json);
    }
    let source = source(&mut args);
    let (url, local) = match &args.server {
        Some(url) => (args.credentials.target(url), None),
        None => {
            let mut config = args
                .runtime
                .server_config(4, avlm_stream::config::DEFAULT_MAX_MESSAGE_BYTES);
            // Only transcription and captions need the model bundle.
            if matches!(args.task(), TaskArg::Segments) && !args.captions {
                config.bundle = None;
            }
            let server = avlm_stream::server::start(config, "127.0.0.1:0".parse()?).await?;
            (server.url().as_str().into(), Some(server))
        }
    };
    let send = SendOptions {
        chunk_bytes: args.chunk_bytes,
        realtime: args.realtime,
        stop: Some(super::stop_on_ctrl_c()),
    };
    let json = args.json;
    let colour = print::colour();
    let stdout = std::io::stdout();
    let mut cues = if args.word_cues {
        avlm_stream::subtitles::CueCollector::word_level()
    } else {
        avlm_stream::subtitles::CueCollector::default()
    };
    let result = client::stream(&url, args.config(), source, send, |msg| {
        cues.push(msg);
        let mut out = stdout.lock();
        let _ = if json {
            writeln!(out, "{}", print::to_json(msg)).and_then(|_| out.flush())
        } else {
            print::human(&mut out, msg, colour)
        };
    })
    .await;
    if let Some(server) = local {
        server.shutdown().await?;
    }
    // Subtitles hold what arrived, even when the stream failed part way.
    write_subtitles(&cues.cues(), args.srt.as_deref(), args.vtt.as_deref())?;
    finish(result, json)
}

/// Fails when INPUT names a file that is not there (a URL, a device with
/// --format, or stdin are FFmpeg's or the pipe's to judge).
fn check_input(args: &StreamArgs) -> Result<(), String> {
    let input = args.input.as_str();
    if input == "-" || (args.format.is_some() && args.pcm.is_none()) {
        return Ok(());
    }
    let path = std::path::Path::new(input);
    let file = args.pcm.is_some() || args.as_is || !has_protocol(input);
    if file {
        std::fs::File::open(path).map_err(|e| format!("{input}: {e}"))?;
    }
    Ok(())
}

/// `proto:rest` as FFmpeg reads URLs (http://, rtsp://, pipe:0, ...).
fn has_protocol(input: &str) -> bool {
    input.split_once(':').is_some_and(|(proto, _)| {
        proto.len() > 1
            && proto
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    })
}

/// Where the bytes come from. With --realtime, inputs whose bytes carry no
/// pace of their own are read through FFmpeg here and sent as live
/// Matroska at their timestamps (the server then reads Matroska).
fn source(args: &mut StreamArgs) -> Source {
    let stdin = args.input == "-";
    let url = if stdin {
        "pipe:0".to_string()
    } else {
        args.input.clone()
    };
    if let (Some(pcm), true) = (args.pcm, args.realtime) {
        let channels = match args.pcm_channels {
            1 => "mono".to_string(),
            2 => "stereo".to_string(),
            n => format!("{n}c"),
        };
        let format = match pcm {
            PcmArg::S16le => "s16le",
            PcmArg::F32le => "f32le",
        };
        args.pcm = None;
        args.format_hint = Some("matroska".into());
        return Source::Capture(CaptureSpec {
            inputs: vec![CaptureInput {
                url,
                format: Some(format.into()),
                options: vec![
                    ("sample_rate".into(), args.pcm_rate.to_string()),
                    ("ch_layout".into(), channels),
                ],
            }],
            audio: true,
            video: false,
            max_width: 640,
            max_fps: 15.0,
        });
    }
    if args.pcm.is_some() || args.as_is {
        if stdin && args.realtime && args.pcm.is_none() {
            tracing::warn!(
                "--realtime: stdin sent --as-is has no known pace; sending it as it arrives"
            );
        }
        return match stdin {
            true => Source::Stdin,
            false => Source::File(args.input.clone().into()),
        };
    }
    if stdin && args.realtime {
        // The hint names the server's demuxer; here it opens stdin instead.
        let format = args.format.clone().or(args.format_hint.take());
        args.format_hint = Some("matroska".into());
        return Source::Remux { input: url, format };
    }
    Source::detect(&args.input, args.format.clone())
}

/// Writes the finals and captions as SubRip and/or WebVTT.
pub(super) fn write_subtitles(
    cues: &[avlm_stream::subtitles::Cue],
    srt: Option<&std::path::Path>,
    vtt: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    if cues.is_empty() && (srt.is_some() || vtt.is_some()) {
        eprintln!("warning: no finals or captions came back: the subtitle file has no cues");
    }
    if let Some(path) = srt {
        std::fs::write(path, avlm_stream::subtitles::srt(cues))
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    if let Some(path) = vtt {
        std::fs::write(path, avlm_stream::subtitles::webvtt(cues))
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    Ok(())
}

/// The exit code for a stream's outcome, reporting a failure on stderr
/// (and as a JSON line with `json`).
pub(super) fn finish(result: Result<(), ClientError>, json: bool) -> anyhow::Result<i32> {
    match result {
        Ok(()) => Ok(0),
        Err(e) => {
            if json {
                let (code, message) = match &e {
                    ClientError::Status(s) => (format!("{:?}", s.code()), s.message().to_string()),
                    other => ("Client".to_string(), other.to_string()),
                };
                println!(
                    "{}",
                    serde_json::json!({"type": "error", "code": code, "message": message})
                );
            }
            eprintln!("error: {e}");
            Ok(e.exit_code())
        }
    }
}

/// Smallest `--chunk-bytes`: a gRPC message of this many media bytes makes an
/// HTTP/2 DATA frame of at least 256 bytes, which h2's flood protection
/// never counts against a connection.
const MIN_CHUNK_BYTES: usize = 256;

fn parse_chunk_bytes(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    if n < MIN_CHUNK_BYTES {
        return Err(format!(
            "{n} is below {MIN_CHUNK_BYTES}: servers end connections that send floods of tiny HTTP/2 frames"
        ));
    }
    Ok(n)
}
