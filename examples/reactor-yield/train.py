"""Train the reactor-yield model of seed 000 and export it for twinhub.

Produces, in the output directory (default: ../../crates/twinhub-ml/tests/fixtures):

  reactor_yield.onnx         StandardScaler folded into the ONNX pipeline + RandomForestRegressor
  reactor_yield.manifest.json  features with units and valid ranges, the output, the interval
                             method, split-conformal calibration and the training distribution
                             (for drift: population stability index)
  reactor_yield.reference.json inputs with scikit-learn's and onnxruntime's outputs and the
                             per-tree 5-95 % interval computed exactly as the seed does
  gbr.onnx / classifier.onnx / isolation.onnx (+ .reference.json): other model kinds the
                             evaluator is checked against

Usage:  pip install scikit-learn skl2onnx onnxruntime && python train.py [out_dir]
Upload: twinhub model upload reactor_yield.onnx reactor_yield.manifest.json
"""

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from skl2onnx import to_onnx
from sklearn.ensemble import (GradientBoostingRegressor, IsolationForest,
                              RandomForestClassifier, RandomForestRegressor)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

OUT = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "../../crates/twinhub-ml/tests/fixtures")
OUT.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(42)

FEATURES = [
    {"name": "temperature", "unit": "K", "min": 330.0, "max": 390.0},
    {"name": "pressure", "unit": "bar", "min": 3.0, "max": 9.0},
    {"name": "flow_rate", "unit": "L/min", "min": 70.0, "max": 130.0},
]


def reactor_data(n):
    """The demo's reactors (crates/twinhub/src/sim.rs): yield peaks at
    360 K and 6 bar and rises slightly with flow."""
    t = rng.uniform(340, 380, n)
    p = rng.uniform(4, 8, n)
    f = rng.uniform(80, 120, n)
    y = (85 - 0.05 * (t - 360) ** 2 - 2.0 * (p - 6) ** 2 + 0.02 * (f - 100)
         + rng.normal(0, 0.3, n))
    return np.column_stack([t, p, f]).astype(np.float32), y


def onnx_outputs(path, X):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return sess.run(None, {name: X})


def save(name, model, X, extra=None):
    onx = to_onnx(model, X[:1], target_opset={"": 15, "ai.onnx.ml": 3},
                  options={id(model): {"zipmap": False}} if hasattr(model, "predict_proba") else None)
    path = OUT / f"{name}.onnx"
    path.write_bytes(onx.SerializeToString())
    ref = {"inputs": X.tolist(), "onnxruntime": [o.tolist() for o in onnx_outputs(path, X)]}
    ref.update(extra or {})
    (OUT / f"{name}.reference.json").write_text(json.dumps(ref))
    print(f"{path}: {path.stat().st_size} bytes")


# --- the reactor-yield model: scaler + random forest, with intervals -------
X, y = reactor_data(4100)
X_train, y_train = X[:2000], y[:2000]
X_cal, y_cal = X[2000:4000], y[2000:4000]
X_test = X[4000:4100]
pipe = make_pipeline(StandardScaler(), RandomForestRegressor(n_estimators=30, max_depth=8, random_state=42))
pipe.fit(X_train, y_train)
scaler, forest = pipe.steps[0][1], pipe.steps[1][1]

# Split-conformal: the 90 % quantile of absolute calibration residuals,
# with the finite-sample correction, gives intervals with >= 90 % coverage.
residuals = np.abs(y_cal - pipe.predict(X_cal))
level = 0.9
k = int(np.ceil((len(residuals) + 1) * level))
q = float(np.sort(residuals)[min(k, len(residuals)) - 1])

# The seed's per-tree interval, exactly: percentiles of the trees' outputs.
scaled = scaler.transform(X_test)
per_tree = np.array([est.predict(scaled) for est in forest.estimators_])
save("reactor_yield", pipe, X_test, {
    "sklearn": pipe.predict(X_test).tolist(),
    "tree_p5": np.percentile(per_tree, 5, axis=0).tolist(),
    "tree_p95": np.percentile(per_tree, 95, axis=0).tolist(),
})

# Training distribution per feature: decile edges and shares, for PSI.
distribution = {}
for i, f in enumerate(FEATURES):
    edges = np.quantile(X_train[:, i], np.linspace(0, 1, 11)).tolist()
    distribution[f["name"]] = {"edges": edges, "shares": [0.1] * 10}

manifest = {
    "name": "reactor-yield",
    "version": "1.0.0",
    "features": FEATURES,
    "output": {"name": "yield", "unit": "%"},
    "interval": {"method": "trees", "level": 0.9},
    "conformal": {"level": level, "quantile": q, "calibration_rows": len(residuals)},
    "training": {"rows": len(X_train), "distribution": distribution},
    "range_policy": "reject",
}
(OUT / "reactor_yield.manifest.json").write_text(json.dumps(manifest, indent=2))

# Coverage of the conformal interval on fresh data (printed for the README).
X_new, y_new = reactor_data(20000)
covered = np.mean(np.abs(y_new - pipe.predict(X_new)) <= q)
print(f"conformal {level:.0%} interval ±{q:.3f}: coverage on fresh data {covered:.3f}")

# --- other kinds the evaluator is checked against ----------------------
gbr = GradientBoostingRegressor(n_estimators=40, max_depth=3, random_state=1).fit(X_train, y_train)
save("gbr", gbr, X_test, {"sklearn": gbr.predict(X_test).tolist()})

labels = np.digitize(y_train, [70, 80])  # low / normal / high yield
clf = RandomForestClassifier(n_estimators=15, max_depth=6, random_state=2).fit(X_train, labels)
save("classifier", clf, X_test, {"sklearn_label": clf.predict(X_test).tolist(),
                                 "sklearn_proba": clf.predict_proba(X_test).tolist()})

iso = IsolationForest(n_estimators=20, random_state=3).fit(X_train)
save("isolation", iso, X_test, {"sklearn_label": iso.predict(X_test).tolist(),
                                "sklearn_score": iso.decision_function(X_test).tolist()})
