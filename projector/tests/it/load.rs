//! Loading from safetensors files written by the test, in f32, f16 and bf16,
//! and the errors for missing, misshapen or mistyped tensors.

use std::collections::HashMap;

use avlm_projector::{
    llama_avsr_key_map, Activation, LlamaAvsrModality, Projector, ProjectorConfig, ProjectorError,
};
use candle_core::{DType, Device, Tensor};

use crate::common::{assert_close, rows, toy_config, toy_features, toy_weights, TempFile};

/// The toy weights under `{prefix}.fc1.weight` etc., converted to `dtype`.
fn toy_tensors(prefix: &str, dtype: DType) -> HashMap<String, Tensor> {
    let w = toy_weights();
    [
        ("fc1.weight", w.fc1_weight),
        ("fc1.bias", w.fc1_bias),
        ("fc2.weight", w.fc2_weight),
        ("fc2.bias", w.fc2_bias),
    ]
    .into_iter()
    .map(|(k, t)| {
        (
            format!("{prefix}.{k}"),
            t.to_dtype(dtype).expect("to_dtype"),
        )
    })
    .collect()
}

fn save(tensors: &HashMap<String, Tensor>, name: &str) -> TempFile {
    let file = TempFile::new(name);
    candle_core::safetensors::save(tensors, file.path()).expect("save safetensors");
    file
}

fn load(file: &TempFile, config: ProjectorConfig) -> Result<Projector, ProjectorError> {
    Projector::load(file.path(), "audio_proj", config, &Device::Cpu)
}

#[test]
fn loads_f32_f16_and_bf16_to_the_same_projector() {
    let expected = vec![vec![3.25, -1.], vec![0.25, 0.]];
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let file = save(
            &toy_tensors("audio_proj", dtype),
            &format!("dtype-{dtype:?}"),
        );
        let p = load(&file, toy_config(Activation::Relu)).expect("load");
        let out = p.forward(&toy_features()).expect("forward");
        assert_eq!(out.dtype(), DType::F32);
        assert_close(&rows(&out), &expected, 0.);
    }
}

#[test]
fn loads_layer_norm_and_ignores_other_tensors() {
    let dev = Device::Cpu;
    let mut tensors = toy_tensors("audio_proj", DType::F16);
    let norm_w = Tensor::new(&[2f32, 1.], &dev).expect("w");
    let norm_b = Tensor::new(&[0f32, 0.5], &dev).expect("b");
    tensors.insert("audio_proj.norm.weight".into(), norm_w);
    tensors.insert("audio_proj.norm.bias".into(), norm_b);
    // Another projector in the same file must not be touched.
    tensors.extend(toy_tensors("video_proj", DType::F32));
    let file = save(&tensors, "norm");
    let config = ProjectorConfig {
        layer_norm: true,
        ..toy_config(Activation::Relu)
    };
    let p = load(&file, config).expect("load");
    let out = p.forward(&toy_features()).expect("forward");
    // [3.25, -1] and [0.25, 0] normalise to [1, -1] (less eps); then w*x + b.
    let s0 = 2.125 / (2.125f32 * 2.125 + 1e-5).sqrt();
    let s1 = 0.125 / (0.125f32 * 0.125 + 1e-5).sqrt();
    let expected = [vec![2. * s0, 0.5 - s0], vec![2. * s1, 0.5 - s1]];
    assert_close(&rows(&out), &expected, 1e-5);
}

#[test]
fn missing_tensor_is_named() {
    let mut tensors = toy_tensors("audio_proj", DType::F32);
    tensors.remove("audio_proj.fc2.bias");
    let file = save(&tensors, "missing");
    let err = load(&file, toy_config(Activation::Relu)).unwrap_err();
    match &err {
        ProjectorError::MissingTensor { name, .. } => assert_eq!(name, "audio_proj.fc2.bias"),
        other => panic!("expected MissingTensor, got {other}"),
    }
    assert!(err.to_string().contains("audio_proj.fc2.bias"), "{err}");
    assert_eq!(err.label(), "missing_tensor");
    // A wrong prefix misses the first tensor it looks for.
    let err = Projector::load(
        file.path(),
        "video_proj",
        toy_config(Activation::Relu),
        &Device::Cpu,
    )
    .unwrap_err();
    assert!(err.to_string().contains("video_proj.fc1.weight"), "{err}");
}

#[test]
fn wrong_shape_names_tensor_and_shapes() {
    let dev = Device::Cpu;
    let mut tensors = toy_tensors("audio_proj", DType::F32);
    tensors.insert(
        "audio_proj.fc2.weight".into(),
        Tensor::zeros((3, 2), DType::F32, &dev).expect("zeros"),
    );
    let file = save(&tensors, "shape");
    let err = load(&file, toy_config(Activation::Relu)).unwrap_err();
    match &err {
        ProjectorError::BadShape {
            name,
            expected,
            actual,
        } => {
            assert_eq!(name, "audio_proj.fc2.weight");
            assert_eq!(expected, &[2, 3]);
            assert_eq!(actual, &[3, 2]);
        }
        other => panic!("expected BadShape, got {other}"),
    }
    assert_eq!(err.label(), "bad_shape");
}

#[test]
fn integer_weights_are_rejected() {
    let mut tensors = toy_tensors("audio_proj", DType::F32);
    let ints = Tensor::zeros(3, DType::I64, &Device::Cpu).expect("zeros");
    tensors.insert("audio_proj.fc1.bias".into(), ints);
    let file = save(&tensors, "dtype-int");
    let err = load(&file, toy_config(Activation::Relu)).unwrap_err();
    assert!(
        matches!(&err, ProjectorError::UnsupportedDtype { name, .. } if name == "audio_proj.fc1.bias"),
        "{err}"
    );
}

#[test]
fn unreadable_file_is_io_error() {
    let file = TempFile::new("does-not-exist");
    let err = load(&file, toy_config(Activation::Relu)).unwrap_err();
    assert!(matches!(err, ProjectorError::Io { .. }), "{err}");
    let garbage = TempFile::new("garbage");
    std::fs::write(garbage.path(), b"not a safetensors file").expect("write");
    let err = load(&garbage, toy_config(Activation::Relu)).unwrap_err();
    assert!(matches!(err, ProjectorError::Io { .. }), "{err}");
    assert_eq!(err.label(), "io");
}

#[test]
fn llama_avsr_names_load_after_renaming() {
    let map = llama_avsr_key_map(LlamaAvsrModality::Audio);
    let expected: Vec<(String, String)> = [
        ("audio_proj.0.weight", "audio_proj.fc1.weight"),
        ("audio_proj.0.bias", "audio_proj.fc1.bias"),
        ("audio_proj.2.weight", "audio_proj.fc2.weight"),
        ("audio_proj.2.bias", "audio_proj.fc2.bias"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(map, expected);
    assert_eq!(
        llama_avsr_key_map(LlamaAvsrModality::Video)[2].0,
        "video_proj.2.weight"
    );

    // A file named the way Llama-AVSR's nn.Sequential names its layers.
    let ours = toy_tensors("audio_proj", DType::BF16);
    let theirs: HashMap<String, Tensor> = map
        .iter()
        .map(|(their_key, our_key)| (their_key.clone(), ours[our_key].clone()))
        .collect();
    let file = save(&theirs, "llama-avsr");
    let err = load(&file, toy_config(Activation::Relu)).unwrap_err();
    assert!(matches!(err, ProjectorError::MissingTensor { .. }), "{err}");

    let renamed: HashMap<String, Tensor> = map
        .iter()
        .map(|(their_key, our_key)| (our_key.clone(), theirs[their_key].clone()))
        .collect();
    let file = save(&renamed, "llama-avsr-renamed");
    let prefix = LlamaAvsrModality::Audio.module();
    let p = Projector::load(
        file.path(),
        prefix,
        toy_config(Activation::Relu),
        &Device::Cpu,
    )
    .expect("load renamed");
    let out = p.forward(&toy_features()).expect("forward");
    assert_close(&rows(&out), &[vec![3.25, -1.], vec![0.25, 0.]], 0.);
}
