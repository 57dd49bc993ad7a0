//! Model bundles: one folder, one typed manifest (`avlm.toml`) naming the
//! encoder, projector and LLM files, the prompt templates, and the decoding
//! settings. [`manifest`] is the format; [`load`] builds the models from it
//! and checks that their shapes agree.

pub mod load;
pub mod manifest;

pub use load::{AudioParts, BundleError, CaptionFormat, LipParts, LoadedBundle, VisionParts};
pub use manifest::Manifest;
