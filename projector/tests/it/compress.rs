//! Stack and pool on small inputs checked by hand.

use avlm_projector::{compress, Compression, ProjectorError};
use candle_core::{DType, Device, Tensor};

use crate::common::rows;

/// Frames f_i = [2i, 2i+1] for i in 0..5.
fn five_frames() -> Tensor {
    Tensor::arange(0f32, 10., &Device::Cpu)
        .and_then(|t| t.reshape((5, 2)))
        .expect("fixture tensor")
}

#[test]
fn stack_concatenates_frames_in_order_and_drops_leftover() {
    let out = compress(&five_frames(), &Compression::Stack { k: 2 }).expect("stack");
    // [f0, f1], [f2, f3]; f4 = [8, 9] dropped.
    assert_eq!(rows(&out), vec![vec![0., 1., 2., 3.], vec![4., 5., 6., 7.]]);
}

#[test]
fn stack_of_three_keeps_one_group() {
    let out = compress(&five_frames(), &Compression::Stack { k: 3 }).expect("stack");
    assert_eq!(rows(&out), vec![vec![0., 1., 2., 3., 4., 5.]]);
}

#[test]
fn pool_averages_frames_and_drops_leftover() {
    let out = compress(&five_frames(), &Compression::Pool { k: 2 }).expect("pool");
    // mean(f0, f1) = [1, 2], mean(f2, f3) = [5, 6].
    assert_eq!(rows(&out), vec![vec![1., 2.], vec![5., 6.]]);
    let out = compress(&five_frames(), &Compression::Pool { k: 3 }).expect("pool");
    assert_eq!(rows(&out), vec![vec![2., 3.]]);
}

#[test]
fn k_of_one_is_identity() {
    for c in [Compression::Stack { k: 1 }, Compression::Pool { k: 1 }] {
        let out = compress(&five_frames(), &c).expect("compress");
        assert_eq!(rows(&out), rows(&five_frames()));
    }
}

#[test]
fn fewer_frames_than_k_gives_zero_rows() {
    let one = five_frames().narrow(0, 0, 1).expect("narrow");
    let out = compress(&one, &Compression::Stack { k: 2 }).expect("stack");
    assert_eq!(out.dims(), &[0, 4]);
    let out = compress(&one, &Compression::Pool { k: 4 }).expect("pool");
    assert_eq!(out.dims(), &[0, 2]);
    let none = Tensor::zeros((0, 2), DType::F32, &Device::Cpu).expect("zeros");
    let out = compress(&none, &Compression::Stack { k: 4 }).expect("stack");
    assert_eq!(out.dims(), &[0, 8]);
}

#[test]
fn output_len_matches_compress() {
    for k in 1..=6 {
        let c = Compression::Stack { k };
        let out = compress(&five_frames(), &c).expect("stack");
        assert_eq!(out.dim(0).expect("dim"), c.output_len(5), "k = {k}");
    }
}

#[test]
fn zero_k_and_wrong_rank_are_errors() {
    let err = compress(&five_frames(), &Compression::Pool { k: 0 }).unwrap_err();
    assert!(matches!(err, ProjectorError::InvalidConfig(_)), "{err}");
    assert_eq!(err.label(), "invalid_config");
    let flat = Tensor::zeros(10, DType::F32, &Device::Cpu).expect("zeros");
    let err = compress(&flat, &Compression::Stack { k: 2 }).unwrap_err();
    assert!(matches!(err, ProjectorError::InvalidInput(_)), "{err}");
}
