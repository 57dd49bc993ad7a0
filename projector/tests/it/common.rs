//! Shared fixtures: a toy projector whose outputs are worked out by hand,
//! tensor comparison, and self-deleting temporary files.

use std::path::{Path, PathBuf};

use avlm_projector::{Activation, Compression, ProjectorConfig, ProjectorWeights};
use candle_core::{Device, Tensor};

/// Stack k=2 over 2-wide frames, hidden 3, output 2.
pub fn toy_config(activation: Activation) -> ProjectorConfig {
    ProjectorConfig {
        compression: Compression::Stack { k: 2 },
        activation,
        layer_norm: false,
        input_dim: 2,
        layers: 2,
        hidden_dim: 3,
        output_dim: 2,
    }
}

/// fc1 picks x0, x3 and x0+x1-x2-x3 of the stacked row, with bias [0, -1, 0.5];
/// fc2 is [[1, 1, 1], [1, -1, 2]] with bias [0.25, 0]. Every value is exact in f16.
pub fn toy_weights() -> ProjectorWeights {
    let dev = Device::Cpu;
    let t = |data: &[f32], shape: &[usize]| {
        Tensor::from_slice(data, shape, &dev).expect("fixture tensor")
    };
    ProjectorWeights {
        fc1_weight: t(&[1., 0., 0., 0., 0., 0., 0., 1., 1., 1., -1., -1.], &[3, 4]),
        fc1_bias: t(&[0., -1., 0.5], &[3]),
        fc2_weight: t(&[1., 1., 1., 1., -1., 2.], &[2, 3]),
        fc2_bias: t(&[0.25, 0.], &[2]),
        norm: None,
    }
}

/// Five 2-wide frames: two stacked rows [1, -2, 0.5, 3] and [-1, 0, 2, -0.5],
/// and a fifth frame that must be dropped (its huge values would show).
pub fn toy_features() -> Tensor {
    let data: [f32; 10] = [1., -2., 0.5, 3., -1., 0., 2., -0.5, 1000., -1000.];
    Tensor::from_slice(&data, (5, 2), &Device::Cpu).expect("fixture tensor")
}

pub fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_vec2::<f32>().expect("2-D f32 tensor")
}

pub fn assert_close(actual: &[Vec<f32>], expected: &[Vec<f32>], tol: f32) {
    assert_eq!(
        actual.len(),
        expected.len(),
        "row count: {actual:?} vs {expected:?}"
    );
    for (a, e) in actual.iter().zip(expected) {
        assert_eq!(a.len(), e.len(), "row width: {actual:?} vs {expected:?}");
        for (x, y) in a.iter().zip(e) {
            assert!(
                (x - y).abs() <= tol,
                "{actual:?} != {expected:?} (tol {tol})"
            );
        }
    }
}

/// A path in the temp dir, removed when dropped.
pub struct TempFile(PathBuf);

impl TempFile {
    pub fn new(name: &str) -> Self {
        let file = format!("avlm-projector-{}-{name}.safetensors", std::process::id());
        TempFile(std::env::temp_dir().join(file))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
