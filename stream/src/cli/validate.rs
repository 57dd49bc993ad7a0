//! `avlm validate BUNDLE`: load every part of a model bundle, check that the
//! shapes agree, run one utterance through it, and print a summary.

use std::path::PathBuf;
use std::time::Instant;

use avlm_stream::bundle::LoadedBundle;
use avlm_stream::engine::AsrPipeline;

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
        let bundle = LoadedBundle::load(&dir, 2).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
        println!("{}", bundle.summary());
        println!("  loaded in {:.2} s", started.elapsed().as_secs_f64());
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
