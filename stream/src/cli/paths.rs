//! Finding the runtime files tools/setup.sh installs (ONNX Runtime, models)
//! when no path is given: next to the binary's checkout or the working
//! directory, in `.avlm/`.

use std::path::{Path, PathBuf};

/// The first `.avlm` folder found above the executable or the working directory.
pub fn state_dir() -> Option<PathBuf> {
    if let Ok(home) = std::env::var("AVLM_HOME") {
        return Some(PathBuf::from(home));
    }
    let mut starts = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        starts.push(exe);
    }
    if let Ok(cwd) = std::env::current_dir() {
        starts.push(cwd);
    }
    starts.iter().find_map(|start| {
        start
            .ancestors()
            .map(|dir| dir.join(".avlm"))
            .find(|candidate| candidate.is_dir())
    })
}

/// `explicit` if given, else `relative` inside the state folder, else
/// `relative` as is (so the error names a path the user can act on).
pub fn resolve(explicit: Option<PathBuf>, relative: &str) -> PathBuf {
    explicit.unwrap_or_else(|| match state_dir() {
        Some(dir) => dir.join(relative),
        None => Path::new(".avlm").join(relative),
    })
}

/// A file of the checkout (samples, test media) found the way `.avlm` is:
/// beside AVLM_HOME, or above the executable or the working directory;
/// `relative` as is when none has it.
pub fn in_checkout(relative: &str) -> PathBuf {
    let mut starts = Vec::new();
    if let Ok(home) = std::env::var("AVLM_HOME") {
        starts.extend(Path::new(&home).parent().map(Path::to_path_buf));
    }
    if let Ok(exe) = std::env::current_exe() {
        starts.push(exe);
    }
    if let Ok(cwd) = std::env::current_dir() {
        starts.push(cwd);
    }
    starts
        .iter()
        .find_map(|start| {
            start
                .ancestors()
                .map(|dir| dir.join(relative))
                .find(|candidate| candidate.exists())
        })
        .unwrap_or_else(|| PathBuf::from(relative))
}
