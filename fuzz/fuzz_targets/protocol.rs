//! Sequences of client messages (length-delimited protobuf) through config
//! validation.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = avlm_fuzz::entry::protocol(data);
});
