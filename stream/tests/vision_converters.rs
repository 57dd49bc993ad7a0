//! Bundles made by tools/vision/convert_videollm_online.py and
//! convert_smolvlm.py from tiny random models of the reference architectures
//! (tools/vision/make_vision_converter_golden.py), checked against what the
//! reference code computes in PyTorch: each frame's LLM-space tokens, the
//! logits after a prompt, 32 greedy tokens, and the respond-or-not decisions
//! and captions over a 20-frame stream.

use std::path::{Path, PathBuf};

use avlm_encoders::Frame;
use avlm_llm::Llama;
use avlm_stream::bundle::LoadedBundle;
use avlm_stream::engine::{caption_frames, CaptionSettings, VisionFrontEnd};
use candle_core::Tensor;
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

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn check(name: &str) {
    avlm_encoders::runtime::init(&root().join(".avlm").join(avlm_stream::config::ORT_LIB)).unwrap();
    let dir = root().join("tests/golden/vision").join(name);
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap()).unwrap();
    let mut bundle = LoadedBundle::load(&dir, 1).unwrap_or_else(|e| panic!("{name}: {e}"));
    let parts = bundle.vision.take().expect("the bundle has [vision]");
    let (front, mut format) = VisionFrontEnd::new(parts);

    // Each frame's tokens in the LLM's space.
    let f = &golden["frames"];
    let (count, w, h) = (
        f["count"].as_u64().unwrap() as usize,
        f["width"].as_u64().unwrap() as u32,
        f["height"].as_u64().unwrap() as u32,
    );
    let rgb = std::fs::read(dir.join(f["file"].as_str().unwrap())).unwrap();
    let size = (w * h * 3) as usize;
    assert_eq!(rgb.len(), count * size);
    let expected = read_f32(&dir.join(golden["vision_tokens"]["file"].as_str().unwrap()));
    let per_frame = expected.len() / count;
    let tolerance = golden["vision_tokens"]["tolerance"].as_f64().unwrap() as f32;
    let mut frames: Vec<(Tensor, f64)> = Vec::new();
    let mut worst = 0f32;
    for i in 0..count {
        let frame = Frame {
            width: w,
            height: h,
            stride: (w * 3) as usize,
            data: rgb[i * size..(i + 1) * size].to_vec(),
            pts_s: i as f64 / 2.0,
        };
        let embeds = front.embed(&frame).unwrap();
        let got: Vec<f32> = embeds.flatten_all().unwrap().to_vec1().unwrap();
        worst = worst.max(max_abs_diff(
            &got,
            &expected[i * per_frame..(i + 1) * per_frame],
        ));
        frames.push((embeds, frame.pts_s));
    }
    eprintln!("{name}: vision tokens max |diff| {worst:.2e}");
    assert!(
        worst <= tolerance,
        "{name}: vision tokens differ by {worst}"
    );

    // The logits after a prompt, and greedy decoding from there.
    let prompt = &golden["prompt"];
    let prompt_ids = ids(&prompt["ids"]);
    let text = prompt["text"].as_str().unwrap();
    assert_eq!(bundle.tokenizer.encode(text).unwrap(), prompt_ids);
    let llm = &bundle.llm;
    let mut cache = llm.new_cache(256).unwrap();
    let mut logits =
        Llama::last_logits(&llm.forward(&prompt_ids, &mut cache, false).unwrap()).unwrap();
    let expected = read_f32(&dir.join(prompt["logits_file"].as_str().unwrap()));
    let diff = max_abs_diff(&logits, &expected);
    let tolerance = prompt["tolerance"].as_f64().unwrap() as f32;
    eprintln!("{name}: prompt logits max |diff| {diff:.2e}");
    assert!(diff <= tolerance, "{name}: prompt logits differ by {diff}");
    let want = ids(&prompt["greedy"]);
    let mut greedy = Vec::new();
    for _ in 0..want.len() {
        let next = Llama::argmax(&logits);
        greedy.push(next);
        logits = Llama::last_logits(&llm.forward(&[next], &mut cache, false).unwrap()).unwrap();
    }
    assert_eq!(greedy, want, "{name}: greedy tokens");

    // The stream: the reference keeps every position, so the window must too.
    let stream = &golden["stream"];
    format.window = 4096;
    let settings = CaptionSettings {
        threshold: stream["threshold"].as_f64().unwrap() as f32,
        max_new_tokens: stream["max_new_tokens"].as_u64().unwrap() as usize,
    };
    let outcomes = caption_frames(
        llm,
        &bundle.tokenizer,
        &bundle.stop_ids,
        &format,
        settings,
        &frames,
    )
    .unwrap();
    let tolerance = stream["p_separator_tolerance"].as_f64().unwrap() as f32;
    let want = stream["frames"].as_array().unwrap();
    assert_eq!(outcomes.len(), want.len());
    let (mut worst, mut spoke) = (0f32, 0);
    for (i, (got, want)) in outcomes.iter().zip(want).enumerate() {
        let p = want["p_separator"].as_f64().unwrap() as f32;
        worst = worst.max((got.p_separator - p).abs());
        assert_eq!(
            got.p_separator < settings.threshold,
            p < settings.threshold,
            "{name}: frame {i}: decision (P {} vs {p})",
            got.p_separator
        );
        let caption = want["caption"].as_str().map(str::to_string);
        assert_eq!(got.caption, caption, "{name}: frame {i}: caption");
        spoke += usize::from(p < settings.threshold);
    }
    eprintln!(
        "{name}: P(separator) max |diff| {worst:.2e}; spoke after {spoke} of {} frames, as PyTorch",
        want.len()
    );
    assert!(
        worst <= tolerance,
        "{name}: P(separator) differs by {worst}"
    );
    assert!(spoke > 0 && spoke < want.len(), "both decisions occur");
}

#[test]
fn a_converted_videollm_online_checkpoint_matches_pytorch() {
    check("tiny_videollm_online");
}

#[test]
fn a_converted_smolvlm_checkpoint_matches_pytorch() {
    check("tiny_smolvlm");
}

/// A stream far longer than its KV window keeps running on the bounded cache:
/// the 20 frames cycled 40 times (8,000+ positions through a 64-position
/// window) give outcomes for every frame, and the first pass through the
/// frames decides as the full-context run does until the window first fills.
#[test]
fn a_caption_stream_runs_on_past_its_window() {
    avlm_encoders::runtime::init(&root().join(".avlm").join(avlm_stream::config::ORT_LIB)).unwrap();
    let dir = root().join("tests/golden/vision/tiny_videollm_online");
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap()).unwrap();
    let mut bundle = LoadedBundle::load(&dir, 1).unwrap();
    let (front, format) = VisionFrontEnd::new(bundle.vision.take().unwrap());
    let f = &golden["frames"];
    let (count, w, h) = (
        f["count"].as_u64().unwrap() as usize,
        f["width"].as_u64().unwrap() as u32,
        f["height"].as_u64().unwrap() as u32,
    );
    let rgb = std::fs::read(dir.join(f["file"].as_str().unwrap())).unwrap();
    let size = (w * h * 3) as usize;
    let one_pass: Vec<(Tensor, f64)> = (0..count)
        .map(|i| {
            let frame = Frame {
                width: w,
                height: h,
                stride: (w * 3) as usize,
                data: rgb[i * size..(i + 1) * size].to_vec(),
                pts_s: i as f64 / 2.0,
            };
            (front.embed(&frame).unwrap(), frame.pts_s)
        })
        .collect();
    let frames: Vec<(Tensor, f64)> = (0..40)
        .flat_map(|pass| {
            one_pass
                .iter()
                .map(move |(e, t)| (e.clone(), t + pass as f64 * 10.0))
        })
        .collect();
    let settings = CaptionSettings {
        threshold: golden["stream"]["threshold"].as_f64().unwrap() as f32,
        max_new_tokens: 4,
    };
    let run = |window: usize, frames: &[(Tensor, f64)]| {
        let mut format = format.clone();
        format.window = window;
        caption_frames(
            &bundle.llm,
            &bundle.tokenizer,
            &bundle.stop_ids,
            &format,
            settings,
            frames,
        )
        .unwrap()
    };
    let long = run(64, &frames);
    assert_eq!(long.len(), frames.len());
    assert!(long.iter().all(|o| o.p_separator.is_finite()));
    // Two frames fit the 64-position window: there the bounded cache is the full context.
    let full = run(4096, &frames[..2]);
    for (a, b) in long.iter().zip(&full) {
        assert!((a.p_separator - b.p_separator).abs() < 1e-5);
    }
}
