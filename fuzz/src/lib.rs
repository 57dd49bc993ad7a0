//! Entry points for the fuzz targets in `fuzz_targets/`; the regression
//! replay test in `stream/tests/fuzz_regressions.rs` includes the same files.

pub mod entry;
pub mod session;
