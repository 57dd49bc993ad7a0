//! The KV cache a caller owns for one sequence: preallocated per layer, so a
//! decode step writes one position in place instead of concatenating the
//! whole cache; `truncate` rolls back to any earlier length (re-decoding a
//! partial result reuses the shared prompt prefix this way).

use candle_core::{DType, Device, Tensor};

use crate::error::{LlmError, Result};
use crate::LlamaConfig;

pub struct KvCache {
    /// Per layer, `[1, kv_heads, capacity, head_dim]`.
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    len: usize,
    capacity: usize,
}

impl KvCache {
    /// A cache for up to `capacity` positions of `config`'s model.
    pub fn new(config: &LlamaConfig, capacity: usize, device: &Device) -> Result<Self> {
        let shape = (1, config.num_kv_heads, capacity, config.head_dim);
        let mut keys = Vec::with_capacity(config.num_layers);
        let mut values = Vec::with_capacity(config.num_layers);
        for _ in 0..config.num_layers {
            keys.push(Tensor::zeros(shape, DType::F32, device)?);
            values.push(Tensor::zeros(shape, DType::F32, device)?);
        }
        Ok(KvCache {
            keys,
            values,
            len: 0,
            capacity,
        })
    }

    /// Positions filled.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes held by the cache (all layers, keys and values).
    pub fn bytes(&self) -> usize {
        self.keys
            .iter()
            .chain(&self.values)
            .map(|t| t.elem_count() * 4)
            .sum()
    }

    /// Bytes one position costs.
    pub fn bytes_per_token(&self) -> usize {
        self.bytes() / self.capacity.max(1)
    }

    /// Forgets positions from `len` on; the next forward continues there.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    pub fn reset(&mut self) {
        self.len = 0;
    }

    /// Checks `n` more positions fit.
    pub(crate) fn reserve(&self, n: usize) -> Result<()> {
        if self.len + n > self.capacity {
            return Err(LlmError::CacheFull {
                needed: self.len + n,
                capacity: self.capacity,
            });
        }
        Ok(())
    }

    /// Writes `k`, `v` (`[1, kv_heads, n, head_dim]`) of `layer` at the current
    /// end and returns views of everything cached for that layer including them.
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let n = k.dim(2)?;
        self.keys[layer].slice_set(&k.contiguous()?, 2, self.len)?;
        self.values[layer].slice_set(&v.contiguous()?, 2, self.len)?;
        let total = self.len + n;
        Ok((
            self.keys[layer].narrow(2, 0, total)?,
            self.values[layer].narrow(2, 0, total)?,
        ))
    }

    /// Marks `n` appended positions as filled (after all layers wrote them).
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }

    /// Copies the first `len` positions of `other` into this cache (forking a
    /// beam, or starting from a cached prompt prefix).
    pub fn copy_prefix_from(&mut self, other: &KvCache, len: usize) -> Result<()> {
        if len > other.len || len > self.capacity {
            return Err(LlmError::InvalidInput(format!(
                "cannot copy {len} positions from a cache of {} into one of capacity {}",
                other.len, self.capacity
            )));
        }
        for layer in 0..self.keys.len() {
            if len > 0 {
                let k = other.keys[layer].narrow(2, 0, len)?.contiguous()?;
                let v = other.values[layer].narrow(2, 0, len)?.contiguous()?;
                self.keys[layer].slice_set(&k, 2, 0)?;
                self.values[layer].slice_set(&v, 2, 0)?;
            }
        }
        self.len = len;
        Ok(())
    }
}
