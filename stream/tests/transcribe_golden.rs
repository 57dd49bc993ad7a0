//! The TRANSCRIBE chain of the default bundle (log-mel, Whisper encoder,
//! stack-4 projector, SmolLM2 on spliced embeddings, greedy decoding)
//! against an independent Python reference of the same chain
//! (tools/golden/make_transcribe_golden.py: numpy mel and projector,
//! onnxruntime, numpy LLaMA), and the bundle's CTC head against its float64
//! reference. Golden: tests/golden/transcribe.

use std::path::{Path, PathBuf};

use avlm_stream::bundle::manifest::{LlmWeightMode, Manifest};
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
    if let Some(ctc) = golden["bundle"]["ctc_head"].as_object() {
        assert_eq!(
            sha256_hex(&bundle_dir.join(ctc["file"].as_str().unwrap())),
            ctc["sha256"].as_str().unwrap(),
            "the default bundle's CTC head changed: regenerate the golden (tools/golden/make_transcribe_golden.py)"
        );
    }
    avlm_encoders::runtime::init(&root().join(".avlm").join(avlm_stream::config::ORT_LIB)).unwrap();
    // The reference computes in float64 from the dequantized weights: so
    // does this check, whatever weight mode the bundle runs in (mixed or q8
    // steps are checked against the reference in avlm-llm's parity tests).
    let mut manifest = Manifest::read(&bundle_dir).unwrap();
    manifest.llm.weight_mode = LlmWeightMode::F32;
    let mut bundle = LoadedBundle::load_with(&bundle_dir, manifest, 1).unwrap();
    // The reference decodes greedily: so does this check of the chain (the
    // bundle's joint CTC/attention search is checked piecewise: its CTC head
    // here, the search in avlm-llm's tests).
    let ctc = bundle.ctc.take();
    assert_eq!(
        ctc.is_some(),
        golden["bundle"]["ctc_head"].is_object(),
        "the golden and the bundle disagree on having a CTC head"
    );
    bundle.manifest.decoding.beam_width = 1;
    let mut pipeline = AsrPipeline::new(bundle).unwrap();

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

        if let Some(head) = &ctc {
            check_ctc(name, clip, head, pipeline.bundle(), &embeds);
        }

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

/// The CTC head on the projected audio against the float64 reference: the
/// best class of every row (where the reference's margin is not a near tie),
/// its log-probability, and the log-probability of the greedy tokens as the
/// whole labelling (the reference sums alignments with the textbook forward;
/// the server's prefix-score recursion must agree).
fn check_ctc(
    name: &str,
    clip: &Value,
    head: &avlm_llm::CtcHead,
    bundle: &LoadedBundle,
    embeds: &candle_core::Tensor,
) {
    let f64s = |v: &Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    let best_ref = f64s(&clip["ctc_best_path"]);
    let margins = f64s(&clip["ctc_best_margins"]);
    let best_lp = f64s(&clip["ctc_best_log_probs"]);
    let lp = head.log_probs(&bundle.llm, embeds).unwrap();
    assert_eq!(lp.len(), best_ref.len(), "{name}: CTC rows");
    let mut worst = 0.0f64;
    for (g, row) in lp.iter().enumerate() {
        let best = (0..row.len())
            .max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)))
            .unwrap();
        if margins[g] > 1e-2 {
            assert_eq!(
                best as f64, best_ref[g],
                "{name}: CTC best class of row {g}"
            );
        }
        worst = worst.max((f64::from(row[best_ref[g] as usize]) - best_lp[g]).abs());
    }
    let ids: Vec<u32> = clip["generated_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let scorer = head.scorer(&bundle.llm, embeds).unwrap();
    let state = scorer.advance(scorer.initial(), &ids).unwrap();
    let ours = f64::from(scorer.final_score(&state));
    let reference = clip["ctc_log_prob_generated"].as_f64().unwrap();
    eprintln!(
        "{name}: CTC best-class log-prob max error {worst:.2e}; log P(greedy labelling) {ours:.4} vs reference {reference:.4}"
    );
    assert!(worst < 2e-3, "{name}: CTC log-probs differ by {worst}");
    assert!(
        (ours - reference).abs() <= 1e-3 * reference.abs().max(1.0),
        "{name}: CTC labelling log-prob {ours} vs {reference}"
    );
}
