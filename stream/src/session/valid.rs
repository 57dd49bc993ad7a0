//! Validation of a client's `StreamConfig` into the session's settings: the
//! engine never sees unchecked input, and every rejection names the field.

use crate::error::SessionError;
use avlm_encoders::EndpointConfig;
use avlm_proto as pb;

use crate::config::{SessionDefaults, MAX_CAPTION_FPS};
use crate::engine::CaptionSettings;
use crate::media::{DecodeSpec, InputSpec, RawSampleFormat, VideoSpec};

/// Largest decoded video side, in pixels. The vision encoders of this field
/// take 88-518 px frames; every decoded frame is scaled to this size, and a
/// client asking for 4096 x 4096 at 60 fps made a tiny video cost 6 s of
/// CPU per second of media.
const MAX_VIDEO_SIDE: u32 = 1024;

/// The task a session runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    Segments,
    Transcribe,
    Caption,
}

/// A checked session configuration.
#[derive(Debug, Clone)]
pub struct ValidConfig {
    pub task: Task,
    /// TRANSCRIBE the whole stream as one utterance, without VAD.
    pub whole_utterance: bool,
    /// TRANSCRIBE: media seconds between partial re-decodes; `None`: no partials.
    pub partial_interval_s: Option<f64>,
    pub decode: DecodeSpec,
    pub endpoint: EndpointConfig,
    pub stats_interval_s: f64,
    /// Live captions of the video (task CAPTION, or `options.captions`).
    pub captions: Option<CaptionConfig>,
    /// TRANSCRIBE reads the speaker's lips from the video.
    pub lips: bool,
    /// The stream survives a dropped connection (StreamOptions.resumable).
    pub resumable: bool,
    /// What `Ready` echoes back: the request with every default filled in.
    pub effective: pb::StreamConfig,
}

/// A session's caption settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CaptionConfig {
    pub settings: CaptionSettings,
    /// Frames a second the captioner sees.
    pub fps: f32,
}

/// Box a caption session's frames are shrunk to fit (aspect kept) as they
/// are decoded; the vision front end resizes them to the encoder's input.
const CAPTION_FRAME_BOX: u32 = 640;

/// Most tokens of one caption a session may ask for.
const MAX_CAPTION_TOKENS: u32 = 128;

/// A client's string as an error message quotes it: at most
/// `QUOTED_CHARS` characters of it, so a huge value cannot blow up the status
/// (gRPC clients refuse status metadata over 16 KiB).
fn quoted(value: &str) -> String {
    const QUOTED_CHARS: usize = 64;
    match value.char_indices().nth(QUOTED_CHARS) {
        None => format!("{value:?}"),
        Some((cut, _)) => format!("{:?}… ({} bytes)", &value[..cut], value.len()),
    }
}

fn bad(field: &str, why: impl std::fmt::Display) -> SessionError {
    SessionError::bad_input(format!("StreamConfig.{field}: {why}"))
}

fn in_range<T: PartialOrd + std::fmt::Display + Copy>(
    field: &str,
    value: T,
    lo: T,
    hi: T,
    unit: &str,
) -> Result<T, SessionError> {
    if value < lo || value > hi {
        return Err(bad(
            field,
            format!("{value}{unit} is outside {lo}..={hi}{unit}"),
        ));
    }
    Ok(value)
}

/// What the server can run, for validation.
#[derive(Debug, Clone)]
pub struct Capabilities {
    pub model_name: String,
    /// The model transcribes audio.
    pub transcribe: bool,
    /// What the model reads lips with.
    pub lips: LipCaps,
    /// The model's caption settings and frame rate, when it captions video.
    pub caption: Option<(CaptionSettings, f32)>,
}

/// Which inputs a model reads lips from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LipCaps {
    /// The video alone.
    pub video: bool,
    /// The audio and the video together.
    pub audio_video: bool,
}

/// Frames a second a lip-reading stream decodes (the lip encoder's rate).
pub const LIP_FPS: f32 = 25.0;

impl Capabilities {
    /// What TRANSCRIBE reads on this server, for error messages.
    fn transcribe_inputs(&self) -> String {
        let mut t = Vec::new();
        if self.transcribe {
            t.push("MODALITIES_AUDIO");
        }
        if self.lips.video {
            t.push("MODALITIES_VIDEO");
        }
        if self.lips.audio_video {
            t.push("MODALITIES_AUDIO_VIDEO");
        }
        t.join(", ")
    }

    /// The tasks this server runs, for error messages.
    fn tasks(&self) -> String {
        let mut t = vec!["SEGMENTS"];
        if self.transcribe || self.lips.video || self.lips.audio_video {
            t.push("TRANSCRIBE");
        }
        if self.caption.is_some() {
            t.push("CAPTION");
        }
        t.join(", ")
    }
}

/// Longest segment a TRANSCRIBE session may ask for (Whisper's 30 s window).
pub const MAX_TRANSCRIBE_SEGMENT_MS: u32 = 30_000;

/// Checks `config` against the server's defaults and limits.
pub fn validate(
    config: pb::StreamConfig,
    defaults: &SessionDefaults,
    caps: &Capabilities,
) -> Result<ValidConfig, SessionError> {
    let model_name = caps.model_name.as_str();
    let task = match pb::Task::try_from(config.task) {
        Ok(pb::Task::Unspecified | pb::Task::Segments) => Task::Segments,
        Ok(pb::Task::Transcribe) => Task::Transcribe,
        Ok(pb::Task::Caption) => Task::Caption,
        Err(_) => return Err(bad("task", format!("unknown task {}", config.task))),
    };
    let modalities = pb::Modalities::try_from(config.modalities)
        .map_err(|_| bad("modalities", format!("unknown value {}", config.modalities)))?;
    let (audio, video) = match modalities {
        pb::Modalities::Unspecified if task == Task::Caption => (false, true),
        pb::Modalities::Unspecified | pb::Modalities::Audio => (true, false),
        pb::Modalities::Video => (false, true),
        pb::Modalities::AudioVideo => (true, true),
    };
    let o = config.options.clone().unwrap_or_default();
    if !o.model.is_empty() && o.model != model_name {
        return Err(SessionError::not_found(format!(
            "StreamConfig.options.model: no model named {} on this server (available: {model_name:?})",
            quoted(&o.model)
        )));
    }
    match task {
        Task::Segments if !audio => {
            return Err(bad(
                "modalities",
                "task SEGMENTS finds speech in the audio, so the modalities must include audio",
            ));
        }
        Task::Transcribe if !caps.transcribe && caps.lips == LipCaps::default() => {
            return Err(SessionError::unsupported(format!(
                "task TRANSCRIBE needs a model bundle with an audio or lip encoder (serve --bundle DIR; [audio] or [lip] in its avlm.toml), and this server has none; it serves {}",
                caps.tasks()
            )));
        }
        Task::Transcribe if !audio && !caps.lips.video => {
            return Err(SessionError::precondition(format!(
                "StreamConfig.modalities: MODALITIES_VIDEO transcribes from the lips alone, and this server's model does not ({}); it transcribes {}",
                if caps.lips.audio_video { "it reads lips only together with the audio" } else { "it has no lip encoder: no [lip] in its avlm.toml" },
                caps.transcribe_inputs()
            )));
        }
        Task::Transcribe
            if audio && video && !caps.lips.audio_video && !o.captions.unwrap_or(false) =>
        {
            return Err(SessionError::precondition(format!(
                "StreamConfig.modalities: MODALITIES_AUDIO_VIDEO transcribes the audio with the lips, and this server's model does not ({}); it transcribes {}; ask for MODALITIES_AUDIO, or set options.captions to caption the video beside the transcript",
                if caps.lips.video { "it reads lips only from the video alone" } else { "it has no lip encoder: no [lip] in its avlm.toml" },
                caps.transcribe_inputs()
            )));
        }
        Task::Transcribe if audio && !video && !caps.transcribe => {
            return Err(SessionError::precondition(format!(
                "StreamConfig.modalities: this server's model reads lips and has no audio-only prompt; it transcribes {}",
                caps.transcribe_inputs()
            )));
        }
        Task::Caption if caps.caption.is_none() => {
            return Err(SessionError::unsupported(format!(
                "task CAPTION needs a model bundle with a vision encoder ([vision] in its avlm.toml), and this server has none; it serves {}",
                caps.tasks()
            )));
        }
        Task::Caption if !video => {
            return Err(bad(
                "modalities",
                "task CAPTION describes the video: the modalities must include video",
            ));
        }
        Task::Segments | Task::Transcribe | Task::Caption => {}
    }
    if task == Task::Caption && o.captions == Some(false) {
        return Err(bad(
            "options.captions",
            "false contradicts task CAPTION (leave it unset)",
        ));
    }
    let captioning = task == Task::Caption || o.captions.unwrap_or(false);
    let lips = task == Task::Transcribe
        && video
        && if audio {
            caps.lips.audio_video
        } else {
            caps.lips.video
        };
    let captions = if captioning {
        let Some((defaults, default_fps)) = caps.caption else {
            return Err(SessionError::unsupported(format!(
                "StreamConfig.options.captions: this server's model has no vision encoder ([vision] in its avlm.toml); it serves {}",
                caps.tasks()
            )));
        };
        if !video {
            return Err(bad(
                "options.captions",
                "captions describe the video: the modalities must include video",
            ));
        }
        let fps = o.caption_fps.unwrap_or(default_fps);
        if !(fps > 0.0 && fps <= MAX_CAPTION_FPS) {
            return Err(bad(
                "options.caption_fps",
                format!("{fps} is outside (0, {MAX_CAPTION_FPS}]"),
            ));
        }
        let threshold = o.caption_threshold.unwrap_or(defaults.threshold);
        if !(threshold > 0.0 && threshold < 1.0) {
            return Err(bad(
                "options.caption_threshold",
                format!("{threshold} is outside (0, 1)"),
            ));
        }
        let max_tokens = in_range(
            "options.caption_max_tokens",
            o.caption_max_tokens
                .unwrap_or(defaults.max_new_tokens as u32),
            1,
            MAX_CAPTION_TOKENS,
            "",
        )?;
        Some(CaptionConfig {
            settings: CaptionSettings {
                threshold,
                max_new_tokens: max_tokens as usize,
            },
            fps,
        })
    } else {
        for (field, set) in [
            ("caption_fps", o.caption_fps.is_some()),
            ("caption_threshold", o.caption_threshold.is_some()),
            ("caption_max_tokens", o.caption_max_tokens.is_some()),
        ] {
            if set {
                return Err(bad(
                    &format!("options.{field}"),
                    "only applies when captioning (task CAPTION or options.captions)",
                ));
            }
        }
        None
    };

    let input = match config.input.clone() {
        None => InputSpec::Container {
            format_hint: None,
            audio_track: None,
        },
        Some(pb::stream_config::Input::Container(c)) => {
            let format_hint = if c.format_hint.is_empty() {
                None
            } else {
                let h = c.format_hint.trim();
                // check_hint names what it refuses: never a huge string.
                if h.len() > 64 {
                    return Err(bad(
                        "container.format_hint",
                        format!("{} is not an FFmpeg demuxer name", quoted(h)),
                    ));
                }
                crate::media::formats::check_hint(h)
                    .map_err(|why| bad("container.format_hint", why))?;
                Some(h.to_string())
            };
            InputSpec::Container {
                format_hint,
                audio_track: c.audio_track,
            }
        }
        Some(pb::stream_config::Input::RawPcm(raw)) => {
            let format = match pb::SampleFormat::try_from(raw.sample_format) {
                Ok(pb::SampleFormat::S16le) => RawSampleFormat::S16le,
                Ok(pb::SampleFormat::F32le) => RawSampleFormat::F32le,
                _ => {
                    return Err(bad(
                        "raw_pcm.sample_format",
                        "must be SAMPLE_FORMAT_S16LE or SAMPLE_FORMAT_F32LE",
                    ))
                }
            };
            if video {
                return Err(bad(
                    "modalities",
                    "raw PCM input carries audio only; send a container to include video",
                ));
            }
            InputSpec::RawPcm {
                format,
                sample_rate: in_range(
                    "raw_pcm.sample_rate",
                    raw.sample_rate,
                    8_000,
                    192_000,
                    " Hz",
                )?,
                channels: in_range("raw_pcm.channels", raw.channels, 1, 2, "")? as u16,
            }
        }
    };

    let threshold = o.vad_threshold.unwrap_or(defaults.vad_threshold);
    if !(threshold > 0.0 && threshold < 1.0) {
        return Err(bad(
            "options.vad_threshold",
            format!("{threshold} must lie strictly between 0 and 1"),
        ));
    }
    let min_silence_ms = in_range(
        "options.min_silence_ms",
        o.min_silence_ms.unwrap_or(defaults.min_silence_ms),
        32,
        10_000,
        " ms",
    )?;
    let min_speech_ms = in_range(
        "options.min_speech_ms",
        o.min_speech_ms.unwrap_or(defaults.min_speech_ms),
        0,
        10_000,
        " ms",
    )?;
    let pre_roll_ms = in_range(
        "options.pre_roll_ms",
        o.pre_roll_ms.unwrap_or(defaults.pre_roll_ms),
        0,
        2_000,
        " ms",
    )?;
    let max_segment_ms = in_range(
        "options.max_segment_ms",
        o.max_segment_ms.unwrap_or(defaults.max_segment_ms),
        1_000,
        600_000,
        " ms",
    )?;
    if task == Task::Transcribe && max_segment_ms > MAX_TRANSCRIBE_SEGMENT_MS {
        return Err(bad(
            "options.max_segment_ms",
            format!("{max_segment_ms} ms is longer than the {MAX_TRANSCRIBE_SEGMENT_MS} ms the audio encoder takes at once"),
        ));
    }
    let stats_interval_ms = in_range(
        "options.stats_interval_ms",
        o.stats_interval_ms.unwrap_or(defaults.stats_interval_ms),
        0,
        3_600_000,
        " ms",
    )?;
    let video_fps = match &captions {
        _ if lips => {
            if o.video_fps.is_some_and(|f| f != LIP_FPS) {
                return Err(bad(
                    "options.video_fps",
                    format!("a lip-reading stream decodes video at {LIP_FPS} frames/s (the lip encoder's rate); leave video_fps unset"),
                ));
            }
            LIP_FPS
        }
        Some(c) => {
            if o.video_fps.is_some_and(|f| f != c.fps) {
                return Err(bad(
                    "options.video_fps",
                    "a captioning session decodes video at options.caption_fps; leave video_fps unset",
                ));
            }
            c.fps
        }
        None => o.video_fps.unwrap_or(defaults.video_fps),
    };
    if !(video_fps > 0.0 && video_fps <= 60.0) {
        return Err(bad(
            "options.video_fps",
            format!("{video_fps} is outside (0, 60]"),
        ));
    }
    if lips && (o.video_width.is_some() || o.video_height.is_some()) {
        return Err(bad(
            if o.video_width.is_some() { "options.video_width" } else { "options.video_height" },
            "a lip-reading stream decodes frames as they come (shrunk to fit 640x640, aspect kept) so faces are found at the source's detail; leave video_width and video_height unset",
        ));
    }
    let default_side = |side: u32| {
        if captions.is_some() || lips {
            CAPTION_FRAME_BOX
        } else {
            side
        }
    };
    let video_width = in_range(
        "options.video_width",
        o.video_width.unwrap_or(default_side(defaults.video_width)),
        16,
        MAX_VIDEO_SIDE,
        " px",
    )?;
    let video_height = in_range(
        "options.video_height",
        o.video_height
            .unwrap_or(default_side(defaults.video_height)),
        16,
        MAX_VIDEO_SIDE,
        " px",
    )?;

    let endpoint = EndpointConfig {
        threshold,
        min_speech_s: f64::from(min_speech_ms) / 1e3,
        min_silence_s: f64::from(min_silence_ms) / 1e3,
        pre_roll_s: f64::from(pre_roll_ms) / 1e3,
        post_roll_s: (f64::from(pre_roll_ms) / 1e3).min(0.05),
        max_segment_s: f64::from(max_segment_ms) / 1e3,
    };
    let decode = DecodeSpec {
        input,
        audio,
        video: video.then_some(VideoSpec {
            fps: f64::from(video_fps),
            width: video_width,
            height: video_height,
            keep_aspect: captions.is_some() || lips,
        }),
    };
    let effective = pb::StreamConfig {
        task: match task {
            Task::Segments => pb::Task::Segments,
            Task::Transcribe => pb::Task::Transcribe,
            Task::Caption => pb::Task::Caption,
        } as i32,
        modalities: match (audio, video) {
            (true, true) => pb::Modalities::AudioVideo,
            (false, true) => pb::Modalities::Video,
            _ => pb::Modalities::Audio,
        } as i32,
        // The input as it will be read (a format hint trimmed).
        input: Some(match (&decode.input, config.input) {
            (
                InputSpec::Container {
                    format_hint,
                    audio_track,
                },
                _,
            ) => pb::stream_config::Input::Container(pb::ContainerInput {
                format_hint: format_hint.clone().unwrap_or_default(),
                audio_track: *audio_track,
            }),
            (_, Some(raw)) => raw,
            (_, None) => pb::stream_config::Input::Container(pb::ContainerInput::default()),
        }),
        options: Some(pb::StreamOptions {
            vad_threshold: Some(threshold),
            min_silence_ms: Some(min_silence_ms),
            min_speech_ms: Some(min_speech_ms),
            pre_roll_ms: Some(pre_roll_ms),
            max_segment_ms: Some(max_segment_ms),
            partial_results: Some(o.partial_results.unwrap_or(false)),
            model: model_name.to_string(),
            video_fps: Some(video_fps),
            video_width: Some(video_width),
            video_height: Some(video_height),
            stats_interval_ms: Some(stats_interval_ms),
            whole_utterance: Some(o.whole_utterance.unwrap_or(false)),
            partial_interval_ms: o
                .partial_interval_ms
                .or(Some(crate::config::DEFAULT_PARTIAL_INTERVAL_MS)),
            captions: Some(captions.is_some()),
            caption_fps: captions.map(|c| c.fps),
            caption_threshold: captions.map(|c| c.settings.threshold),
            caption_max_tokens: captions.map(|c| c.settings.max_new_tokens as u32),
            resumable: Some(o.resumable.unwrap_or(false)),
        }),
    };
    let whole_utterance = o.whole_utterance.unwrap_or(false);
    if whole_utterance && task != Task::Transcribe {
        return Err(bad(
            "options.whole_utterance",
            "only applies to task TRANSCRIBE",
        ));
    }
    let partial_interval_ms = in_range(
        "options.partial_interval_ms",
        o.partial_interval_ms
            .unwrap_or(crate::config::DEFAULT_PARTIAL_INTERVAL_MS),
        100,
        10_000,
        " ms",
    )?;
    let partials = o.partial_results.unwrap_or(false);
    if partials && (task != Task::Transcribe || whole_utterance) {
        return Err(bad(
            "options.partial_results",
            "only applies to task TRANSCRIBE with voice activity segmentation",
        ));
    }
    Ok(ValidConfig {
        task,
        whole_utterance,
        partial_interval_s: partials.then_some(f64::from(partial_interval_ms) / 1e3),
        decode,
        endpoint,
        stats_interval_s: f64::from(stats_interval_ms) / 1e3,
        captions,
        lips,
        resumable: o.resumable.unwrap_or(false),
        effective,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Validation as a client sees it: errors through the one status map.
    fn check(config: pb::StreamConfig) -> Result<ValidConfig, tonic::Status> {
        validate(
            config,
            &SessionDefaults::default(),
            &Capabilities {
                model_name: "default".into(),
                transcribe: false,
                lips: LipCaps::default(),
                caption: None,
            },
        )
        .map_err(tonic::Status::from)
    }

    fn transcribe(
        modalities: pb::Modalities,
        captions: bool,
        caps: &Capabilities,
    ) -> Result<ValidConfig, tonic::Status> {
        let config = pb::StreamConfig {
            task: pb::Task::Transcribe as i32,
            modalities: modalities as i32,
            options: Some(pb::StreamOptions {
                captions: captions.then_some(true),
                ..Default::default()
            }),
            ..Default::default()
        };
        validate(config, &SessionDefaults::default(), caps).map_err(tonic::Status::from)
    }

    #[test]
    fn transcribing_video_needs_a_model_that_reads_lips() {
        let audio_only = Capabilities {
            model_name: "default".into(),
            transcribe: true,
            lips: LipCaps::default(),
            caption: Some((
                CaptionSettings {
                    threshold: 0.7,
                    max_new_tokens: 16,
                },
                2.0,
            )),
        };
        for m in [pb::Modalities::Video, pb::Modalities::AudioVideo] {
            let e = transcribe(m, false, &audio_only).unwrap_err();
            assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{m:?}");
            assert!(e.message().contains("no lip encoder"), "{}", e.message());
            assert!(e.message().contains("MODALITIES_AUDIO"), "{}", e.message());
        }
        // audio and video with captions: the video is captioned, the audio transcribed
        let v = transcribe(pb::Modalities::AudioVideo, true, &audio_only).unwrap();
        assert!(!v.lips && v.captions.is_some());

        let avsr = Capabilities {
            lips: LipCaps {
                video: false,
                audio_video: true,
            },
            transcribe: false,
            ..audio_only.clone()
        };
        let v = transcribe(pb::Modalities::AudioVideo, false, &avsr).unwrap();
        assert!(v.lips && v.decode.audio);
        let video = v.decode.video.unwrap();
        assert_eq!(video.fps, f64::from(LIP_FPS));
        assert!(video.keep_aspect);
        // with captions too, the frames still come at the lips' rate
        let v = transcribe(pb::Modalities::AudioVideo, true, &avsr).unwrap();
        assert!(v.lips && v.captions.is_some());
        assert_eq!(v.decode.video.unwrap().fps, f64::from(LIP_FPS));
        let e = transcribe(pb::Modalities::Video, false, &avsr).unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(
            e.message().contains("only together with the audio"),
            "{}",
            e.message()
        );
        let e = transcribe(pb::Modalities::Audio, false, &avsr).unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(
            e.message().contains("MODALITIES_AUDIO_VIDEO"),
            "{}",
            e.message()
        );

        let vsr = Capabilities {
            lips: LipCaps {
                video: true,
                audio_video: false,
            },
            ..avsr
        };
        let v = transcribe(pb::Modalities::Video, false, &vsr).unwrap();
        assert!(v.lips && !v.decode.audio);
        let mut config = pb::StreamConfig {
            task: pb::Task::Transcribe as i32,
            modalities: pb::Modalities::Video as i32,
            ..Default::default()
        };
        config.options = Some(pb::StreamOptions {
            video_fps: Some(10.0),
            ..Default::default()
        });
        let e = validate(config, &SessionDefaults::default(), &vsr)
            .map_err(tonic::Status::from)
            .unwrap_err();
        assert!(e.message().contains("25 frames/s"), "{}", e.message());
        // a frame size would turn any square video into "mouth crops"
        let config = pb::StreamConfig {
            task: pb::Task::Transcribe as i32,
            modalities: pb::Modalities::Video as i32,
            options: Some(pb::StreamOptions {
                video_width: Some(96),
                video_height: Some(96),
                ..Default::default()
            }),
            ..Default::default()
        };
        let e = validate(config, &SessionDefaults::default(), &vsr)
            .map_err(tonic::Status::from)
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message().contains("options.video_width"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn empty_config_means_segments_of_container_audio() {
        let v = check(pb::StreamConfig::default()).unwrap();
        assert_eq!(v.task, Task::Segments);
        assert!(v.decode.audio && v.decode.video.is_none());
        assert_eq!(
            v.decode.input,
            InputSpec::Container {
                format_hint: None,
                audio_track: None
            }
        );
        let options = v.effective.options.unwrap();
        assert_eq!(options.min_silence_ms, Some(500));
        assert_eq!(options.whole_utterance, Some(false));
    }

    #[test]
    fn the_echo_shows_the_hint_as_used() {
        let config = pb::StreamConfig {
            input: Some(pb::stream_config::Input::Container(pb::ContainerInput {
                format_hint: " webm ".into(),
                audio_track: Some(1),
            })),
            ..Default::default()
        };
        let v = check(config).unwrap();
        assert_eq!(
            v.effective.input,
            Some(pb::stream_config::Input::Container(pb::ContainerInput {
                format_hint: "webm".into(),
                audio_track: Some(1),
            }))
        );
    }

    #[test]
    fn out_of_range_options_name_the_field() {
        let c = pb::StreamConfig {
            options: Some(pb::StreamOptions {
                vad_threshold: Some(1.5),
                ..Default::default()
            }),
            ..Default::default()
        };
        let e = check(c).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("vad_threshold"), "{}", e.message());
    }

    #[test]
    fn raw_pcm_needs_a_sample_format_and_sane_rate() {
        let mut c = pb::StreamConfig {
            input: Some(pb::stream_config::Input::RawPcm(pb::RawPcmInput {
                sample_format: 0,
                sample_rate: 16_000,
                channels: 1,
            })),
            ..Default::default()
        };
        assert!(check(c.clone())
            .unwrap_err()
            .message()
            .contains("sample_format"));
        c.input = Some(pb::stream_config::Input::RawPcm(pb::RawPcmInput {
            sample_format: pb::SampleFormat::S16le as i32,
            sample_rate: 1_000,
            channels: 1,
        }));
        assert!(check(c).unwrap_err().message().contains("sample_rate"));
    }

    #[test]
    fn long_client_strings_are_quoted_cut_short() {
        assert_eq!(quoted("webm"), "\"webm\"");
        let long = "x".repeat(100_000);
        let q = quoted(&long);
        assert!(q.len() < 100 && q.ends_with("(100000 bytes)"), "{q}");
        let config = pb::StreamConfig {
            options: Some(pb::StreamOptions {
                model: long.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let err = check(config).unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
        assert!(err.message().len() < 300, "{}", err.message());
    }

    #[test]
    fn unknown_model_is_not_found() {
        let c = pb::StreamConfig {
            options: Some(pb::StreamOptions {
                model: "llama-70b".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(check(c).unwrap_err().code(), tonic::Code::NotFound);
    }
}
