//! Sequences of client messages as one call to a live segmentation server.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = avlm_fuzz::session::session(data);
});
