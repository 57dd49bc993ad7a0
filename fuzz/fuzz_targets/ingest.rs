//! Container bytes through the session's decoder: probe, demux, decode
//! (audio, video or both; with or without a format hint).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = avlm_fuzz::entry::ingest(data);
});
