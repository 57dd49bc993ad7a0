//! The WAV header reader, fed in reads of every size.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = avlm_fuzz::entry::wav_header(data);
});
