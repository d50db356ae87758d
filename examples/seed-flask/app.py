"""Seed 000's predict microservice, as the seed writes it, for
`twinhub bench ml` to measure beside twinhub on the same machine.

EdgeDigitalTwin (pickle model + scaler, per-tree 5-95 % interval via
estimators_) behind Flask's /predict; gunicorn with 2 workers serves it:

    gunicorn -w 2 -b 127.0.0.1:PORT app:app   (run from this directory)

The model is the benchmark's: a 100-tree, depth-10 random forest over
three features, trained on first start into ./edge_model.
"""

import json
import pickle
import time
from pathlib import Path

import numpy as np
from flask import Flask, jsonify, request

MODEL_DIR = Path(__file__).parent / "edge_model"


def train():
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.preprocessing import StandardScaler
    rng = np.random.default_rng(42)
    X = rng.random((5000, 3))
    y = X[:, 0] * 10 + X[:, 1] * 5 + rng.normal(0, 1, 5000)
    scaler = StandardScaler().fit(X)
    model = RandomForestRegressor(n_estimators=100, max_depth=10, random_state=42).fit(scaler.transform(X), y)
    MODEL_DIR.mkdir(exist_ok=True)
    (MODEL_DIR / "model.pkl").write_bytes(pickle.dumps(model))
    (MODEL_DIR / "scaler.pkl").write_bytes(pickle.dumps(scaler))
    (MODEL_DIR / "config.json").write_text(json.dumps({
        "model_type": "RandomForestRegressor", "features": ["temp", "pressure", "flow"], "version": "1.0.0",
        "valid_ranges": {"temp": [0, 1], "pressure": [0, 1], "flow": [0, 1]}}))


class EdgeDigitalTwin:
    def __init__(self, model_dir):
        self.model = pickle.loads((model_dir / "model.pkl").read_bytes())
        self.scaler = pickle.loads((model_dir / "scaler.pkl").read_bytes())
        self.config = json.loads((model_dir / "config.json").read_text())

    def predict(self, sensor_data):
        start_time = time.time()
        X = np.array([[sensor_data[f] for f in self.config["features"]]])
        X_scaled = self.scaler.transform(X)
        prediction = self.model.predict(X_scaled)[0]
        predictions = [est.predict(X_scaled)[0] for est in self.model.estimators_]
        interval = (np.percentile(predictions, 5), np.percentile(predictions, 95))
        return {"prediction": float(prediction), "confidence_interval": [float(interval[0]), float(interval[1])],
                "inference_time_ms": (time.time() - start_time) * 1000, "timestamp": time.time()}

    def validate_input(self, sensor_data):
        missing = [f for f in self.config["features"] if f not in sensor_data]
        if missing:
            return False, f"Missing features: {missing}"
        for feature, value in sensor_data.items():
            if feature in self.config.get("valid_ranges", {}):
                lo, hi = self.config["valid_ranges"][feature]
                if not (lo <= value <= hi):
                    return False, f"{feature}={value} out of range [{lo}, {hi}]"
        return True, "OK"


if not (MODEL_DIR / "model.pkl").exists():
    train()
twin = EdgeDigitalTwin(MODEL_DIR)
app = Flask("digital-twin")
count = 0


@app.route("/predict", methods=["POST"])
def predict():
    global count
    data = request.get_json()
    ok, message = twin.validate_input(data)
    if not ok:
        return jsonify({"error": message}), 400
    result = twin.predict(data)
    count += 1
    return jsonify({"success": True, "result": result, "request_id": count})
