//! `avlm eval`: word and character error rates on a test set, in process or
//! through a running server, clean and with noise at chosen SNRs.

pub mod clip;
pub mod lrs3;
pub mod noise;
pub mod plot;
pub mod wer;
