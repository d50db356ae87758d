//! Sparkplug B payloads (and their readings) on arbitrary bytes: never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use twinhub_codec::sparkplug;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = sparkplug::decode(data) {
        let _ = sparkplug::readings(&p, &sparkplug::Aliases::of_birth(&p));
    }
});
