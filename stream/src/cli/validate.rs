//! `avlm validate BUNDLE`: load every part of a model bundle, check that the
//! shapes agree, run one utterance through it, and print a summary.

use std::path::PathBuf;
use std::time::Instant;

use avlm_projector::{Activation, Compression, ProjectorConfig, VisionTokens};
use avlm_stream::bundle::manifest::EncoderWindow;
use avlm_stream::bundle::LoadedBundle;
use avlm_stream::engine::{caption_frames, AsrPipeline, CaptionSettings, VisionFrontEnd};

use super::paths;
use super::serve::RuntimeArgs;

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// Bundle folder (containing avlm.toml) [default: .avlm/bundles/default].
    #[arg(value_name = "BUNDLE")]
    pub dir: Option<PathBuf>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

pub async fn run(args: ValidateArgs) -> anyhow::Result<()> {
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| paths::resolve(None, "bundles/default"));
    let ort = args.runtime.server_config(1, 1).ort_lib;
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        avlm_encoders::runtime::init(&ort)?;
        let started = Instant::now();
        let mut bundle = LoadedBundle::load(&dir, 2).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
        println!("{}", describe(&bundle));
        println!("  loaded in {:.2} s", started.elapsed().as_secs_f64());
        if let Some(parts) = bundle.vision.take() {
            // Two frames (grey, then a colour gradient) through the caption loop.
            let (front, format) = VisionFrontEnd::new(parts);
            let t = Instant::now();
            let frame = |f: &dyn Fn(u32, u32) -> [u8; 3]| {
                let (w, h) = (320u32, 180u32);
                let data = (0..h).flat_map(|y| (0..w).flat_map(move |x| f(x, y))).collect();
                avlm_encoders::Frame { width: w, height: h, stride: w as usize * 3, data, pts_s: 0.0 }
            };
            let frames = [
                (front.embed(&frame(&|_, _| [128, 128, 128]))?, 0.0),
                (front.embed(&frame(&|x, y| [(x % 256) as u8, (y * 255 / 180) as u8, 90]))?, 0.5),
            ];
            let settings = CaptionSettings { threshold: format.threshold, max_new_tokens: format.max_new_tokens };
            let out = caption_frames(&bundle.llm, &bundle.tokenizer, &bundle.stop_ids, &format, settings, &frames)?;
            for (i, o) in out.iter().enumerate() {
                println!(
                    "  caption smoke frame {i}: P(separator) {:.3}{}",
                    o.p_separator,
                    o.caption.as_ref().map(|c| format!(", said \u{201c}{c}\u{201d}")).unwrap_or_default()
                );
            }
            println!("  caption smoke run in {:.0} ms", t.elapsed().as_secs_f64() * 1e3);
        }
        if bundle.audio.is_none() {
            println!("ok (captions only: no audio encoder)");
            return Ok(());
        }
        // One second of a quiet tone end to end: every stage runs with the real shapes.
        let tone: Vec<f32> = (0..16_000).map(|i| 0.05 * (i as f32 * 0.1).sin()).collect();
        let mut pipeline = AsrPipeline::new(bundle)?;
        let t = pipeline.transcribe(&tone)?;
        println!(
            "  smoke run: 1.0 s of audio -> {} audio tokens, {} prompt tokens, {} new tokens in {:.0} ms",
            t.audio_tokens,
            t.prompt_tokens,
            t.tokens.len(),
            (t.times.mel + t.times.encoder + t.times.projector + t.times.prefill + t.times.decode).as_secs_f64() * 1e3
        );
        println!("ok");
        Ok(())
    })
    .await?
}

/// The bundle's parts in words, one per line.
fn describe(b: &LoadedBundle) -> String {
    let m = &b.manifest;
    let d = &m.decoding;
    let mut lines = vec![
        format!("bundle {} at {}", m.name, b.dir.display()),
        format!("  {}", m.description),
    ];
    match (&b.audio, &m.audio) {
        (Some(a), Some(section)) => {
            let window = match section.window {
                EncoderWindow::Utterance => "the utterance's own length",
                EncoderWindow::Padded30s => "padded to 30 s",
            };
            lines.push(format!(
                "  audio encoder: {} ({} mel bands -> width {}, window {window}{})",
                a.encoder.path().display(),
                a.encoder.n_mels(),
                a.encoder.dim(),
                if section.normalize_waveform {
                    ", waveform normalised"
                } else {
                    ""
                }
            ));
            lines.push(format!(
                "  audio projector: {}",
                projector(a.projector.config())
            ));
        }
        _ => lines.push("  no audio encoder: captions only".into()),
    }
    lines.push(format!("  LLM: {}", b.llm.describe()));
    lines.push(format!(
        "  tokenizer: {} tokens, stops at {}",
        b.tokenizer.vocab_size(),
        d.stop.join(" or ")
    ));
    lines.push(format!(
        "  KV cache: {} bytes per token, context {}",
        b.llm.config().kv_bytes_per_token(),
        m.llm.max_context
    ));
    let ctc = match (&b.ctc, &d.ctc_head) {
        (Some(_), Some(p)) => format!(
            ", joint CTC/attention (CTC weight {}, head {})",
            d.ctc_weight,
            p.display()
        ),
        _ => String::new(),
    };
    lines.push(format!(
        "  decoding: beam {} (partials {}), length penalty {}, up to {} new tokens{ctc}",
        d.beam_width,
        d.partial_beam_width.unwrap_or(d.beam_width),
        d.length_penalty,
        d.max_new_tokens
    ));
    if let Some(v) = &b.vision {
        let tokens = match v.tokens {
            VisionTokens::PooledGrid { grid } => {
                format!("the pooled vector + a {grid}x{grid} grid")
            }
            VisionTokens::Grid { grid } => format!("a {grid}x{grid} grid"),
            VisionTokens::PixelShuffle { factor } => format!("pixel shuffle by {factor}"),
        };
        let size = v.encoder.size();
        lines.push(format!(
            "  vision encoder: {} ({size}x{size} -> {} patches of width {}{}), tokens: {tokens}",
            v.encoder.path().display(),
            v.encoder.patches(),
            v.encoder.dim(),
            if v.encoder.has_pooled() {
                " + pooled"
            } else {
                ""
            }
        ));
        lines.push(format!(
            "  vision projector: {}",
            projector(v.projector.config())
        ));
        let f = &v.format;
        lines.push(format!(
            "  captions: {} frames/s, speak below P(separator) {}, up to {} tokens, KV window {} sink + {} recent positions",
            f.fps,
            f.threshold,
            f.max_new_tokens,
            f.system.len(),
            f.window
        ));
    }
    lines.join("\n")
}

/// A projector's shape in words.
fn projector(c: &ProjectorConfig) -> String {
    let compression = match c.compression {
        Compression::Stack { k } => format!("stacks {k} frames"),
        Compression::Pool { k } => format!("averages {k} frames"),
    };
    let activation = match c.activation {
        Activation::Relu => "ReLU",
        Activation::Gelu => "GELU",
    };
    let layers = if c.layers == 1 {
        format!("one linear layer {} -> {}", c.input_dim, c.output_dim)
    } else {
        format!(
            "{} -> {} -> {} with {activation}",
            c.input_dim, c.hidden_dim, c.output_dim
        )
    };
    let norm = if c.layer_norm { ", then LayerNorm" } else { "" };
    format!("{compression}, {layers}{norm}")
}
