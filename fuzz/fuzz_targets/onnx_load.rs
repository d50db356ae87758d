//! Model uploads are untrusted bytes: loading and running one answers an
//! error or a result, never a panic or an allocation the size of a claim.
//! Seed the corpus with crates/twinhub-ml/tests/fixtures/*.onnx.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(model) = twinhub_ml::Model::load(data) {
        let _ = model.run(2, vec![350.0, 5.5, 100.0, f32::NAN, 0.0, -1e30], true);
    }
});
