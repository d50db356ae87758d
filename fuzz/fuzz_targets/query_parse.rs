//! The query parser on arbitrary text: never panics; errors carry a
//! position inside the text.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Err(e) = twinhub_model::query::parse(text) {
        assert!(e.pos <= text.len());
    }
});
