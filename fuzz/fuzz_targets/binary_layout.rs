//! Binary layouts: any declaration is checked or refused, and any frame
//! decodes or is refused, never read out of bounds.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (decl, frame) = data.split_at(data.len() / 2);
    if let Ok(l) = twinhub_codec::layout::Layout::parse(decl) {
        let _ = l.decode(frame);
    }
    let fixed = br#"{"fields": [{"name": "a", "type": "i32", "offset": 0}, {"name": "b", "type": "bool", "offset": 4, "bit": 7}, {"name": "c", "type": "f64", "offset": 5, "endian": "little"}]}"#;
    let l = twinhub_codec::layout::Layout::parse(fixed).expect("a valid layout");
    let _ = l.decode(data);
});
