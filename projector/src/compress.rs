//! Token-rate compression: `k` consecutive encoder frames become one row,
//! either concatenated (stack) or averaged (pool). A trailing partial group
//! is dropped, matching Llama-AVSR's training, so the caller decides whether
//! to hold those frames back for the next chunk.

use candle_core::Tensor;

use crate::config::Compression;
use crate::error::{ProjectorError, Result};

/// `features` `[frames, dim]` -> `[frames / k, k * dim]` (stack) or `[frames / k, dim]` (pool).
///
/// Fewer than `k` frames give a tensor with 0 rows, not an error: in a stream
/// "no token yet" is a normal answer. Works in the input's dtype and device.
pub fn compress(features: &Tensor, c: &Compression) -> Result<Tensor> {
    c.validate()?;
    let (frames, dim) = features.dims2().map_err(|_| {
        ProjectorError::InvalidInput(format!(
            "features must be [frames, dim], got shape {:?}",
            features.dims()
        ))
    })?;
    let k = c.k();
    let groups = c.output_len(frames);
    let width = c.output_dim(dim);
    if groups == 0 {
        // Built directly rather than through narrow/reshape so that zero-sized
        // tensors never reach a kernel.
        return Ok(Tensor::zeros(
            (0, width),
            features.dtype(),
            features.device(),
        )?);
    }
    let used = features.narrow(0, 0, groups * k)?;
    let rows = match c {
        // Row-major [groups * k, dim] read as [groups, k * dim] is exactly the
        // frame-major concatenation of each group.
        Compression::Stack { .. } => used.reshape((groups, width))?,
        Compression::Pool { .. } => used.reshape((groups, k, dim))?.mean(1)?,
    };
    Ok(rows)
}
