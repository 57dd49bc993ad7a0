//! `avlm camera`: the live demo. Opens a camera and a microphone through
//! FFmpeg's input devices (or any FFmpeg input), codes them into a live
//! Matroska stream, sends it to a server (one started in this process by
//! default) and shows the transcript as it forms: the open segment's
//! partial text redrawn in place, finals scrolled above it with their times.
//! Ctrl-C ends the capture cleanly: the last words are still transcribed and
//! the subtitles written.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use avlm_proto as pb;
use avlm_stream::capture::{self, CaptureInput, CaptureSpec};
use avlm_stream::client::{self, ClientError, SendOptions, Source};

use super::print;
use super::serve::RuntimeArgs;

#[derive(Debug, clap::Args)]
pub struct CameraArgs {
    /// Camera [default: /dev/video0 on Linux, 0 on macOS]; `none` for sound only.
    #[arg(long)]
    pub video_device: Option<String>,
    /// Microphone [default: `default` on Linux, 0 on macOS].
    #[arg(long)]
    pub audio_device: Option<String>,
    /// FFmpeg input format of the camera [default: v4l2, avfoundation or dshow].
    #[arg(long)]
    pub video_format: Option<String>,
    /// FFmpeg input format of the microphone [default: alsa, avfoundation or dshow; or pulse].
    #[arg(long)]
    pub audio_format: Option<String>,
    /// List the capture devices FFmpeg can see, then exit.
    #[arg(long)]
    pub list_devices: bool,
    /// Capture any FFmpeg input instead of devices: a file (read at its own
    /// pace), a URL, or a lavfi graph with `--format lavfi`.
    #[arg(long, conflicts_with_all = ["video_device", "audio_device", "list_devices"])]
    pub input: Option<String>,
    /// FFmpeg input format of --input (e.g. lavfi, mpegts).
    #[arg(long, requires = "input")]
    pub format: Option<String>,
    /// FFmpeg input option KEY=VALUE for the inputs (repeatable), e.g.
    /// video_size=640x480, framerate=30, sample_rate=48000.
    #[arg(long = "input-option", value_parser = parse_key_value)]
    pub input_options: Vec<(String, String)>,
    /// Send sound only.
    #[arg(long)]
    pub no_video: bool,
    /// Video wider than this is scaled down before it is sent.
    #[arg(long, default_value_t = 640)]
    pub max_width: u32,
    /// Most video frames per second sent.
    #[arg(long, default_value_t = 15.0)]
    pub max_fps: f64,
    /// Server URL; without it a server is started in this process.
    #[arg(long, env = "AVLM_SERVER")]
    pub server: Option<String>,
    #[command(flatten)]
    pub credentials: super::credentials::Credentials,
    /// Show finals only, no partial text.
    #[arg(long)]
    pub no_partials: bool,
    /// No captions of the video (they are on when the video is captured and
    /// the server's model has a vision encoder).
    #[arg(long)]
    pub no_captions: bool,
    /// Do not resume the stream when the connection drops (by default the
    /// client reconnects with back-off and the server keeps the stream for
    /// its grace period, serve --resume-grace-s).
    #[arg(long)]
    pub no_resume: bool,
    /// Media time between partial re-decodes, in ms.
    #[arg(long)]
    pub partial_interval_ms: Option<u32>,
    /// Trailing silence that closes a segment, in ms.
    #[arg(long)]
    pub min_silence_ms: Option<u32>,
    /// Speech probability that opens a segment (0-1).
    #[arg(long)]
    pub vad_threshold: Option<f32>,
    /// Longest segment before it is split, in ms.
    #[arg(long)]
    pub max_segment_ms: Option<u32>,
    /// Model name (the server's default when absent).
    #[arg(long)]
    pub model: Option<String>,
    /// Print one JSON object per line per event instead of the live view.
    #[arg(long)]
    pub json: bool,
    /// Write the finals as SubRip subtitles to this file (also after Ctrl-C).
    #[arg(long)]
    pub srt: Option<PathBuf>,
    /// Write the finals as WebVTT subtitles to this file (also after Ctrl-C).
    #[arg(long)]
    pub vtt: Option<PathBuf>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// The platform's capture formats: (camera, microphone, also listed).
fn platform_formats() -> (&'static str, &'static str, &'static [&'static str]) {
    if cfg!(target_os = "macos") {
        ("avfoundation", "avfoundation", &["avfoundation"])
    } else if cfg!(windows) {
        ("dshow", "dshow", &["dshow"])
    } else {
        ("v4l2", "alsa", &["v4l2", "alsa", "pulse"])
    }
}

impl CameraArgs {
    fn spec(&self) -> CaptureSpec {
        let options = self.input_options.clone();
        let inputs = match &self.input {
            Some(url) => vec![CaptureInput {
                url: url.clone(),
                format: self.format.clone(),
                options,
            }],
            None => {
                let (vfmt, afmt, _) = platform_formats();
                let vfmt = self.video_format.clone().unwrap_or(vfmt.into());
                let afmt = self.audio_format.clone().unwrap_or(afmt.into());
                let video = match self.video_device.as_deref() {
                    Some("none") => None,
                    _ if self.no_video => None,
                    Some(d) => Some(d.to_string()),
                    None if cfg!(target_os = "macos") => Some("0".into()),
                    None if cfg!(windows) => None,
                    None => std::path::Path::new("/dev/video0")
                        .exists()
                        .then(|| "/dev/video0".to_string()),
                };
                let audio = self.audio_device.clone().or_else(|| {
                    if cfg!(target_os = "macos") {
                        Some("0".into())
                    } else if cfg!(windows) {
                        None
                    } else {
                        Some("default".into())
                    }
                });
                let device = |fmt: &str, kind: &str, name: String| {
                    let url = match fmt {
                        // avfoundation names "VIDEO:AUDIO"; dshow "video=NAME".
                        "avfoundation" if kind == "video" => format!("{name}:none"),
                        "avfoundation" => format!(":{name}"),
                        "dshow" => format!("{kind}={name}"),
                        _ => name,
                    };
                    CaptureInput {
                        url,
                        format: Some(fmt.to_string()),
                        options: options.clone(),
                    }
                };
                let mut inputs = Vec::new();
                if let Some(v) = video {
                    inputs.push(device(&vfmt, "video", v));
                }
                if let Some(a) = audio {
                    inputs.push(device(&afmt, "audio", a));
                }
                inputs
            }
        };
        CaptureSpec {
            inputs,
            audio: true,
            video: !self.no_video,
            max_width: self.max_width,
            max_fps: self.max_fps,
        }
    }

    fn config(&self, captions: bool, lips: bool) -> pb::StreamConfig {
        pb::StreamConfig {
            task: pb::Task::Transcribe as i32,
            modalities: if captions || lips {
                pb::Modalities::AudioVideo
            } else {
                pb::Modalities::Audio
            } as i32,
            input: Some(pb::stream_config::Input::Container(pb::ContainerInput {
                format_hint: "matroska".into(),
                audio_track: None,
            })),
            options: Some(pb::StreamOptions {
                vad_threshold: self.vad_threshold,
                min_silence_ms: self.min_silence_ms,
                max_segment_ms: self.max_segment_ms,
                model: self.model.clone().unwrap_or_default(),
                partial_results: Some(!self.no_partials),
                partial_interval_ms: self.partial_interval_ms,
                captions: captions.then_some(true),
                resumable: Some(!self.no_resume),
                ..Default::default()
            }),
        }
    }
}

fn list_devices() {
    let (_, _, formats) = platform_formats();
    for fmt in formats {
        match capture::list_devices(fmt) {
            Ok(devices) if devices.is_empty() => println!("{fmt}: no devices found"),
            Ok(devices) => {
                println!("{fmt}:");
                for (name, description) in devices {
                    println!("  {name:<24} {description}");
                }
            }
            Err(e) => println!("{fmt}: cannot list devices ({e})"),
        }
    }
    if cfg!(target_os = "linux") {
        let mut nodes: Vec<_> = std::fs::read_dir("/dev")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("video"))
            })
            .collect();
        nodes.sort();
        if nodes.is_empty() {
            println!("cameras: no /dev/video* nodes");
        } else {
            let names: Vec<_> = nodes.iter().map(|p| p.display().to_string()).collect();
            println!("cameras: {}", names.join(" "));
        }
    }
}

pub async fn run(args: CameraArgs) -> anyhow::Result<i32> {
    if args.list_devices {
        list_devices();
        return Ok(0);
    }
    let spec = args.spec();
    if spec.inputs.is_empty() {
        anyhow::bail!(
            "no capture device: pass --audio-device (and --video-device; \
             `avlm camera --list-devices` shows them), or --input FILE"
        );
    }
    // A wrong device or file is reported before any model loads.
    let probe = spec.clone();
    if let Err(e) = tokio::task::spawn_blocking(move || capture::check(&probe)).await? {
        let code = super::stream::finish(Err(ClientError::Source(e)), args.json);
        if args.input.is_none() {
            eprintln!(
                "hint: `avlm camera --list-devices` shows the cameras and microphones FFmpeg \
                 can open here (pass one with --video-device / --audio-device); \
                 `--input FILE` runs the demo on a recording instead"
            );
        }
        return code;
    }
    let (url, local) = match &args.server {
        Some(url) => (args.credentials.target(url), None),
        None => {
            eprintln!("loading the model…");
            let config = args
                .runtime
                .server_config(1, avlm_stream::config::DEFAULT_MAX_MESSAGE_BYTES);
            let server = avlm_stream::server::start(config, "127.0.0.1:0".parse()?).await?;
            (server.url().as_str().into(), Some(server))
        }
    };
    let inputs: Vec<_> = spec
        .inputs
        .iter()
        .map(|i| match &i.format {
            Some(f) => format!("{} ({f})", i.url),
            None => i.url.clone(),
        })
        .collect();
    eprintln!(
        "capturing {} — speak; Ctrl-C stops and keeps the last words",
        inputs.join(" + ")
    );
    let send = SendOptions {
        chunk_bytes: 16 * 1024,
        realtime: false,
        stop: Some(super::stop_on_ctrl_c()),
    };
    // Captions when there is video and the server can describe it; the
    // lips read with the audio when its model does that.
    let info = match client::connect(&url).await {
        Ok(mut c) => c
            .get_info(pb::GetInfoRequest {})
            .await
            .map(|r| r.into_inner())
            .ok(),
        Err(_) => None,
    };
    let captions = spec.video
        && !args.no_captions
        && info
            .as_ref()
            .is_some_and(|i| i.tasks.contains(&(pb::Task::Caption as i32)));
    let lips = spec.video
        && info.as_ref().is_some_and(|i| {
            i.models.first().is_some_and(|m| {
                m.transcribe_modalities
                    .contains(&(pb::Modalities::AudioVideo as i32))
            })
        });
    let mut spec = spec;
    if lips {
        // the lip encoder reads 25 frames a second
        spec.max_fps = spec
            .max_fps
            .max(f64::from(avlm_stream::session::valid::LIP_FPS));
        eprintln!("reading lips with the audio (25 frames a second)");
    }
    let mut view = LiveView::new(args.json);
    let mut cues = avlm_stream::subtitles::CueCollector::default();
    let result = client::stream(
        &url,
        args.config(captions, lips),
        Source::Capture(spec),
        send,
        |msg| {
            cues.push(msg);
            view.show(msg);
        },
    )
    .await;
    view.clear_partial();
    if let Some(server) = local {
        server.shutdown().await?;
    }
    super::stream::write_subtitles(&cues.cues(), args.srt.as_deref(), args.vtt.as_deref())?;
    if !args.json {
        eprintln!("{} final(s), {} caption(s)", cues.finals(), cues.captions());
    }
    super::stream::finish(result, args.json)
}

/// The terminal view: finals as lines with times; on a terminal, the open
/// segment's partial text on the last line, redrawn in place.
struct LiveView {
    json: bool,
    tty: bool,
    partial_shown: bool,
}

impl LiveView {
    fn new(json: bool) -> Self {
        LiveView {
            json,
            tty: std::io::stdout().is_terminal(),
            partial_shown: false,
        }
    }

    fn show(&mut self, msg: &pb::ServerMessage) {
        use pb::server_message::Msg;
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        if self.json {
            let _ = writeln!(out, "{}", print::to_json(msg));
            let _ = out.flush();
            return;
        }
        match &msg.msg {
            Some(Msg::Partial(p)) if self.tty => {
                let text = format!("{}{}", p.stable_text, p.unstable_text);
                let width = terminal_width().saturating_sub(12).max(10);
                // Keep the newest words when the line is too long.
                let chars: Vec<char> = text.trim().chars().collect();
                let shown: String = chars[chars.len().saturating_sub(width)..].iter().collect();
                let stable_len = p.stable_text.trim_start().chars().count();
                let cut = chars.len().saturating_sub(width);
                let split = stable_len.saturating_sub(cut).min(shown.chars().count());
                let (stable, unstable): (String, String) = (
                    shown.chars().take(split).collect(),
                    shown.chars().skip(split).collect(),
                );
                let _ = write!(
                    out,
                    "\r\x1b[2K  {:>7}  {stable}{}",
                    clock(p.start_s),
                    print::dim(&unstable, print::colour())
                );
                self.partial_shown = true;
            }
            Some(Msg::Final(f)) => {
                if self.partial_shown {
                    let _ = write!(out, "\r\x1b[2K");
                    self.partial_shown = false;
                }
                let _ = writeln!(
                    out,
                    "[{} → {}] {}",
                    clock(f.start_s),
                    clock(f.end_s),
                    f.text.trim()
                );
            }
            Some(Msg::Caption(c)) => {
                if self.partial_shown {
                    let _ = write!(out, "\r\x1b[2K");
                    self.partial_shown = false;
                }
                let _ = writeln!(
                    out,
                    "[{}] {} {}",
                    clock(c.media_time_s),
                    avlm_stream::subtitles::CAPTION_MARK,
                    c.text.trim()
                );
            }
            _ => {}
        }
        let _ = out.flush();
    }

    fn clear_partial(&mut self) {
        if self.partial_shown {
            print!("\r\x1b[2K");
            let _ = std::io::stdout().flush();
            self.partial_shown = false;
        }
    }
}

/// `m:ss.s` (or `h:mm:ss.s`).
fn clock(s: f64) -> String {
    let tenths = (s.max(0.0) * 10.0).round() as u64;
    let (h, m, sec, t) = (
        tenths / 36_000,
        tenths / 600 % 60,
        tenths / 10 % 60,
        tenths % 10,
    );
    if h > 0 {
        format!("{h}:{m:02}:{sec:02}.{t}")
    } else {
        format!("{m}:{sec:02}.{t}")
    }
}

fn terminal_width() -> usize {
    #[cfg(unix)]
    {
        // SAFETY: TIOCGWINSZ fills a winsize struct we own.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        if unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0
            && ws.ws_col > 0
        {
            return usize::from(ws.ws_col);
        }
    }
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_formats_minutes_and_hours() {
        assert_eq!(clock(0.0), "0:00.0");
        assert_eq!(clock(75.26), "1:15.3");
        assert_eq!(clock(3600.0 + 61.0), "1:01:01.0");
    }

    #[test]
    fn input_options_parse_as_key_value() {
        assert_eq!(
            parse_key_value("video_size=640x480").unwrap(),
            ("video_size".into(), "640x480".into())
        );
        assert!(parse_key_value("novalue").is_err());
        assert!(parse_key_value("=x").is_err());
    }
}
