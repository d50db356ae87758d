//! The DTDL parser and model-set validation on arbitrary bytes: never
//! panics; whatever parses also resolves or is refused cleanly.
#![no_main]
use libfuzzer_sys::fuzz_target;
use twinhub_model::dtdl::{parse_models, ModelSet};

fuzz_target!(|data: &[u8]| {
    if let Ok(ifaces) = parse_models(data) {
        let _ = ModelSet::default().with(ifaces);
    }
});
