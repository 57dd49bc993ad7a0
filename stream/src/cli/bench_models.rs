//! `avlm bench` model sections: audio front end and encoder cost per second
//! of audio, LLM prefill and decode speed at 1 and 2 threads (ours and, when
//! llama-cpp-python is installed, llama.cpp's on the same GGUF), and the KV
//! cache's bytes per token. Thread counts are fixed per process (rayon), so
//! each LLM measurement runs in a child process of this binary.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use avlm_encoders::{LogMel, WhisperEncoder};
use avlm_llm::{Llama, Tokenizer, WeightMode};
use avlm_stream::bundle::manifest::{LlmFormat, Manifest};
use candle_core::Device;
use serde::{Deserialize, Serialize};

/// One LLM speed measurement.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct LlmSpeed {
    pub prefill_tps: f64,
    pub decode_tps: f64,
    /// Tokens/s of a beam search's decode step over `BEAM` hypotheses: one
    /// one-token forward per hypothesis, and one batched forward for all.
    #[serde(default)]
    pub beam_sequential_tps: f64,
    #[serde(default)]
    pub beam_batched_tps: f64,
}

/// Hypotheses of the beam-step measurement (the default bundle's beam width).
pub const BEAM: usize = 4;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// A deterministic prompt of exactly `n` tokens.
fn prompt_ids(tok: &Tokenizer, n: usize) -> anyhow::Result<Vec<u32>> {
    let text = "The quick brown fox jumps over the lazy dog while the streaming server listens and transcribes every word it hears. ";
    let mut ids = Vec::new();
    while ids.len() < n {
        ids.extend(tok.encode(text)?);
    }
    ids.truncate(n);
    Ok(ids)
}

/// Measures our LLM in this process (the parent sets RAYON_NUM_THREADS).
pub fn measure_llm(
    gguf: &Path,
    mode: WeightMode,
    prompt: usize,
    new: usize,
) -> anyhow::Result<LlmSpeed> {
    let llm = Llama::from_gguf(gguf, mode, &Device::Cpu)?;
    let tok = Tokenizer::from_gguf(gguf)?;
    let ids = prompt_ids(&tok, prompt)?;
    let mut prefill = Vec::new();
    let mut logits = Vec::new();
    for _ in 0..3 {
        let mut cache = llm.new_cache(prompt + new + 1)?;
        let t = Instant::now();
        logits = Llama::last_logits(&llm.forward(&ids, &mut cache, false)?)?;
        prefill.push(t.elapsed());
    }
    let mut cache = llm.new_cache(prompt + new + 1)?;
    llm.forward(&ids, &mut cache, false)?;
    let t = Instant::now();
    for _ in 0..new {
        let next = Llama::argmax(&logits);
        logits = Llama::last_logits(&llm.forward(&[next], &mut cache, false)?)?;
    }
    let decode = t.elapsed();
    // A beam search's step: BEAM hypotheses after the same prompt, each
    // fed its own token, first one forward at a time, then all in one.
    let steps = (new / BEAM).max(1);
    let beam_caches = || -> anyhow::Result<Vec<avlm_llm::KvCache>> {
        let mut first = llm.new_cache(prompt + steps + 1)?;
        llm.forward(&ids, &mut first, false)?;
        (0..BEAM)
            .map(|_| {
                let mut c = llm.new_cache(prompt + steps + 1)?;
                c.copy_prefix_from(&first, prompt)?;
                Ok(c)
            })
            .collect()
    };
    let token = |step: usize, b: usize| ids[(step * BEAM + b) % ids.len()];
    let mut caches = beam_caches()?;
    let t = Instant::now();
    for step in 0..steps {
        for (b, cache) in caches.iter_mut().enumerate() {
            llm.forward(&[token(step, b)], cache, false)?;
        }
    }
    let sequential = t.elapsed();
    let mut caches = beam_caches()?;
    let t = Instant::now();
    for step in 0..steps {
        let tokens: Vec<u32> = (0..BEAM).map(|b| token(step, b)).collect();
        let mut refs: Vec<&mut avlm_llm::KvCache> = caches.iter_mut().collect();
        llm.forward_batch(&tokens, &mut refs)?;
    }
    let batched = t.elapsed();
    let beam_tokens = (steps * BEAM) as f64;
    Ok(LlmSpeed {
        prefill_tps: prompt as f64 / median(prefill).as_secs_f64(),
        decode_tps: new as f64 / decode.as_secs_f64(),
        beam_sequential_tps: beam_tokens / sequential.as_secs_f64(),
        beam_batched_tps: beam_tokens / batched.as_secs_f64(),
    })
}

/// Runs `measure_llm` in a child process with `threads` threads.
pub fn llm_in_child(
    gguf: &Path,
    mode: &str,
    threads: usize,
    prompt: usize,
    new: usize,
) -> anyhow::Result<LlmSpeed> {
    let exe = std::env::current_exe()?;
    let out = Command::new(exe)
        .args(["bench", "--llm-worker", mode, "--gguf"])
        .arg(gguf)
        .args([
            "--prompt-tokens",
            &prompt.to_string(),
            "--new-tokens",
            &new.to_string(),
        ])
        .env("RAYON_NUM_THREADS", threads.to_string())
        .env("AVLM_LOG", "error")
        .output()?;
    if !out.status.success() {
        anyhow::bail!(
            "LLM bench worker failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

const LLAMA_CPP_SCRIPT: &str = r#"
import json, sys, time
from llama_cpp import Llama
path, threads, prompt_n, new_n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
llm = Llama(model_path=path, n_ctx=prompt_n + new_n + 8, n_threads=threads, n_threads_batch=threads, n_batch=512, verbose=False)
text = "The quick brown fox jumps over the lazy dog while the streaming server listens and transcribes every word it hears. "
ids = []
while len(ids) < prompt_n:
    ids += llm.tokenize(text.encode(), add_bos=False, special=False)
ids = ids[:prompt_n]
runs = []
for _ in range(3):
    llm.reset()
    t = time.perf_counter(); llm.eval(ids); runs.append(time.perf_counter() - t)
runs.sort()
llm.reset(); llm.eval(ids)
t = time.perf_counter()
for _ in range(new_n):
    tok = int(llm.scores[llm.n_tokens - 1].argmax())
    llm.eval([tok])
decode = time.perf_counter() - t
print(json.dumps({"prefill_tps": prompt_n / runs[1], "decode_tps": new_n / decode}))
"#;

/// llama.cpp (through llama-cpp-python) on the same GGUF; the error says
/// why there is no measurement.
pub fn llama_cpp(
    python: &Path,
    gguf: &Path,
    threads: usize,
    prompt: usize,
    new: usize,
) -> Result<LlmSpeed, String> {
    let has = Command::new(python)
        .args(["-c", "import llama_cpp"])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if !has.status.success() {
        return Err("not installed".into());
    }
    let out = Command::new(python)
        .arg("-c")
        .arg(LLAMA_CPP_SCRIPT)
        .arg(gguf)
        .args([threads.to_string(), prompt.to_string(), new.to_string()])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        use std::os::unix::process::ExitStatusExt;
        return Err(match (out.status.code(), out.status.signal()) {
            (Some(code), _) => format!("failed (exit {code})"),
            (None, Some(sig)) => format!("crashed (signal {sig})"),
            (None, None) => "crashed".into(),
        });
    }
    serde_json::from_slice(out.stdout.trim_ascii()).map_err(|e| format!("bad output: {e}"))
}

/// llama.cpp's own llama-bench on this machine, from shared/design/ANCHORS.md
/// (not measured in this run): (threads, prefill tok/s, decode tok/s).
const ANCHOR_LLAMA_CPP: [(usize, f64, f64); 2] = [(1, 183.0, 85.0), (2, 350.0, 134.0)];

/// Milliseconds of front end + encoder per second of audio, at several window lengths.
pub fn encoder_table(encoder_path: &Path, threads: usize) -> anyhow::Result<()> {
    let mut enc = WhisperEncoder::load(encoder_path, threads)?;
    let front = LogMel::whisper(enc.n_mels());
    println!(
        "\naudio front end + Whisper encoder ({}, {threads} threads)",
        encoder_path.display()
    );
    println!(
        "{:>10} {:>12} {:>12} {:>16}",
        "window s", "log-mel ms", "encoder ms", "ms per audio s"
    );
    for seconds in [2usize, 4, 10, 30] {
        let samples: Vec<f32> = (0..seconds * 16_000)
            .map(|i| 0.1 * ((i as f32) * 0.05).sin() * ((i as f32) * 0.0003).cos())
            .collect();
        let mut mel_t = Vec::new();
        let mut enc_t = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let mel = front.compute(&samples);
            mel_t.push(t.elapsed());
            let t = Instant::now();
            enc.encode(&mel)?;
            enc_t.push(t.elapsed());
        }
        let (m, e) = (median(mel_t), median(enc_t));
        println!(
            "{seconds:>10} {:>12.1} {:>12.1} {:>16.1}",
            m.as_secs_f64() * 1e3,
            e.as_secs_f64() * 1e3,
            (m + e).as_secs_f64() * 1e3 / seconds as f64
        );
    }
    Ok(())
}

/// The LLM table: ours in both weight modes and llama.cpp, at each thread count.
pub fn llm_table(
    gguf: &Path,
    python: Option<PathBuf>,
    threads: &[usize],
    prompt: usize,
    new: usize,
) -> anyhow::Result<()> {
    println!(
        "\nLLM {} ({prompt}-token prompt, {new} greedy new tokens)",
        gguf.display()
    );
    println!(
        "{:<26} {:>8} {:>14} {:>14} {:>20} {:>34}",
        "engine",
        "threads",
        "prefill tok/s",
        "decode tok/s",
        "vs llama.cpp (p / d)",
        format!("beam-{BEAM} step tok/s: 1 by 1 / batch"),
    );
    for &t in threads {
        let measured = match python.as_deref() {
            Some(py) => llama_cpp(py, gguf, t, prompt, new),
            None => Err("not installed".into()),
        };
        let anchor = ANCHOR_LLAMA_CPP
            .iter()
            .find(|a| a.0 == t)
            .map(|a| LlmSpeed {
                prefill_tps: a.1,
                decode_tps: a.2,
                ..LlmSpeed::default()
            });
        let reference = measured.as_ref().ok().copied().or(anchor);
        for (label, mode) in [
            ("avlm (f32 weights)", "f32"),
            ("avlm (Q8_0 re-quantized)", "q8"),
            ("avlm (mixed f32 / Q8_0)", "mixed"),
            ("avlm (Q4_1 as stored)", "quantized"),
        ] {
            let s = llm_in_child(gguf, mode, t, prompt, new)?;
            let ratio = reference
                .map(|r| {
                    format!(
                        "{:.2}x / {:.2}x",
                        s.prefill_tps / r.prefill_tps,
                        s.decode_tps / r.decode_tps
                    )
                })
                .unwrap_or_else(|| "-".into());
            let beam = format!(
                "{:.1} / {:.1} ({:.2}x)",
                s.beam_sequential_tps,
                s.beam_batched_tps,
                s.beam_batched_tps / s.beam_sequential_tps
            );
            println!(
                "{label:<26} {t:>8} {:>14.1} {:>14.1} {ratio:>20} {beam:>34}",
                s.prefill_tps, s.decode_tps
            );
        }
        match &measured {
            Ok(r) => println!(
                "{:<26} {t:>8} {:>14.1} {:>14.1} {:>20}",
                "llama.cpp (this run)", r.prefill_tps, r.decode_tps, "1.00x / 1.00x"
            ),
            Err(why) => {
                println!(
                    "{:<26} {t:>8} {:>14} {:>14} {:>20}",
                    "llama.cpp (this run)", "-", "-", why
                );
                if let Some(a) = anchor {
                    println!(
                        "{:<26} {t:>8} {:>14.1} {:>14.1} {:>20}",
                        "llama.cpp (ANCHORS.md)",
                        a.prefill_tps,
                        a.decode_tps,
                        "ratios use this row"
                    );
                }
            }
        }
    }
    Ok(())
}

/// Resolves the bundle's GGUF and encoder paths.
pub fn bundle_paths(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let m = Manifest::read(dir).map_err(|e| anyhow::anyhow!(e))?;
    if m.llm.format != LlmFormat::Gguf {
        anyhow::bail!("the LLM bench runs on GGUF bundles");
    }
    let audio = m
        .audio
        .ok_or_else(|| anyhow::anyhow!("bundle has no audio encoder"))?;
    Ok((dir.join(m.llm.weights), dir.join(audio.encoder)))
}

/// KV cache bytes per token of the bundle's LLM (from its metadata).
pub fn kv_bytes(gguf: &Path) -> anyhow::Result<usize> {
    Ok(avlm_llm::LlamaConfig::from_gguf(gguf)?.kv_bytes_per_token())
}

/// Row counts of the batched decode measurement.
pub const ROW_COUNTS: [usize; 4] = [1, 4, 8, 16];

/// Aggregate decode tokens/s when `rows` sequences at different positions
/// (as the scheduler's rows of different sessions are) step together, for
/// each count in [`ROW_COUNTS`], in this process's thread count.
pub fn rows_table(gguf: &Path, mode: WeightMode, new: usize) -> anyhow::Result<()> {
    let llm = Llama::from_gguf(gguf, mode, &Device::Cpu)?;
    let tok = Tokenizer::from_gguf(gguf)?;
    let ids = prompt_ids(&tok, 160)?;
    println!("\nBatched decode ({mode:?} weights, rows at prompt lengths 40..160, {new} steps)");
    println!("{:>6} {:>16} {:>14}", "rows", "tokens/s (all)", "vs 1 row");
    let mut one = None;
    for rows in ROW_COUNTS {
        let mut caches = (0..rows)
            .map(|r| -> anyhow::Result<avlm_llm::KvCache> {
                let len = 40 + (r * 120) / rows.max(2);
                let mut c = llm.new_cache(len + new + 1)?;
                llm.forward(&ids[..len], &mut c, false)?;
                Ok(c)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let t = Instant::now();
        for step in 0..new {
            let tokens: Vec<u32> = (0..rows).map(|r| ids[(step + r) % ids.len()]).collect();
            let mut refs: Vec<&mut avlm_llm::KvCache> = caches.iter_mut().collect();
            llm.forward_batch(&tokens, &mut refs)?;
        }
        let tps = (rows * new) as f64 / t.elapsed().as_secs_f64();
        let base = *one.get_or_insert(tps);
        println!("{rows:>6} {tps:>16.1} {:>13.2}x", tps / base);
    }
    Ok(())
}
