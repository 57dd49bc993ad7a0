//! Tokenizers: a Hugging Face `tokenizer.json`, or the byte-level BPE
//! vocabulary and merges embedded in a GGUF file, plus an incremental
//! detokenizer for streaming text out token by token.

use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::error::{LlmError, Result};
use crate::weights::Gguf;

/// Llama 3's pre-tokenizer pattern (GGUF `tokenizer.ggml.pre` = "llama-bpe").
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A tokenizer with its special tokens.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<u32>,
    eos: Option<u32>,
}

impl Tokenizer {
    /// Loads a Hugging Face `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| LlmError::Tokenizer(format!("{}: {e}", path.display())))?;
        Ok(Tokenizer {
            inner,
            bos: None,
            eos: None,
        })
    }

    /// Builds the tokenizer embedded in a GGUF (`tokenizer.ggml.model` = gpt2,
    /// i.e. byte-level BPE).
    pub fn from_gguf(path: &Path) -> Result<Self> {
        let g = Gguf::open(path)?;
        Self::from_gguf_metadata(&g)
    }

    pub(crate) fn from_gguf_metadata(g: &Gguf) -> Result<Self> {
        let model = g.meta_str("tokenizer.ggml.model").unwrap_or("");
        if model != "gpt2" {
            return Err(LlmError::Tokenizer(format!(
                "GGUF tokenizer model {model:?} is not supported (byte-level BPE \"gpt2\" is)"
            )));
        }
        let strings = |key: &str| -> Result<Vec<String>> {
            match g.meta(key) {
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|v| {
                        v.to_string()
                            .cloned()
                            .map_err(|e| LlmError::Tokenizer(format!("{key}: {e}")))
                    })
                    .collect(),
                _ => Err(LlmError::Tokenizer(format!("GGUF metadata {key} missing"))),
            }
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges: Vec<(String, String)> = strings("tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| {
                let mut parts = m.splitn(2, ' ');
                match (parts.next(), parts.next()) {
                    (Some(a), Some(b)) => Ok((a.to_string(), b.to_string())),
                    _ => Err(LlmError::Tokenizer(format!("malformed merge {m:?}"))),
                }
            })
            .collect::<Result<_>>()?;
        let types: Vec<i64> = match g.meta("tokenizer.ggml.token_type") {
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| match v {
                    Value::I32(x) => *x as i64,
                    Value::U32(x) => *x as i64,
                    Value::I64(x) => *x,
                    _ => 1,
                })
                .collect(),
            _ => vec![1; tokens.len()],
        };
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| LlmError::Tokenizer(format!("cannot build BPE: {e}")))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        let byte_level = ByteLevel::new(false, true, true);
        let pre = g.meta_str("tokenizer.ggml.pre").unwrap_or("default");
        let pre_tokenizer: PreTokenizerWrapper = match pre {
            // llama.cpp splits digits one by one before the GPT-2 pattern for these.
            "smollm" | "starcoder" | "refact" | "codeshell" | "command-r" => {
                Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
            }
            "llama-bpe" | "llama3" => {
                let split = Split::new(
                    SplitPattern::Regex(LLAMA3_PATTERN.into()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .map_err(|e| LlmError::Tokenizer(e.to_string()))?;
                Sequence::new(vec![
                    split.into(),
                    ByteLevel::new(false, true, false).into(),
                ])
                .into()
            }
            _ => byte_level.into(),
        };
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        // Control and user-defined tokens (types 3 and 4) match whole, never split.
        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, &t)| t == 3 || t == 4)
            .map(|(s, _)| AddedToken::from(s.clone(), true))
            .collect();
        inner
            .add_special_tokens(specials)
            .map_err(|e| LlmError::Tokenizer(format!("cannot add special tokens: {e}")))?;
        let id = |key: &str| g.meta_u32(key).ok();
        Ok(Tokenizer {
            inner,
            bos: id("tokenizer.ggml.bos_token_id"),
            eos: id("tokenizer.ggml.eos_token_id"),
        })
    }

    /// Token ids of `text`; special-token strings in it become their ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| LlmError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`; with `skip_special`, control tokens are left out.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| LlmError::Tokenizer(e.to_string()))
    }

    /// The id of a token string (special tokens included).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// A detokenizer that streams text out as tokens arrive.
    pub fn incremental(&self, skip_special: bool) -> IncrementalDecoder<'_> {
        IncrementalDecoder {
            tokenizer: self,
            ids: Vec::new(),
            prefix: 0,
            read: 0,
            skip_special,
        }
    }
}

/// Streams text from tokens without ever emitting half a UTF-8 character:
/// text is released once the tokens so far decode to complete characters.
pub struct IncrementalDecoder<'t> {
    tokenizer: &'t Tokenizer,
    ids: Vec<u32>,
    /// Start of the window decoded for context (so leading spaces merge right).
    prefix: usize,
    /// Tokens whose text has been emitted.
    read: usize,
    skip_special: bool,
}

impl IncrementalDecoder<'_> {
    /// Text of the emitted window, and of the window plus the pending tokens.
    fn windows(&self) -> Result<(String, String)> {
        let t = self.tokenizer;
        Ok((
            t.decode(&self.ids[self.prefix..self.read], self.skip_special)?,
            t.decode(&self.ids[self.prefix..], self.skip_special)?,
        ))
    }

    /// Adds a token; returns the new text it completes, if any.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let (before, after) = self.windows()?;
        if after.len() > before.len() && !after.ends_with('\u{FFFD}') && after.starts_with(&before)
        {
            let new = after[before.len()..].to_string();
            self.prefix = self.read;
            self.read = self.ids.len();
            Ok(Some(new))
        } else {
            Ok(None)
        }
    }

    /// Text still held back (an incomplete character at the very end).
    pub fn finish(&mut self) -> Result<Option<String>> {
        let (before, after) = self.windows()?;
        self.prefix = self.ids.len();
        self.read = self.ids.len();
        Ok((after.len() > before.len() && after.starts_with(&before))
            .then(|| after[before.len()..].to_string()))
    }
}
