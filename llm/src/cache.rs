//! The KV cache a caller owns for one sequence: preallocated per layer, so a
//! decode step writes one position in place instead of concatenating the
//! whole cache; `truncate` rolls back to any earlier length (re-decoding a
//! partial result reuses the shared prompt prefix this way).
//!
//! A cache may be bounded for endless streams ([`Window`]): it keeps the
//! first `sinks` positions (BOS and the system prompt) and the most recent
//! ones. Positions are indices in the cache (StreamingLLM): keys are stored
//! rotated, and when old positions leave, the keys after them are rotated
//! back by the evicted span (llama.cpp's context shift), in f32.

use candle_core::{DType, Device, Tensor};

use crate::error::{LlmError, Result};
use crate::LlamaConfig;

/// Sink + recent-window bounds of a cache for an endless stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Leading positions never evicted.
    pub sinks: usize,
    /// Most recent positions kept after the sinks.
    pub recent: usize,
    /// Positions evicted at least at once when the cache is full: each
    /// eviction moves the whole window, so evicting in blocks amortises it.
    pub evict: usize,
}

impl Window {
    /// Positions the cache holds at most.
    pub fn capacity(&self) -> usize {
        self.sinks + self.recent
    }
}

pub struct KvCache {
    /// Per layer, `[1, kv_heads, capacity, head_dim]`.
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    len: usize,
    capacity: usize,
    window: Option<Window>,
    /// Positions evicted so far (a windowed cache's stream position is
    /// `evicted + len`).
    evicted: u64,
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
            window: None,
            evicted: 0,
        })
    }

    /// A bounded cache that keeps `window.sinks` leading and up to
    /// `window.recent` recent positions, evicting as it fills.
    pub fn windowed(config: &LlamaConfig, window: Window, device: &Device) -> Result<Self> {
        if window.recent == 0 || window.evict == 0 || window.evict > window.recent {
            return Err(LlmError::InvalidInput(format!(
                "a cache window needs 1 <= evict ({}) <= recent ({})",
                window.evict, window.recent
            )));
        }
        let mut cache = Self::new(config, window.capacity(), device)?;
        cache.window = Some(window);
        Ok(cache)
    }

    /// Positions evicted so far by the window.
    pub fn evicted(&self) -> u64 {
        self.evicted
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
        self.evicted = 0;
    }

    /// How many positions must leave before `n` more fit: 0 when they fit
    /// or the cache is not windowed.
    pub(crate) fn eviction_for(&self, n: usize) -> usize {
        match self.window {
            Some(w) if self.len + n > self.capacity => {
                let needed = self.len + n - self.capacity;
                needed.max(w.evict).min(self.len.saturating_sub(w.sinks))
            }
            _ => 0,
        }
    }

    /// Drops `d` positions after the sinks; `rotate_back` turns keys
    /// `[1, kv_heads, n, head_dim]` rotated for position p into ones for p - d.
    pub(crate) fn evict(
        &mut self,
        d: usize,
        rotate_back: impl Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<()> {
        let Some(w) = self.window else {
            return Ok(());
        };
        let d = d.min(self.len.saturating_sub(w.sinks));
        if d == 0 {
            return Ok(());
        }
        let moved = self.len - w.sinks - d;
        if moved > 0 {
            for layer in 0..self.keys.len() {
                let k = self.keys[layer]
                    .narrow(2, w.sinks + d, moved)?
                    .contiguous()?;
                let v = self.values[layer]
                    .narrow(2, w.sinks + d, moved)?
                    .contiguous()?;
                self.keys[layer].slice_set(&rotate_back(&k)?, 2, w.sinks)?;
                self.values[layer].slice_set(&v, 2, w.sinks)?;
            }
        }
        self.len -= d;
        self.evicted += d as u64;
        Ok(())
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

    /// Runs `f` on the keys and values of `layer` as f32 slices laid out
    /// `[kv_heads, capacity, head_dim]`, with the capacity (CPU caches only).
    pub(crate) fn with_layer<R>(
        &self,
        layer: usize,
        f: impl FnOnce(&[f32], &[f32], usize) -> R,
    ) -> Result<R> {
        let (ks, kl) = self.keys[layer].storage_and_layout();
        let (vs, vl) = self.values[layer].storage_and_layout();
        match (&*ks, &*vs) {
            (
                candle_core::Storage::Cpu(candle_core::CpuStorage::F32(k)),
                candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)),
            ) if kl.is_contiguous() && vl.is_contiguous() => Ok(f(
                &k[kl.start_offset()..],
                &v[vl.start_offset()..],
                self.capacity,
            )),
            _ => Err(LlmError::InvalidInput(
                "the one-token attention kernel needs a contiguous f32 CPU cache".into(),
            )),
        }
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
        self.evicted = other.evicted;
        Ok(())
    }
}
