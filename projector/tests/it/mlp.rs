//! The MLP and LayerNorm on hand-set weights, and forward's input checks.

use avlm_projector::{
    Activation, Compression, Projector, ProjectorConfig, ProjectorError, ProjectorWeights,
};
use candle_core::{DType, Device, Tensor};

use crate::common::{assert_close, rows, toy_config, toy_features, toy_weights};

fn toy(activation: Activation) -> Projector {
    Projector::from_tensors(toy_config(activation), toy_weights()).expect("toy projector")
}

/// n-wide identity fc1 and fc2, zero biases, pool k=1: forward is act(x) (then LN).
fn identity(n: usize, activation: Activation, norm: Option<(Tensor, Tensor)>) -> Projector {
    let eye = Tensor::eye(n, DType::F32, &Device::Cpu).expect("eye");
    let zero = Tensor::zeros(n, DType::F32, &Device::Cpu).expect("zeros");
    let config = ProjectorConfig {
        compression: Compression::Pool { k: 1 },
        activation,
        layer_norm: norm.is_some(),
        input_dim: n,
        layers: 2,
        hidden_dim: n,
        output_dim: n,
    };
    let weights = ProjectorWeights {
        fc1_weight: eye.clone(),
        fc1_bias: zero.clone(),
        fc2_weight: eye,
        fc2_bias: zero,
        norm,
    };
    Projector::from_tensors(config, weights).expect("identity projector")
}

fn column(values: &[f32]) -> Tensor {
    Tensor::from_slice(values, (values.len(), 1), &Device::Cpu).expect("column")
}

#[test]
fn relu_mlp_matches_hand_computation() {
    let out = toy(Activation::Relu)
        .forward(&toy_features())
        .expect("forward");
    // Row 0: fc1 = [1, 2, -4] -> relu [1, 2, 0] -> [3.25, -1].
    // Row 1: fc1 = [-1, -1.5, -2] -> relu [0, 0, 0] -> [0.25, 0].
    assert_close(&rows(&out), &[vec![3.25, -1.], vec![0.25, 0.]], 1e-6);
}

#[test]
fn gelu_mlp_matches_hand_computation() {
    let out = toy(Activation::Gelu)
        .forward(&toy_features())
        .expect("forward");
    // Row 0: gelu [1, 2, -4] = [0.8413447, 1.9544997, -0.00012668].
    // Row 1: gelu [-1, -1.5, -2] = [-0.1586553, -0.1002108, -0.0455003].
    let expected = [
        vec![3.045_717_8, -1.113_408_4],
        vec![-0.054_366_32, -0.149_444_98],
    ];
    assert_close(&rows(&out), &expected, 1e-5);
}

#[test]
fn gelu_is_exact_erf_gelu() {
    let p = identity(1, Activation::Gelu, None);
    let out = p
        .forward(&column(&[1., -1., 0., 2., 0.5]))
        .expect("forward");
    let got: Vec<f32> = rows(&out).into_iter().flatten().collect();
    // The tanh approximation gives 0.8411920 at 1.0: 1.5e-4 off, far outside tol.
    let expected = [0.841_344_7, -0.158_655_25, 0., 1.954_499_7, 0.345_731_23];
    for (g, e) in got.iter().zip(expected) {
        assert!((g - e).abs() < 1e-6, "{got:?} vs {expected:?}");
    }
}

#[test]
fn relu_identity_clamps_negatives() {
    let p = identity(1, Activation::Relu, None);
    let out = p.forward(&column(&[1.5, -2., 0.])).expect("forward");
    assert_eq!(rows(&out), vec![vec![1.5], vec![0.], vec![0.]]);
}

#[test]
fn layer_norm_matches_hand_computation() {
    let dev = Device::Cpu;
    let w = Tensor::new(&[1f32, 2., 3.], &dev).expect("w");
    let b = Tensor::new(&[0.5f32, -0.5, 0.], &dev).expect("b");
    let p = identity(3, Activation::Relu, Some((w, b)));
    let x = Tensor::new(&[[1f32, 2., 3.]], &dev).expect("x");
    let out = p.forward(&x).expect("forward");
    // mean 2, var 2/3, eps 1e-5: normalised [-1.2247357, 0, 1.2247357], then affine.
    assert_close(&rows(&out), &[vec![-0.724_735_7, -0.5, 3.674_207]], 1e-5);
}

#[test]
fn fewer_frames_than_k_gives_empty_output() {
    let p = toy(Activation::Relu);
    assert_eq!(p.output_len(1), 0);
    assert_eq!(p.output_len(5), 2);
    let one = toy_features().narrow(0, 0, 1).expect("narrow");
    let out = p.forward(&one).expect("forward");
    assert_eq!(out.dims(), &[0, 2]);
    assert_eq!(out.dtype(), DType::F32);
}

#[test]
fn half_precision_input_is_computed_in_f32() {
    let p = toy(Activation::Relu);
    let x = toy_features()
        .narrow(0, 0, 4)
        .and_then(|t| t.to_dtype(DType::F16))
        .expect("f16 features");
    let out = p.forward(&x).expect("forward");
    assert_eq!(out.dtype(), DType::F32);
    assert_close(&rows(&out), &[vec![3.25, -1.], vec![0.25, 0.]], 1e-6);
}

#[test]
fn bad_features_are_invalid_input() {
    let p = toy(Activation::Relu);
    let dev = Device::Cpu;
    let wide = Tensor::zeros((4, 3), DType::F32, &dev).expect("zeros");
    let flat = Tensor::zeros(8, DType::F32, &dev).expect("zeros");
    let ints = Tensor::zeros((4, 2), DType::U32, &dev).expect("zeros");
    for x in [wide, flat, ints] {
        let err = p.forward(&x).unwrap_err();
        assert!(matches!(err, ProjectorError::InvalidInput(_)), "{err}");
        assert_eq!(err.label(), "invalid_input");
    }
}

#[test]
fn wrong_weight_shape_names_the_tensor() {
    let mut w = toy_weights();
    // Pool-shaped fc1 ([3, 2]) under a stack config that needs [3, 4].
    w.fc1_weight = w.fc1_weight.narrow(1, 0, 2).expect("narrow");
    let err = Projector::from_tensors(toy_config(Activation::Relu), w).unwrap_err();
    match &err {
        ProjectorError::BadShape {
            name,
            expected,
            actual,
        } => {
            assert_eq!(name, "fc1.weight");
            assert_eq!(expected, &[3, 4]);
            assert_eq!(actual, &[3, 2]);
        }
        other => panic!("expected BadShape, got {other}"),
    }
    assert!(err.to_string().contains("fc1.weight"), "{err}");
}

#[test]
fn norm_weights_must_agree_with_config() {
    let dev = Device::Cpu;
    let ones = Tensor::ones(2, DType::F32, &dev).expect("ones");
    let mut with_norm = toy_weights();
    with_norm.norm = Some((ones.clone(), ones));
    let err = Projector::from_tensors(toy_config(Activation::Relu), with_norm).unwrap_err();
    assert!(matches!(err, ProjectorError::InvalidConfig(_)), "{err}");
    let config = ProjectorConfig {
        layer_norm: true,
        ..toy_config(Activation::Relu)
    };
    let err = Projector::from_tensors(config, toy_weights()).unwrap_err();
    assert!(matches!(err, ProjectorError::MissingTensor { .. }), "{err}");
}

#[test]
fn check_compares_encoder_and_llm_widths() {
    let p = toy(Activation::Relu);
    assert!(p.check(2, 2).is_ok());
    let err = p.check(1024, 2).unwrap_err();
    assert!(
        matches!(
            err,
            ProjectorError::Incompatible {
                what: "input width",
                expected: 1024,
                actual: 2
            }
        ),
        "{err}"
    );
    let err = p.check(2, 4096).unwrap_err();
    assert!(
        matches!(
            err,
            ProjectorError::Incompatible {
                what: "output width",
                expected: 4096,
                actual: 2
            }
        ),
        "{err}"
    );
    assert_eq!(err.label(), "incompatible");
}

#[test]
fn projector_is_send_and_sync() {
    fn shared<T: Send + Sync + 'static>() {}
    shared::<Projector>();
}
