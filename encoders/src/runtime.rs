//! Loading the ONNX Runtime shared library once per process.
//!
//! avlm uses ONNX Runtime through `load-dynamic`: the library is found at run
//! time, so a missing or wrong library is a clear error instead of a panic.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;

use crate::EncoderError;

/// ONNX Runtime allows one environment per process; it lives here.
static ENVIRONMENT: OnceLock<Result<(PathBuf, Environment), String>> = OnceLock::new();

/// Loads ONNX Runtime from `library` (the first call decides; later calls
/// report its outcome). Must run before any ONNX session is built.
pub fn init(library: &Path) -> Result<(), EncoderError> {
    let outcome = ENVIRONMENT.get_or_init(|| {
        if !library.is_file() {
            return Err(
                "no such file (run tools/setup.sh, or pass --ort-lib / set ORT_DYLIB_PATH)".into(),
            );
        }
        let builder = ort::init_from(library).map_err(|e| e.to_string())?;
        let env = builder
            .with_name("avlm")
            .build()
            .map_err(|e| e.to_string())?;
        Ok((library.to_path_buf(), env))
    });
    outcome
        .as_ref()
        .map(|_| ())
        .map_err(|reason| EncoderError::Runtime {
            path: library.to_path_buf(),
            reason: reason.clone(),
        })
}

/// The ONNX Runtime environment, once [`init`] succeeded.
pub(crate) fn environment() -> Result<&'static Environment, EncoderError> {
    match ENVIRONMENT.get() {
        Some(Ok((_, env))) => Ok(env),
        Some(Err(reason)) => Err(EncoderError::Runtime {
            path: PathBuf::new(),
            reason: reason.clone(),
        }),
        None => Err(EncoderError::Runtime {
            path: PathBuf::new(),
            reason: "ONNX Runtime was not initialised (call avlm_encoders::runtime::init first)"
                .into(),
        }),
    }
}

/// An ONNX session of `path` on `threads` intra-op threads (one inter-op);
/// `missing` says how to get the file when it is not there.
pub(crate) fn session(
    path: &Path,
    threads: usize,
    missing: &str,
) -> Result<ort::session::Session, EncoderError> {
    let env = environment()?;
    let load_err = |reason: String| EncoderError::ModelLoad {
        path: path.to_path_buf(),
        reason,
    };
    if !path.is_file() {
        return Err(load_err(format!("no such file ({missing})")));
    }
    ort::session::Session::builder(env)
        .map_err(|e| load_err(e.to_string()))?
        .with_intra_threads(threads.max(1))
        .map_err(|e| load_err(e.to_string()))?
        .with_inter_threads(1)
        .map_err(|e| load_err(e.to_string()))?
        .commit_from_file(path)
        .map_err(|e| load_err(e.to_string()))
}
