//! Headerless PCM framing and resampling at any accepted rate and layout.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = avlm_fuzz::entry::raw_pcm(data);
});
