//! The InfluxDB line-protocol decoder on arbitrary bytes: never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = twinhub_codec::decode_line_protocol(
        data,
        twinhub_codec::Precision::Ns,
        "twin",
        &twinhub_codec::Limits::default(),
    );
});
