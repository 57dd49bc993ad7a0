//! Tests of avlm-projector through its public API, in one binary so the
//! crate and candle are linked once.

mod common;
mod compress;
mod config;
mod load;
mod mlp;
mod vision;
