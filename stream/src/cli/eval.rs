//! `avlm eval lrs3 DIR`: WER and CER on a test set in the LRS3 layout, clean
//! and with babble noise at chosen SNRs, in process or through a server.

use std::io::IsTerminal;
use std::path::PathBuf;

use avlm_stream::bundle::LoadedBundle;
use avlm_stream::engine::AsrPipeline;
use avlm_stream::eval::lrs3::{self, Backend, Condition};
use avlm_stream::eval::noise::NoiseMixer;
use avlm_stream::media::file::decode_audio_file;

use super::paths;
use super::serve::RuntimeArgs;

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    #[command(subcommand)]
    pub set: EvalSet,
}

#[derive(Debug, clap::Subcommand)]
pub enum EvalSet {
    /// LRS3 layout: DIR/<speaker>/<clip>.mp4 with <clip>.txt ("Text:  THE WORDS").
    Lrs3(Lrs3Args),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Modality {
    Audio,
    Video,
    Av,
}

#[derive(Debug, clap::Args)]
pub struct Lrs3Args {
    /// The test set folder.
    pub dir: PathBuf,
    /// Which streams the model uses.
    #[arg(long, value_enum, default_value = "audio")]
    pub modality: Modality,
    /// Conditions: SNRs in dB and/or "clean", e.g. 5,2,0,-2,-5,clean.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "clean",
        allow_hyphen_values = true
    )]
    pub snr: Vec<String>,
    /// Noise recording mixed in for SNR conditions [default: .avlm/noise/babble.wav].
    #[arg(long)]
    pub noise: Option<PathBuf>,
    /// Seed of the noise offsets.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Evaluate through this running server instead of in process.
    #[arg(long)]
    pub server: Option<String>,
    #[command(flatten)]
    pub credentials: super::credentials::Credentials,
    /// Only the first N clips (sorted by id).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Write clips.csv, clips.jsonl, summary.json and wer_vs_snr.png here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

pub async fn run(args: EvalArgs) -> anyhow::Result<()> {
    let EvalSet::Lrs3(args) = args.set;
    if args.modality != Modality::Audio {
        anyhow::bail!(
            "--modality {:?} needs a lip encoder (mouth crops + AV-HuBERT); the loaded bundles are audio-only, so only --modality audio can run",
            args.modality
        );
    }
    let conditions: Vec<Condition> = args
        .snr
        .iter()
        .map(|s| Condition::parse(s))
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("--snr: {e}"))?;
    let mut clips = lrs3::discover(&args.dir).map_err(|e| anyhow::anyhow!(e))?;
    let clips_found = clips.len();
    eprintln!(
        "found {clips_found} clips with transcripts in {}",
        args.dir.display()
    );
    if let Some(n) = args.limit {
        clips.truncate(n);
    }
    if clips.is_empty() {
        anyhow::bail!("no clips to evaluate");
    }
    let config = args.runtime.server_config(1, 1);
    let mixer = if conditions.iter().any(|c| matches!(c, Condition::Snr(_))) {
        let path = args
            .noise
            .clone()
            .unwrap_or_else(|| paths::resolve(None, "noise/babble.wav"));
        let noise = tokio::task::spawn_blocking({
            let path = path.clone();
            move || decode_audio_file(&path)
        })
        .await?
        .map_err(|e| {
            anyhow::anyhow!(
                "noise {}: {e} (run tools/setup.sh for the default babble)",
                path.display()
            )
        })?;
        Some(
            NoiseMixer::new(noise, args.seed)
                .map_err(|e| anyhow::anyhow!("noise {}: {e}", path.display()))?,
        )
    } else {
        None
    };
    let mut backend = match &args.server {
        Some(url) => Backend::Server(args.credentials.target(url)),
        None => {
            let bundle = config.bundle.clone().ok_or_else(|| {
                anyhow::anyhow!("no model bundle (run tools/setup.sh or pass --bundle)")
            })?;
            let ort = config.ort_lib.clone();
            let threads = config.engine_threads;
            let pipeline = tokio::task::spawn_blocking(move || -> anyhow::Result<AsrPipeline> {
                avlm_encoders::runtime::init(&ort)?;
                let loaded = LoadedBundle::load(&bundle, threads)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", bundle.display()))?;
                Ok(AsrPipeline::new(loaded)?)
            })
            .await??;
            Backend::InProcess(Some(Box::new(pipeline)))
        }
    };
    let total = (clips.len() * conditions.len()) as u64;
    let bar = if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(total);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} clips · {elapsed} elapsed · ETA {eta} · {msg}",
        ) {
            bar.set_style(style);
        }
        Some(bar)
    } else {
        None
    };
    let results = lrs3::run(&clips, &conditions, &mut backend, mixer.as_ref(), |r| {
        if let Some(bar) = &bar {
            bar.set_message(format!("{} @ {}", r.id, r.condition));
            bar.inc(1);
        }
    })
    .await
    .map_err(|e| anyhow::anyhow!(e))?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let summary = lrs3::summarize(&results, &conditions);
    println!(
        "{:>10} {:>6} {:>8} {:>8} {:>8}",
        "SNR dB", "clips", "WER %", "CER %", "RTF"
    );
    for s in &summary {
        println!(
            "{:>10} {:>6} {:>8.2} {:>8.2} {:>8.3}",
            s.condition, s.clips, s.wer, s.cer, s.real_time_factor
        );
    }
    if let Some(out) = &args.out {
        let meta = serde_json::json!({
            "dir": args.dir,
            "clips_found": clips_found,
            "modality": "audio",
            "backend": match &args.server { Some(u) => format!("grpc {u}"), None => "in-process".to_string() },
            "bundle": config.bundle,
            "noise": args.noise,
            "seed": args.seed,
            "limit": args.limit,
        });
        lrs3::write_outputs(out, &results, &summary, meta)?;
        println!("wrote {}", out.display());
    }
    Ok(())
}
