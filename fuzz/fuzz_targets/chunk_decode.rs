//! Chunk and batch-log decoding on arbitrary bytes (a corrupted file must
//! fail cleanly): never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = twinhub_server::store::chunk::decode(data);
    let _ = twinhub_server::store::batch::decode(data);
});
