//! Vision token layouts against the reference libraries' outputs
//! (tests/golden/vision/frontend, from tools/vision/make_frontend_golden.py):
//! PyTorch's `adaptive_avg_pool2d` and transformers' Idefics3 pixel shuffle.

use std::path::{Path, PathBuf};

use avlm_projector::{adaptive_avg_pool, pixel_shuffle, VisionTokens};

fn golden() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/vision/frontend")
}

fn read_f32(name: &str) -> Vec<f32> {
    let path = golden().join(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn meta() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(golden().join("golden.json")).unwrap()).unwrap()
}

#[test]
fn pooling_matches_pytorch_adaptive_avg_pool2d() {
    let m = meta();
    let pools = m["pools"].as_array().unwrap();
    assert_eq!(pools.len(), 3);
    for p in pools {
        let name = p["name"].as_str().unwrap();
        let grid = (
            p["grid"][0].as_u64().unwrap() as usize,
            p["grid"][1].as_u64().unwrap() as usize,
        );
        let dim = p["dim"].as_u64().unwrap() as usize;
        let out = p["out"].as_u64().unwrap() as usize;
        let ours = adaptive_avg_pool(&read_f32(&format!("{name}.in.bin")), grid, dim, (out, out));
        let theirs = read_f32(&format!("{name}.out.bin"));
        assert_eq!(ours.len(), theirs.len(), "{name}");
        let worst = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-5, "{name}: max diff {worst}");
    }
}

#[test]
fn pixel_shuffle_matches_idefics3() {
    let m = meta();
    for s in m["shuffles"].as_array().unwrap() {
        let name = s["name"].as_str().unwrap();
        let side = s["side"].as_u64().unwrap() as usize;
        let dim = s["dim"].as_u64().unwrap() as usize;
        let factor = s["factor"].as_u64().unwrap() as usize;
        let input = read_f32(&format!("{name}.in.bin"));
        let ours = pixel_shuffle(&input, (side, side), dim, factor);
        assert_eq!(ours, read_f32(&format!("{name}.out.bin")), "{name}");
        let layout = VisionTokens::PixelShuffle { factor };
        let tokens = layout.tokens(None, &input, (side, side), dim).unwrap();
        assert_eq!(tokens.len(), layout.count((side, side)) * layout.width(dim));
    }
}

#[test]
fn the_videollm_online_layout_is_pooled_then_the_3x3_grid() {
    let input = read_f32("pool_24x24_to_3.in.bin");
    let pooled: Vec<f32> = (0..6).map(|i| i as f32).collect();
    let layout = VisionTokens::PooledGrid { grid: 3 };
    let tokens = layout.tokens(Some(&pooled), &input, (24, 24), 6).unwrap();
    assert_eq!(layout.count((24, 24)), 10);
    assert_eq!(&tokens[..6], &pooled[..]);
    let grid = read_f32("pool_24x24_to_3.out.bin");
    for (a, b) in tokens[6..].iter().zip(&grid) {
        assert!((a - b).abs() < 1e-5);
    }
}
