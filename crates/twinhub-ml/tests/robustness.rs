//! Uploads are untrusted: whatever bytes arrive, loading and running a
//! model answers an error or a result — never a panic, a hang or a huge
//! allocation. Mutations of real exported models reach deep into the
//! loader and the operators (a fuzz target, `onnx_load`, goes further).

use proptest::prelude::*;
use twinhub_ml::{Manifest, Model, Predictor};

fn fixture(name: &str) -> Vec<u8> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    std::fs::read(dir.join(name)).unwrap()
}

/// Loads and, when that works, predicts a few rows (including NaN).
fn exercise(bytes: &[u8]) {
    let Ok(model) = Model::load(bytes) else {
        return;
    };
    let rows = [vec![350.0f32, 5.5, 100.0], vec![f32::NAN, 0.0, -1e30]];
    let _ = model.run(2, rows.concat(), true);
    let manifest =
        Manifest::parse(&fixture("reactor_yield.manifest.json")).expect("fixture manifest");
    if let Ok(p) = Predictor::new(model, manifest) {
        let _ = p.predict(&rows);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn mutated_models_never_panic(
        which in 0usize..3,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let name = ["reactor_yield.onnx", "isolation.onnx", "classifier.onnx"][which];
        let mut bytes = fixture(name);
        for (at, v) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= v;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        exercise(&bytes);
    }
}

use prost::Message;
use twinhub_ml::proto::{AttributeProto, ModelProto, NodeProto, TensorProto, ValueInfoProto};

fn yield_proto() -> ModelProto {
    ModelProto::decode(&fixture("reactor_yield.onnx")[..]).unwrap()
}

/// A small model (boosted trees, 22 KB) for tests that load hundreds.
fn small_proto() -> ModelProto {
    ModelProto::decode(&fixture("gbr.onnx")[..]).unwrap()
}

fn floats(name: &str, dims: &[i64], n: usize) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: 1,
        raw_data: vec![0u8; n * 4],
        ..Default::default()
    }
}

/// Loading or running answers an error (the reason), never a panic or an
/// allocation the size of the claim.
fn refused(m: ModelProto, why: &str) {
    let bytes = m.encode_to_vec();
    let err = match Model::load(&bytes) {
        Err(e) => e,
        Ok(model) => model
            .run(1, vec![350.0, 5.5, 100.0], true)
            .err()
            .expect("refused at run time"),
    };
    assert!(err.to_string().contains(why), "{err}");
}

#[test]
fn shapes_that_overflow_or_explode_are_refused() {
    // A tensor claiming 2^66 values with none present.
    let mut m = yield_proto();
    let g = m.graph.as_mut().unwrap();
    g.initializer.push(floats("huge", &[1 << 33, 1 << 33], 0));
    refused(m, "huge");

    // Two modest constants broadcasting to 10^10 values.
    let mut m = yield_proto();
    let g = m.graph.as_mut().unwrap();
    g.initializer.push(floats("col", &[100_000, 1], 100_000));
    g.initializer.push(floats("row", &[1, 100_000], 100_000));
    g.node.push(NodeProto {
        op_type: "Add".into(),
        input: vec!["col".into(), "row".into()],
        output: vec!["big".into()],
        ..Default::default()
    });
    g.output.push(ValueInfoProto {
        name: "big".into(),
        ..Default::default()
    });
    refused(m, "too large");

    // A tree ensemble claiming 2^40 targets.
    let mut m = yield_proto();
    let g = m.graph.as_mut().unwrap();
    let trees = g
        .node
        .iter_mut()
        .find(|n| n.op_type == "TreeEnsembleRegressor")
        .unwrap();
    trees.attribute.retain(|a| a.name != "n_targets");
    trees.attribute.push(AttributeProto {
        name: "n_targets".into(),
        r#type: 2,
        i: 1 << 40,
        ..Default::default()
    });
    refused(m, "n_targets");
}

/// Every operator we run, wired with too few inputs (or fed odd ones),
/// answers an error.
#[test]
fn malformed_nodes_are_refused() {
    let ops = [
        ("", "Identity"),
        ("", "Cast"),
        ("", "Reshape"),
        ("", "Flatten"),
        ("", "Gather"),
        ("", "Concat"),
        ("", "Add"),
        ("", "Sub"),
        ("", "Mul"),
        ("", "Div"),
        ("", "Pow"),
        ("", "Max"),
        ("", "Min"),
        ("", "Sum"),
        ("", "Equal"),
        ("", "Greater"),
        ("", "Less"),
        ("", "GreaterOrEqual"),
        ("", "LessOrEqual"),
        ("", "Neg"),
        ("", "Abs"),
        ("", "Log"),
        ("", "Exp"),
        ("", "Sqrt"),
        ("", "Sigmoid"),
        ("", "Not"),
        ("", "Where"),
        ("", "ArgMax"),
        ("", "Softmax"),
        ("ai.onnx.ml", "Scaler"),
        ("ai.onnx.ml", "Normalizer"),
        ("ai.onnx.ml", "Imputer"),
        ("ai.onnx.ml", "LabelEncoder"),
        ("ai.onnx.ml", "LinearRegressor"),
        ("ai.onnx.ml", "ArrayFeatureExtractor"),
        ("ai.onnx.ml", "TreeEnsembleRegressor"),
        ("ai.onnx.ml", "TreeEnsembleClassifier"),
    ];
    let input = small_proto().graph.unwrap().input[0].name.clone();
    for (domain, op) in ops {
        for n_inputs in 0..4 {
            let mut m = small_proto();
            let g = m.graph.as_mut().unwrap();
            g.initializer.push(floats("k", &[1, 3], 3));
            let inputs = [input.clone(), "k".into(), input.clone()];
            g.node.push(NodeProto {
                op_type: op.into(),
                domain: domain.into(),
                input: inputs[..n_inputs.min(3)].to_vec(),
                output: vec!["odd".into()],
                ..Default::default()
            });
            g.output.push(ValueInfoProto {
                name: "odd".into(),
                ..Default::default()
            });
            // Ok or Err are both fine; a panic fails the test.
            exercise(&m.encode_to_vec());
        }
    }
}
