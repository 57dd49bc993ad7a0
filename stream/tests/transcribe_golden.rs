//! The TRANSCRIBE chain of the default bundle (log-mel, Whisper encoder,
//! stack-4 projector, SmolLM2 on spliced embeddings, greedy decoding)
//! against an independent Python reference of the same chain
//! (tools/golden/make_transcribe_golden.py: numpy mel and projector,
//! onnxruntime, numpy LLaMA). Golden: tests/golden/transcribe.

use std::path::{Path, PathBuf};

use avlm_stream::bundle::LoadedBundle;
use avlm_stream::engine::{AsrPipeline, StageTimes};
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read_f32(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn read_wav(path: &str) -> Vec<f32> {
    let bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("{path} (pocketsphinx-testdata): {e}"));
    bytes[44..]
        .chunks_exact(2)
        .map(|s| f32::from(i16::from_le_bytes([s[0], s[1]])) / 32768.0)
        .collect()
}

fn sha256_hex(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

#[test]
fn default_bundle_transcribe_chain_matches_the_python_reference() {
    let golden: Value = serde_json::from_slice(
        &std::fs::read(root().join("tests/golden/transcribe/golden.json")).unwrap(),
    )
    .unwrap();
    let bundle_dir = root().join(".avlm/bundles/default");
    assert_eq!(
        sha256_hex(&bundle_dir.join("projector.safetensors")),
        golden["bundle"]["projector"]["sha256"].as_str().unwrap(),
        "the default bundle's projector changed: regenerate the golden (tools/golden/make_transcribe_golden.py)"
    );
    if let Some(lora) = golden["bundle"]["lora"].as_object() {
        assert_eq!(
            sha256_hex(&bundle_dir.join(lora["file"].as_str().unwrap())),
            lora["sha256"].as_str().unwrap(),
            "the default bundle's LoRA changed: regenerate the golden (tools/golden/make_transcribe_golden.py)"
        );
    }
    avlm_encoders::runtime::init(&root().join(".avlm/lib/libonnxruntime.so.1.31.1")).unwrap();
    let mut pipeline = AsrPipeline::new(LoadedBundle::load(&bundle_dir, 1).unwrap()).unwrap();

    for clip in golden["clips"].as_array().unwrap() {
        let name = clip["name"].as_str().unwrap();
        let samples = read_wav(clip["wav"].as_str().unwrap());
        assert_eq!(samples.len() as u64, clip["n_samples"].as_u64().unwrap());
        let ids = |v: &Value| -> Vec<u32> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        };
        let (prefix, suffix) = pipeline.prompt_ids();
        assert_eq!(
            prefix,
            ids(&clip["prefix_ids"]).as_slice(),
            "{name}: prompt prefix tokens"
        );
        assert_eq!(
            suffix,
            ids(&clip["suffix_ids"]).as_slice(),
            "{name}: prompt suffix tokens"
        );

        let mel = pipeline.spectrogram(&samples);
        assert_eq!(
            mel.frames as u64,
            clip["mel_frames"].as_u64().unwrap(),
            "{name}: mel frames"
        );

        let mut times = StageTimes::default();
        let embeds = pipeline
            .audio_embeddings(&samples, &mut times)
            .unwrap()
            .expect("audio tokens");
        let (g, d) = embeds.dims2().unwrap();
        assert_eq!(g as u64, clip["G"].as_u64().unwrap());
        let ours: Vec<f32> = embeds.flatten_all().unwrap().to_vec1().unwrap();
        let reference = read_f32(
            &root()
                .join("tests/golden/transcribe")
                .join(clip["audio_embeds_file"].as_str().unwrap()),
        );
        assert_eq!(ours.len(), g * d);
        let err = ours
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        eprintln!("{name}: projected audio embeddings max abs error {err:.2e}");
        assert!(err <= 1e-3, "{name}: projected audio differs by {err}");

        let t = pipeline.transcribe(&samples).unwrap();
        let expected = ids(&clip["generated_ids"]);
        let margins: Vec<f64> = clip["margins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let same = t
            .tokens
            .iter()
            .zip(&expected)
            .take_while(|(a, b)| a == b)
            .count();
        eprintln!(
            "{name}: {same}/{} tokens identical: {:?}",
            expected.len(),
            t.text
        );
        // f32 rounding (logits within ~1e-4 of float64) can only flip a step
        // whose reference margin is below 1e-3; none of these are.
        if same < expected.len().min(t.tokens.len()) {
            assert!(
                margins[same] < 1e-3,
                "{name}: decoding parted from the reference at step {same} (margin {})",
                margins[same]
            );
        }
        assert!(t.tokens.len() >= expected.len(), "{name}: stopped early");
    }
}
