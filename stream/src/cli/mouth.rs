//! `avlm mouth INPUT --out crops.mp4`: the live mouth crops of a video file
//! (BlazeFace, then auto_avsr's mouth region of interest), written as 96x96
//! H.264 (libx264, yuv420p) at 25 fps in MP4, the format auto_avsr's
//! preparation writes (torchvision's `write_video`), so they can be checked by
//! eye or fed to a lip reader as pre-cropped clips.
//!
//! The file goes through the server's own ingest: its bytes are written into
//! the byte pipe the decoder reads, never opened by a demuxer.

use std::path::PathBuf;
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use avlm_encoders::face::FaceDetector;
use avlm_encoders::mouth::{MouthConfig, MouthCrop, MouthStats, MouthTracker, CROP};
use avlm_stream::media::pipe::byte_pipe;
use avlm_stream::media::{
    self, DecodeMeter, DecodeSpec, InputSpec, MediaItem, MediaSink, VideoSpec,
};
use ffmpeg::format::Pixel;
use ffmpeg::{codec, encoder, format, frame, software, Packet, Rational};
use ffmpeg_next as ffmpeg;
use tokio::io::AsyncReadExt;

use super::paths;

/// Where tools/setup.sh puts the face detector, inside `.avlm`.
pub const FACE_MODEL: &str = "models/face_detection_back_256x256.onnx";
/// Decoded frames larger than this box are shrunk to fit (aspect kept).
const MAX_SIDE: u32 = 1920;

#[derive(Debug, clap::Args)]
pub struct MouthArgs {
    /// Video file (any container FFmpeg demuxes that streams: WebM, MKV, MPEG-TS, fragmented
    /// or faststart MP4, ...).
    #[arg(value_name = "INPUT")]
    pub input: PathBuf,
    /// The MP4 to write.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// BlazeFace ONNX model [default: .avlm/models/face_detection_back_256x256.onnx].
    #[arg(long, env = "AVLM_FACE_MODEL")]
    pub face_model: Option<PathBuf>,
    /// ONNX Runtime shared library [default: .avlm/lib/libonnxruntime.so.1.31.1].
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_lib: Option<PathBuf>,
    /// Threads for the face detector (the decoder has its own; on 2 cores, 1 is fastest).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Longest gap without a face (frames at 25 fps) that is interpolated; longer gaps hold
    /// the last face.
    #[arg(long, default_value_t = 25)]
    pub max_gap: usize,
}

pub async fn run(args: MouthArgs) -> anyhow::Result<()> {
    let ort = paths::resolve(args.ort_lib.clone(), avlm_stream::config::ORT_LIB);
    let model = paths::resolve(args.face_model.clone(), FACE_MODEL);
    let mut file = tokio::fs::File::open(&args.input)
        .await
        .with_context(|| format!("cannot open {}", args.input.display()))?;
    let (mut writer, reader) = byte_pipe(1 << 20);
    let (tx, rx) = sync_channel(16);
    let spec = DecodeSpec {
        input: InputSpec::Container {
            format_hint: None,
            audio_track: None,
        },
        audio: false,
        video: Some(VideoSpec {
            fps: 25.0,
            width: MAX_SIDE,
            height: MAX_SIDE,
            keep_aspect: true,
        }),
    };
    let sink = MediaSink {
        tx,
        meter: Arc::new(DecodeMeter::default()),
    };
    let decoder = std::thread::Builder::new()
        .name("avlm-mouth-decode".into())
        .spawn(move || media::decode(&spec, reader, sink))
        .context("cannot start the decoder thread")?;
    let feeder = tokio::spawn(async move {
        let mut buf = vec![0u8; 1 << 16];
        let result: std::io::Result<()> = async {
            loop {
                let n = file.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                if writer.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            Ok(())
        }
        .await;
        writer.close();
        result
    });
    let config = MouthConfig {
        max_gap: args.max_gap,
        ..MouthConfig::default()
    };
    let out = args.out.clone();
    let threads = args.threads;
    let work = tokio::task::spawn_blocking(move || -> anyhow::Result<(MouthStats, f64, f64)> {
        avlm_encoders::runtime::init(&ort)?;
        let mut detector = FaceDetector::load(&model, threads)?;
        let mut tracker = MouthTracker::new(config);
        let mut mp4: Option<Mp4Writer> = None;
        let mut write = |crops: Vec<MouthCrop>| -> anyhow::Result<()> {
            for c in crops {
                if mp4.is_none() {
                    mp4 = Some(Mp4Writer::create(&out)?);
                }
                if let Some(w) = mp4.as_mut() {
                    w.write(&c.rgb)?;
                }
            }
            Ok(())
        };
        let started = Instant::now();
        // Time in the detector and tracker alone (not decoding or encoding).
        let mut roi_s = 0.0;
        for item in rx {
            if let MediaItem::Video(frame) = item {
                let t = Instant::now();
                let crops = tracker.push(&frame, &mut detector)?;
                roi_s += t.elapsed().as_secs_f64();
                write(crops)?;
            }
        }
        let t = Instant::now();
        let crops = tracker.finish();
        roi_s += t.elapsed().as_secs_f64();
        write(crops)?;
        let seconds = started.elapsed().as_secs_f64();
        match mp4 {
            Some(w) => w.finish()?,
            None => anyhow::bail!("no video frames were decoded"),
        }
        Ok((tracker.stats(), seconds, roi_s))
    });
    let (stats, seconds, roi_s) = work.await.context("the mouth tracker stopped")??;
    match decoder.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => anyhow::bail!("{}: {e}", args.input.display()),
        Err(_) => anyhow::bail!("the decoder thread panicked"),
    }
    feeder
        .await
        .context("the file reader stopped")?
        .with_context(|| format!("cannot read {}", args.input.display()))?;
    println!(
        "{}: {} frames in, {} crops out at 25 fps ({:.2} s): face found in {}, interpolated or held in {}, no face in {}; {} frame-size change{}",
        args.out.display(),
        stats.frames_in,
        stats.slots,
        stats.slots as f64 / 25.0,
        stats.detected,
        stats.filled,
        stats.no_face,
        stats.size_changes,
        if stats.size_changes == 1 { "" } else { "s" },
    );
    println!(
        "  {:.1} crops/s end to end ({:.2} s); detector and tracker alone: {:.1} frames/s ({:.2} s, {} detector threads)",
        stats.slots as f64 / seconds.max(1e-9),
        seconds,
        stats.slots as f64 / roi_s.max(1e-9),
        roi_s,
        args.threads,
    );
    Ok(())
}

/// 96x96 RGB crops -> H.264 (libx264, yuv420p, CRF 18) in MP4 at 25 fps.
struct Mp4Writer {
    octx: format::context::Output,
    encoder: encoder::Video,
    scaler: software::scaling::Context,
    rgb: frame::Video,
    yuv: frame::Video,
    stream_base: Rational,
    next_pts: i64,
}

const TIME_BASE: Rational = Rational(1, 25);

impl Mp4Writer {
    fn create(path: &std::path::Path) -> anyhow::Result<Self> {
        media::container::init_ffmpeg().map_err(|e| anyhow::anyhow!("{e}"))?;
        let side = CROP as u32;
        let mut octx = format::output_as(path, "mp4")
            .with_context(|| format!("cannot create {}", path.display()))?;
        let codec = encoder::find_by_name("libx264")
            .context("FFmpeg has no libx264 encoder (Debian's ffmpeg has it)")?;
        let global_header = octx.format().flags().contains(format::Flags::GLOBAL_HEADER);
        let mut enc = codec::context::Context::new_with_codec(codec)
            .encoder()
            .video()?;
        enc.set_width(side);
        enc.set_height(side);
        enc.set_format(Pixel::YUV420P);
        enc.set_time_base(TIME_BASE);
        enc.set_frame_rate(Some(Rational(25, 1)));
        if global_header {
            enc.set_flags(codec::Flags::GLOBAL_HEADER);
        }
        let mut opts = ffmpeg::Dictionary::new();
        opts.set("crf", "18");
        opts.set("preset", "medium");
        let encoder = enc
            .open_as_with(codec, opts)
            .context("cannot open the libx264 encoder")?;
        {
            let mut ost = octx.add_stream(codec)?;
            ost.set_parameters(&encoder);
            ost.set_time_base(TIME_BASE);
            ost.set_rate(Rational(25, 1));
            ost.set_avg_frame_rate(Rational(25, 1));
        }
        octx.write_header()
            .with_context(|| format!("cannot write {}", path.display()))?;
        let stream_base = octx.stream(0).map(|s| s.time_base()).unwrap_or(TIME_BASE);
        let scaler = software::scaling::Context::get(
            Pixel::RGB24,
            side,
            side,
            Pixel::YUV420P,
            side,
            side,
            software::scaling::Flags::BILINEAR,
        )?;
        Ok(Mp4Writer {
            octx,
            encoder,
            scaler,
            rgb: frame::Video::new(Pixel::RGB24, side, side),
            yuv: frame::Video::empty(),
            stream_base,
            next_pts: 0,
        })
    }

    fn write(&mut self, rgb: &[u8]) -> anyhow::Result<()> {
        let row = CROP * 3;
        let stride = self.rgb.stride(0);
        let plane = self.rgb.data_mut(0);
        for (y, src) in rgb.chunks_exact(row).enumerate() {
            plane[y * stride..y * stride + row].copy_from_slice(src);
        }
        self.scaler.run(&self.rgb, &mut self.yuv)?;
        self.yuv.set_pts(Some(self.next_pts));
        self.next_pts += 1;
        self.encoder.send_frame(&self.yuv)?;
        self.drain()
    }

    fn drain(&mut self) -> anyhow::Result<()> {
        let mut packet = Packet::empty();
        while self.encoder.receive_packet(&mut packet).is_ok() {
            packet.set_stream(0);
            packet.rescale_ts(TIME_BASE, self.stream_base);
            packet.write_interleaved(&mut self.octx)?;
        }
        Ok(())
    }

    fn finish(mut self) -> anyhow::Result<()> {
        self.encoder.send_eof()?;
        self.drain()?;
        self.octx.write_trailer()?;
        Ok(())
    }
}
