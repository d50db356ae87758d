//! CBOR telemetry on arbitrary bytes: never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = twinhub_codec::decode_cbor_telemetry(data, &twinhub_codec::Limits::default());
});
