//! Manifests, validation of rows, intervals and drift.

use serde_json::{json, Value};
use twinhub_ml::{Drift, Kind, Manifest, Model, Predictor};

fn dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn manifest() -> Manifest {
    Manifest::parse(&std::fs::read(dir().join("reactor_yield.manifest.json")).unwrap()).unwrap()
}

fn model(name: &str) -> Model {
    Model::load(&std::fs::read(dir().join(format!("{name}.onnx"))).unwrap()).unwrap()
}

fn row(v: Value) -> serde_json::Map<String, Value> {
    v.as_object().unwrap().clone()
}

#[test]
fn rows_are_validated_by_name_and_range() {
    let p = Predictor::new(model("reactor_yield"), manifest()).unwrap();
    assert_eq!(p.kind, Kind::Regressor);
    let (x, w) = p
        .row(
            &row(json!({"temperature": 350, "pressure": 5.5, "flow_rate": 100})),
            "",
        )
        .unwrap();
    assert_eq!((x, w.len()), (vec![350.0, 5.5, 100.0], 0));
    let e = p
        .row(&row(json!({"temperature": 350, "pressure": 5.5})), "")
        .unwrap_err();
    assert_eq!((e.status, e.field.as_str()), (400, "flow_rate"));
    let e = p
        .row(
            &row(json!({"temperature": 500, "pressure": 5.5, "flow_rate": 100})),
            "rows[3].",
        )
        .unwrap_err();
    assert_eq!((e.status, e.field.as_str()), (422, "rows[3].temperature"));
    assert!(e.rule.contains("[330, 390]"), "{}", e.rule);
    let e = p
        .row(
            &row(json!({"temperature": 350, "pressure": 5.5, "flow_rate": 100, "x": 1})),
            "",
        )
        .unwrap_err();
    assert_eq!((e.status, e.field.as_str()), (400, "x"));
    let e = p
        .row(
            &row(json!({"temperature": "hot", "pressure": 5.5, "flow_rate": 100})),
            "",
        )
        .unwrap_err();
    assert_eq!(e.status, 400);

    let mut m = manifest();
    m.range_policy = twinhub_ml::manifest::RangePolicy::Warn;
    let p = Predictor::new(model("reactor_yield"), m).unwrap();
    let (_, w) = p
        .row(
            &row(json!({"temperature": 500, "pressure": 5.5, "flow_rate": 100})),
            "",
        )
        .unwrap();
    assert!(w[0].contains("temperature"), "{w:?}");
}

#[test]
fn tree_and_conformal_intervals() {
    let r: Value =
        serde_json::from_slice(&std::fs::read(dir().join("reactor_yield.reference.json")).unwrap())
            .unwrap();
    let p = Predictor::new(model("reactor_yield"), manifest()).unwrap();
    let rows: Vec<Vec<f32>> = r["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            x.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
    let preds = p.predict(&rows).unwrap();
    for (i, pr) in preds.iter().enumerate() {
        let iv = pr.interval.unwrap();
        let (lo, hi) = (
            r["tree_p5"][i].as_f64().unwrap(),
            r["tree_p95"][i].as_f64().unwrap(),
        );
        assert!(
            (iv.lower - lo).abs() <= 1e-5 * lo.abs() && (iv.upper - hi).abs() <= 1e-5 * hi.abs(),
            "row {i}"
        );
        assert_eq!(iv.level, 0.9);
    }
    let mut m = manifest();
    m.interval = Some(twinhub_ml::manifest::IntervalSpec {
        method: twinhub_ml::manifest::IntervalMethod::Conformal,
        level: 0.9,
    });
    let q = m.conformal.as_ref().unwrap().quantile;
    let p = Predictor::new(model("reactor_yield"), m).unwrap();
    let pr = &p.predict(&rows[..1]).unwrap()[0];
    let y = pr.prediction.as_f64().unwrap();
    let iv = pr.interval.unwrap();
    assert!((iv.upper - y - q).abs() < 1e-9 && (y - iv.lower - q).abs() < 1e-9);
}

#[test]
fn kinds_are_detected_and_mismatches_refused() {
    let mut m = manifest();
    m.interval = None;
    m.training = None;
    let clf = Predictor::new(model("classifier"), m.clone()).unwrap();
    assert_eq!(clf.kind, Kind::Classifier);
    let pr = &clf.predict(&[vec![350.0, 5.5, 100.0]]).unwrap()[0];
    assert!(
        pr.prediction.is_i64()
            && pr.probabilities.as_ref().unwrap().len() == 3
            && pr.interval.is_none()
    );
    let iso = Predictor::new(model("isolation"), m.clone()).unwrap();
    assert_eq!(iso.kind, Kind::Outlier);
    assert!(iso.predict(&[vec![350.0, 5.5, 100.0]]).unwrap()[0]
        .score
        .is_some());
    // A per-tree interval needs a random forest.
    let e = Predictor::new(model("gbr"), manifest()).err().unwrap();
    assert_eq!(
        (e.status, e.field.as_str()),
        (422, "manifest.interval.method")
    );
    // Feature count must match.
    let mut two = m.clone();
    two.features.pop();
    let e = Predictor::new(model("reactor_yield"), two).err().unwrap();
    assert_eq!(e.field, "manifest.features");
}

#[test]
fn manifests_are_checked() {
    for (bad, f) in [
        (
            json!({"name": "x", "version": "1", "features": [], "output": {"name": "y"}}),
            "manifest.features",
        ),
        (
            json!({"name": "x y", "version": "1", "features": [{"name": "a"}], "output": {"name": "y"}}),
            "manifest.name",
        ),
        (
            json!({"name": "x", "version": "1", "features": [{"name": "a", "min": 2, "max": 1}], "output": {"name": "y"}}),
            "manifest.features[0]",
        ),
        (
            json!({"name": "x", "version": "1", "features": [{"name": "a"}], "output": {"name": "y"}, "interval": {"method": "conformal"}}),
            "manifest.conformal",
        ),
        (
            json!({"name": "x", "version": "1", "features": [{"name": "a"}], "output": {"name": "y"}, "extra": 1}),
            "manifest",
        ),
    ] {
        let e = Manifest::parse(bad.to_string().as_bytes()).unwrap_err();
        assert_eq!(e.field, f, "{bad}: {e}");
    }
}

#[test]
fn drift_is_small_in_distribution_and_large_when_shifted() {
    let m = manifest();
    let mut same = Drift::default();
    let mut shifted = Drift::default();
    // A deterministic spread over the training ranges, and one 20 K hotter.
    for i in 0..2000 {
        let u = (i as f32 * 0.618_034) % 1.0;
        let v = (i as f32 * 0.414_214) % 1.0;
        let w = (i as f32 * 0.732_051) % 1.0;
        same.observe(&m, &[340.0 + 40.0 * u, 4.0 + 4.0 * v, 80.0 + 40.0 * w]);
        shifted.observe(&m, &[360.0 + 40.0 * u, 4.0 + 4.0 * v, 80.0 + 40.0 * w]);
    }
    let psi = |d: &Drift, f: &str| d.psi(&m).into_iter().find(|x| x.0 == f).unwrap().1;
    assert!(
        psi(&same, "temperature") < 0.05,
        "{}",
        psi(&same, "temperature")
    );
    assert!(
        psi(&shifted, "temperature") > 0.25,
        "{}",
        psi(&shifted, "temperature")
    );
    assert!(psi(&shifted, "pressure") < 0.05);
}

/// A large batch (split across threads) answers exactly what each row
/// answers alone, in order.
#[test]
fn large_batches_match_single_rows_in_order() {
    let p = Predictor::new(model("reactor_yield"), manifest()).unwrap();
    let rows: Vec<Vec<f32>> = (0..1500)
        .map(|i| {
            let f = i as f32 / 1500.0;
            vec![
                340.0 + 40.0 * f,
                4.0 + 4.0 * (1.0 - f),
                80.0 + 40.0 * ((i * 7) % 1500) as f32 / 1500.0,
            ]
        })
        .collect();
    let batch = p.predict(&rows).unwrap();
    assert_eq!(batch.len(), rows.len());
    for (i, row) in rows.iter().enumerate() {
        let one = p.predict(std::slice::from_ref(row)).unwrap();
        assert_eq!(
            serde_json::to_value(&batch[i]).unwrap(),
            serde_json::to_value(&one[0]).unwrap(),
            "row {i}"
        );
    }
}
