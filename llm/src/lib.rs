//! avlm's language model: a LLaMA that runs on token ids or on embeddings
//! (audio and video tokens spliced between text), with a KV cache owned by
//! the caller, a tokenizer from `tokenizer.json` or a GGUF, greedy and beam
//! search, and an incremental detokenizer.
//!
//! The model is immutable and shared; every piece of per-stream state lives
//! in a [`KvCache`] the caller owns: `forward(&self, input, &mut cache)`.

pub mod cache;
pub mod config;
pub mod ctc;
pub mod error;
pub mod generate;
pub mod lora;
pub mod model;
pub mod q8;
pub mod tokenizer;
mod weights;

pub use cache::{KvCache, Window};
pub use config::{LlamaConfig, RopeScaling, RopeStyle};
pub use ctc::{CtcHead, CtcPrefixScorer, CtcState};
pub use error::LlmError;
pub use generate::{
    beam_search, greedy, joint_beam_search, BeamConfig, BeamSearch, CtcGuide, Generation,
    GreedySearch, Interrupt, StopCriteria,
};
pub use lora::Lora;
pub use model::{Llama, WeightMode};
pub use tokenizer::{IncrementalDecoder, Tokenizer};
