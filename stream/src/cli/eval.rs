//! `avlm eval lrs3 DIR`: WER and CER on a test set in the LRS3 layout, clean
//! and with babble noise at chosen SNRs, in process or through a server.

use std::path::PathBuf;

use avlm_proto as pb;

use avlm_stream::bundle::{LoadedBundle, Manifest};
use avlm_stream::engine::{AsrPipeline, SpeechInput};
use avlm_stream::eval::lrs3::{self, Backend, Condition};
use avlm_stream::eval::noise::NoiseMixer;
use avlm_stream::eval::plot::PlotTitle;
use avlm_stream::media::file::decode_audio_file;

use super::paths;
use super::progress::Progress;
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
    #[arg(
        long = "modalities",
        alias = "modality",
        value_enum,
        default_value = "audio"
    )]
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
    let input = match args.modality {
        Modality::Audio => SpeechInput::Audio,
        Modality::Video => SpeechInput::Video,
        Modality::Av => SpeechInput::AudioVideo,
    };
    let config = args.runtime.server_config(1, 1);
    // What the model reads, checked before anything is decoded.
    let detector = match &args.server {
        Some(url) => {
            let info = server_model_info(&args.credentials.target(url)).await?;
            let wanted = match input {
                SpeechInput::Audio => pb::Modalities::Audio,
                SpeechInput::Video => pb::Modalities::Video,
                SpeechInput::AudioVideo => pb::Modalities::AudioVideo,
            } as i32;
            if !info.transcribe_modalities.contains(&wanted) {
                anyhow::bail!(
                    "--modalities {:?}: the server's model {:?} does not transcribe it{}",
                    args.modality,
                    info.name,
                    if info.lip_encoder.is_empty() && input.has_video() {
                        " (it has no lip encoder)"
                    } else {
                        ""
                    }
                );
            }
            None
        }
        None if input.has_video() => {
            let dir = config.bundle.clone().ok_or_else(|| {
                anyhow::anyhow!("no model bundle (run tools/setup.sh or pass --bundle)")
            })?;
            let manifest = Manifest::read(&dir).map_err(|e| anyhow::anyhow!(e))?;
            let Some(lip) = manifest.lip else {
                anyhow::bail!(
                    "--modalities {:?} needs a lip encoder (mouth crops + AV-HuBERT, [lip] in the bundle's avlm.toml); the bundle {} has none, so only --modalities audio can run (tools/avsr/convert_llama_avsr.py makes one from a Llama-AVSR checkpoint)",
                    args.modality,
                    dir.display()
                );
            };
            Some(dir.join(lip.face_detector))
        }
        None => None,
    };
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
    let (mixer, noise) = if conditions.iter().any(|c| matches!(c, Condition::Snr(_))) {
        let (mixer, noise) = load_noise(&args).await?;
        (Some(mixer), noise)
    } else {
        (None, serde_json::Value::Null)
    };
    // What decodes: a server's model (as it reports it) or a local bundle.
    let (mut backend, model) = match &args.server {
        Some(url) => {
            let target = args.credentials.target(url);
            let info = server_model(&target).await?;
            (Backend::Server(target), info)
        }
        None => {
            let bundle = config.bundle.clone().ok_or_else(|| {
                anyhow::anyhow!("no model bundle (run tools/setup.sh or pass --bundle)")
            })?;
            let ort = config.ort_lib.clone();
            let threads = config.engine_threads;
            let dir = bundle.clone();
            let (pipeline, name) = tokio::task::spawn_blocking(move || {
                avlm_encoders::runtime::init(&ort)?;
                let loaded = LoadedBundle::load(&dir, threads)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
                let name = loaded.manifest.name.clone();
                let pipeline = AsrPipeline::new(loaded)?;
                if !pipeline.transcribes(input) {
                    anyhow::bail!(
                        "{}: the bundle has no {}: it does not transcribe --modalities {:?}",
                        dir.display(),
                        input.prompt_key(),
                        input
                    );
                }
                anyhow::Ok((pipeline, name))
            })
            .await??;
            let model = serde_json::json!({"name": name, "bundle": bundle});
            (Backend::InProcess(Some(Box::new(pipeline))), model)
        }
    };
    // One step is one clip heard under one condition.
    let mut progress = Progress::new(
        (clips.len() * conditions.len()) as u64,
        &format!(
            "decodes ({} clips x {} conditions)",
            clips.len(),
            conditions.len()
        ),
    );
    let reading = lrs3::Reading {
        input,
        detector: detector.as_deref(),
    };
    if args.server.is_none() && input.has_video() {
        // the mouth tracker's face detector runs here
        let ort = config.ort_lib.clone();
        tokio::task::spawn_blocking(move || avlm_encoders::runtime::init(&ort)).await??;
    }
    let results = lrs3::run(
        &clips,
        &conditions,
        &mut backend,
        mixer.as_ref(),
        reading,
        |r| {
            progress.step(&format!("{} @ {}", r.id, r.condition));
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!(e))?;
    progress.finish();
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
            "modality": match input {
                SpeechInput::Audio => "audio",
                SpeechInput::Video => "video",
                SpeechInput::AudioVideo => "av",
            },
            "backend": match &args.server { Some(u) => format!("grpc {u}"), None => "in-process".to_string() },
            "bundle": if args.server.is_none() { model["bundle"].clone() } else { serde_json::Value::Null },
            "server_model": if args.server.is_some() { model.clone() } else { serde_json::Value::Null },
            "noise": noise,
            "seed": args.seed,
            "limit": args.limit,
        });
        let title = PlotTitle {
            model: model["name"].as_str().unwrap_or("?").to_string(),
            clips: clips.len(),
            date: today(),
        };
        lrs3::write_outputs(out, &results, &summary, meta, &title)?;
        println!("wrote {}", out.display());
    }
    Ok(())
}

/// Where tools/setup.sh's default babble comes from, for the record.
const DEFAULT_BABBLE: &str =
    "six espeak-ng talkers reading different texts at once, 60 s (tools/make_babble.py)";

/// The noise mixer for SNR conditions, and what it mixes, for summary.json.
async fn load_noise(args: &Lrs3Args) -> anyhow::Result<(NoiseMixer, serde_json::Value)> {
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
    let seconds = noise.len() as f64 / f64::from(avlm_stream::media::AUDIO_RATE);
    let record = serde_json::json!({
        "file": path,
        "description": match args.noise {
            Some(_) => "the recording given with --noise",
            None => DEFAULT_BABBLE,
        },
        "seconds": (seconds * 100.0).round() / 100.0,
        "seed": args.seed,
    });
    let mixer = NoiseMixer::new(noise, args.seed)
        .map_err(|e| anyhow::anyhow!("noise {}: {e}", path.display()))?;
    Ok((mixer, record))
}

/// The first model a server runs, as its GetInfo reports it.
async fn server_model_info(target: &avlm_stream::client::Target) -> anyhow::Result<pb::ModelInfo> {
    let mut client = avlm_stream::client::connect(target).await?;
    let info = client.get_info(pb::GetInfoRequest {}).await?.into_inner();
    info.models
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("the server reports no model"))
}

/// The model a server runs, as its GetInfo reports it.
async fn server_model(target: &avlm_stream::client::Target) -> anyhow::Result<serde_json::Value> {
    let mut client = avlm_stream::client::connect(target).await?;
    let info = client.get_info(pb::GetInfoRequest {}).await?.into_inner();
    let m = info
        .models
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("the server reports no model"))?;
    Ok(serde_json::json!({
        "server_version": info.version,
        "name": m.name,
        "vad": m.vad,
        "audio_encoder": m.audio_encoder,
        "vision_encoder": m.vision_encoder,
        "llm": m.llm,
        "lip_encoder": m.lip_encoder,
    }))
}

/// Today's date (UTC) as YYYY-MM-DD.
fn today() -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0) as i64;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn today_is_a_date() {
        let d = super::today();
        assert_eq!(d.len(), 10, "{d}");
        assert!(d.starts_with("20"), "{d}");
    }
}
