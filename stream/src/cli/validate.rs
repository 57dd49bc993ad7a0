//! `avlm validate BUNDLE`: load every part of a model bundle, check that the
//! shapes agree, run one utterance through it, and print a summary.

use std::path::PathBuf;
use std::time::Instant;

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
        println!("{}", bundle.summary());
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
                    o.caption.as_ref().map(|c| format!(", said {c:?}")).unwrap_or_default()
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
