//! `avlm bench --parts lips`: the lip-reading path on this machine.
//! 1. mouth crops: a talking-face clip decoded at 25 fps through the face
//!    detector and mouth tracker, crops per second;
//! 2. the lip encoder in ms per second of video: the bundle's, and random
//!    AV-HuBERT Base / Large-sized ones built here (`--lip-sizes`);
//! 3. concurrent audio+video TRANSCRIBE streams at real-time pace: the
//!    Finals' latency from segment end, and how many streams keep up.
//!
//! The bundle is `--bundle` when it reads lips; otherwise the tiny random
//! Llama-AVSR-structured bundle of tests/golden/llama_avsr (its LLM is
//! tiny: it measures the video half, not an 8B LLM).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use avlm_encoders::LipEncoder;
use avlm_proto as pb;
use avlm_stream::bundle::Manifest;
use avlm_stream::client::{self, SendOptions, Source};
use avlm_stream::eval::clip::read_clip;

use super::paths;
use super::serve::RuntimeArgs;

/// Sizes of random lip encoders to time beside the bundle's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LipSize {
    Base,
    Large,
}

impl LipSize {
    fn config(self) -> serde_json::Value {
        let (d, layers, heads) = match self {
            LipSize::Base => (768, 12, 12),
            LipSize::Large => (1024, 24, 16),
        };
        serde_json::json!({
            "encoder_embed_dim": d,
            "encoder_layers": layers,
            "encoder_attention_heads": heads,
            "encoder_ffn_embed_dim": 4 * d,
            "layer_norm_first": true,
        })
    }
}

fn python() -> PathBuf {
    paths::resolve(None, "venv/bin/python")
}

/// A random AV-HuBERT lip encoder of `config` built with the checkout's converter.
fn build_lip_encoder(config: &serde_json::Value, seed: u64, out: &Path) -> anyhow::Result<()> {
    let cfg = out.with_extension("json");
    std::fs::write(&cfg, config.to_string())?;
    let status = Command::new(python())
        .arg(paths::in_checkout("tools/avsr/avhubert_onnx.py"))
        .args(["--random-seed", &seed.to_string()])
        .arg(out)
        .arg("--config")
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .status()?;
    anyhow::ensure!(
        status.success(),
        "tools/avsr/avhubert_onnx.py failed (run tools/setup.sh)"
    );
    Ok(())
}

/// The bundle to measure: `given` when it reads lips, else the tiny golden
/// Llama-AVSR bundle made whole in `work`.
fn lips_bundle(given: Option<&Path>, work: &Path) -> anyhow::Result<(PathBuf, String)> {
    if let Some(dir) = given {
        let m = Manifest::read(dir).map_err(|e| anyhow::anyhow!(e))?;
        if m.lip.is_some() {
            return Ok((dir.to_path_buf(), m.name));
        }
    }
    let golden = paths::in_checkout("tests/golden/llama_avsr");
    let src = golden.join("bundle");
    let dir = work.join("bundle");
    std::fs::create_dir_all(&dir)?;
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(golden.join("expected.json"))?)?;
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(golden.join("lip_config.json"))?)?;
    build_lip_encoder(
        &config,
        expected["lip_encoder"]["seed"].as_u64().unwrap_or(41),
        &dir.join("lip_encoder.onnx"),
    )?;
    let abs = |p: &str| format!("\"{}\"", src.join(p).display());
    let manifest = std::fs::read_to_string(src.join("avlm.toml"))?
        .replace("\"whisper_encoder.onnx\"", &abs("whisper_encoder.onnx"))
        .replace("\"projector.safetensors\"", &abs("projector.safetensors"))
        .replace("weights = \"llm\"", &format!("weights = {}", abs("llm")))
        .replace("\"llm/tokenizer.json\"", &abs("llm/tokenizer.json"))
        .replace(
            "\"../../../../.avlm/models/",
            &format!("\"{}/", paths::resolve(None, "models").display()),
        );
    std::fs::write(dir.join("avlm.toml"), manifest)?;
    Ok((
        dir,
        "tiny random Llama-AVSR (tests/golden/llama_avsr)".into(),
    ))
}

/// A face photo moving over a background with `audio`'s sound, `seconds` long.
fn talking_face(audio: &Path, seconds: f64, out: &Path) -> anyhow::Result<()> {
    let photo = paths::in_checkout("tests/golden/mouth/astronaut.ppm");
    let status = Command::new("ffmpeg")
        .args([
            "-y",
            "-loglevel",
            "error",
            "-loop",
            "1",
            "-framerate",
            "25",
            "-i",
        ])
        .arg(&photo)
        .arg("-i")
        .arg(audio)
        .args([
            "-filter_complex",
            "color=c=0x5a646e:s=640x360:r=25[bg];[0:v]scale=180:180[f];\
             [bg][f]overlay=x='200+60*sin(t/2)':y=60:shortest=1[v]",
            "-map",
            "[v]",
            "-map",
            "1:a",
            "-t",
            &seconds.to_string(),
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "libopus",
        ])
        .arg(out)
        .status()?;
    anyhow::ensure!(
        status.success(),
        "ffmpeg could not make the talking-face clip"
    );
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// One real-time audio+video TRANSCRIBE stream of `clip`: its Finals' latencies.
async fn av_stream(url: &str, clip: &Path) -> anyhow::Result<Vec<f64>> {
    let config = pb::StreamConfig {
        task: pb::Task::Transcribe as i32,
        modalities: pb::Modalities::AudioVideo as i32,
        input: Some(pb::stream_config::Input::Container(
            pb::ContainerInput::default(),
        )),
        options: Some(pb::StreamOptions {
            stats_interval_ms: Some(0),
            ..Default::default()
        }),
    };
    let mut latencies = Vec::new();
    client::stream(
        url,
        config,
        Source::File(clip.to_path_buf()),
        SendOptions {
            chunk_bytes: 16 * 1024,
            realtime: true,
            stop: None,
        },
        |m| {
            if let Some(pb::server_message::Msg::Final(f)) = &m.msg {
                latencies.push(f.decode_latency_s);
            }
        },
    )
    .await?;
    Ok(latencies)
}

pub async fn lips(
    runtime: &RuntimeArgs,
    streams: &[usize],
    input: Option<&Path>,
    sizes: &[LipSize],
) -> anyhow::Result<()> {
    let config = runtime.server_config(
        streams.iter().copied().max().unwrap_or(1),
        avlm_stream::config::DEFAULT_MAX_MESSAGE_BYTES,
    );
    avlm_encoders::runtime::init(&config.ort_lib)?;
    let work = std::env::temp_dir().join(format!("avlm-bench-lips-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let (bundle, name) = lips_bundle(config.bundle.as_deref(), &work)?;
    let manifest = Manifest::read(&bundle).map_err(|e| anyhow::anyhow!(e))?;
    let lip = manifest.lip.expect("lips_bundle gives a bundle with [lip]");
    let detector = bundle.join(&lip.face_detector);
    let clip = match input {
        Some(p) => p.to_path_buf(),
        None => {
            let out = work.join("talking_face.mkv");
            talking_face(&paths::in_checkout("samples/demo.webm"), 30.0, &out)?;
            out
        }
    };
    println!("lip reading: bundle {name}; clip {}", clip.display());

    // 1. Mouth crops (decoding included).
    let started = Instant::now();
    let media = read_clip(&clip, false, Some(&detector))
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    let wall = started.elapsed().as_secs_f64();
    let segment = media
        .lips
        .ok_or_else(|| anyhow::anyhow!("{} has no video frames", clip.display()))?;
    let faces = segment.faces;
    let lips = segment.clip;
    println!(
        "mouth crops: {} at 25 fps ({faces} with a face) in {wall:.2} s: {:.1} crops/s decoding included ({:.1}x real time)",
        lips.frames,
        lips.frames as f64 / wall,
        lips.frames as f64 / 25.0 / wall
    );

    // 2. Lip encoders, on one second (25 crops) of the clip.
    let second = 25.min(lips.frames);
    let crops = &lips.data[..second * 88 * 88];
    let mut encoders = vec![(
        format!("bundle's ({})", lip.encoder.display()),
        bundle.join(&lip.encoder),
    )];
    for &size in sizes {
        let path = work.join(format!("{size:?}.onnx").to_lowercase());
        eprintln!("building a random {size:?}-sized lip encoder...");
        build_lip_encoder(&size.config(), 7, &path)?;
        encoders.push((format!("random AV-HuBERT {size:?}"), path));
    }
    println!(
        "{:<48} {:>8} {:>18}",
        "lip encoder", "threads", "ms per s of video"
    );
    for (label, path) in &encoders {
        for threads in [1, 2] {
            let mut enc = LipEncoder::load(path, threads)?;
            enc.encode(crops, second)?; // warm-up
            let times: Vec<f64> = (0..5)
                .map(|_| {
                    let t = Instant::now();
                    enc.encode(crops, second).map(|_| t.elapsed().as_secs_f64())
                })
                .collect::<Result<_, _>>()?;
            println!(
                "{label:<48} {threads:>8} {:>18.0}",
                median(times) * 1e3 * 25.0 / second as f64
            );
        }
    }

    // 3. Concurrent real-time audio+video streams.
    let server = avlm_stream::server::start(
        avlm_stream::config::ServerConfig {
            bundle: Some(bundle.clone()),
            ..config
        },
        "127.0.0.1:0".parse()?,
    )
    .await?;
    let url = server.url();
    av_stream(&url, &clip).await?; // warm-up
    println!(
        "{:>7} {:>8} {:>24} {:>10}",
        "streams", "finals", "segment end→Final s", "wall/media"
    );
    println!("{:>7} {:>8} {:>24}", "", "", "p50    p95    max");
    let media_s = lips.frames as f64 / 25.0;
    let (mut single, mut sustained, mut behind) = (None, 0, false);
    for &n in streams {
        let started = Instant::now();
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let (url, clip) = (url.clone(), clip.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(700 * i as u64)).await;
                    av_stream(&url, &clip).await
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await??);
        }
        let ratio = started.elapsed().as_secs_f64() / (media_s + 0.7 * (n - 1) as f64);
        let p95 = percentile(&all, 0.95);
        let base = *single.get_or_insert(p95);
        let keeps_up = p95 <= 2.0 * base + 0.5 && ratio <= 1.2;
        behind |= !keeps_up;
        if !behind {
            sustained = n;
        }
        println!(
            "{n:>7} {:>8} {:>6.2} {:>6.2} {:>6.2}     {ratio:>10.2}{}",
            all.len(),
            percentile(&all, 0.5),
            p95,
            percentile(&all, 1.0),
            if keeps_up { "" } else { "  falls behind" }
        );
    }
    println!(
        "sustains {sustained} concurrent real-time audio+video stream(s) (Final p95 ≤ 2× single + 0.5 s, wall ≤ 1.2× media)"
    );
    server.shutdown().await?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
