//! Our outputs against onnxruntime's and scikit-learn's, recorded by
//! examples/reactor-yield/train.py into tests/fixtures.

use serde_json::Value;
use twinhub_ml::{percentile, Model, Tensor};

fn fixture(name: &str) -> (Model, Value) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let model = Model::load(&std::fs::read(dir.join(format!("{name}.onnx"))).unwrap()).unwrap();
    let r: Value =
        serde_json::from_slice(&std::fs::read(dir.join(format!("{name}.reference.json"))).unwrap())
            .unwrap();
    (model, r)
}

fn inputs(r: &Value) -> (usize, Vec<f32>) {
    let rows = r["inputs"].as_array().unwrap();
    let flat = rows
        .iter()
        .flat_map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
        })
        .collect();
    (rows.len(), flat)
}

fn floats(v: &Value) -> Vec<f64> {
    fn walk(v: &Value, out: &mut Vec<f64>) {
        match v {
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            Value::Number(n) => out.push(n.as_f64().unwrap()),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(v, &mut out);
    out
}

fn values(t: &Tensor) -> Vec<f64> {
    match &t.data {
        twinhub_ml::tensor::Data::F32(v) => v.iter().map(|x| *x as f64).collect(),
        twinhub_ml::tensor::Data::I64(v) => v.iter().map(|x| *x as f64).collect(),
        twinhub_ml::tensor::Data::Bool(v) => v.iter().map(|x| *x as u8 as f64).collect(),
    }
}

fn assert_close(ours: &[f64], theirs: &[f64], abs: f64, rel: f64, what: &str) {
    assert_eq!(ours.len(), theirs.len(), "{what}: lengths");
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        let tol = abs.max(rel * b.abs());
        assert!(
            (a - b).abs() <= tol,
            "{what}[{i}]: ours {a} vs {b} (tolerance {tol})"
        );
    }
}

#[test]
fn random_forest_pipeline_matches_onnxruntime_and_sklearn() {
    let (m, r) = fixture("reactor_yield");
    let (rows, x) = inputs(&r);
    let run = m.run(rows, x, true).unwrap();
    let ours = values(&run.outputs[0].1);
    // onnxruntime accumulates 30 float32 leaf weights in float32: it lands
    // up to 1.3e-5 (2 float32 steps at ~80) from scikit-learn's float64
    // value; we sum in f64 and round once, so we are within 0.5 step of
    // scikit-learn and within 1e-5 or 2 steps of onnxruntime.
    assert_close(
        &ours,
        &floats(&r["onnxruntime"][0]),
        1e-5,
        4.0 * f32::EPSILON as f64,
        "vs onnxruntime",
    );
    assert_close(&ours, &floats(&r["sklearn"]), 0.0, 1e-6, "vs scikit-learn");
    // The seed's interval: percentiles of the trees' own predictions.
    assert_eq!(m.n_trees(), Some(30));
    let per_tree = run.per_tree.unwrap();
    let (p5, p95): (Vec<f64>, Vec<f64>) = per_tree
        .into_iter()
        .map(|mut t| (percentile(&mut t, 5.0), percentile(&mut t, 95.0)))
        .unzip();
    assert_close(&p5, &floats(&r["tree_p5"]), 0.0, 1e-5, "5 % per-tree");
    assert_close(&p95, &floats(&r["tree_p95"]), 0.0, 1e-5, "95 % per-tree");
}

#[test]
fn gradient_boosting_matches() {
    let (m, r) = fixture("gbr");
    let (rows, x) = inputs(&r);
    let ours = values(&m.run(rows, x, false).unwrap().outputs[0].1);
    assert_close(
        &ours,
        &floats(&r["onnxruntime"][0]),
        1e-5,
        1e-6,
        "vs onnxruntime",
    );
    assert_close(&ours, &floats(&r["sklearn"]), 0.0, 1e-5, "vs scikit-learn");
}

/// A model answering a label and a second output (probabilities, scores):
/// labels equal scikit-learn's; the second output matches onnxruntime's
/// (abs 1e-5) and scikit-learn's `sklearn_key` (abs 1e-5, rel `sk_rel`).
fn labels_and_second_output(name: &str, sklearn_key: &str, sk_rel: f64) {
    let (m, r) = fixture(name);
    let (rows, x) = inputs(&r);
    let run = m.run(rows, x, false).unwrap();
    assert_eq!(values(&run.outputs[0].1), floats(&r["sklearn_label"]));
    let second = values(&run.outputs[1].1);
    assert_close(
        &second,
        &floats(&r["onnxruntime"][1]),
        1e-5,
        0.0,
        "vs onnxruntime",
    );
    assert_close(
        &second,
        &floats(&r[sklearn_key]),
        1e-5,
        sk_rel,
        "vs scikit-learn",
    );
}

#[test]
fn classifier_matches_labels_and_probabilities() {
    labels_and_second_output("classifier", "sklearn_proba", 0.0);
}

#[test]
fn isolation_forest_runs_its_standard_operator_graph() {
    labels_and_second_output("isolation", "sklearn_score", 1e-5);
}

#[test]
fn bad_models_are_refused_with_a_reason() {
    assert!(matches!(
        Model::load(b"not onnx at all"),
        Err(twinhub_ml::OnnxError::Invalid(_))
    ));
    let (m, _) = fixture("reactor_yield");
    let e = m.run(1, vec![1.0, 2.0], false).err().unwrap();
    assert!(e.to_string().contains("3 features"), "{e}");
}
