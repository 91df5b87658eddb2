"""The main job: start an embedded cluster, deploy a scikit-learn digits classifier, query it.

Run with scripts/demo. Prints each answer with its true label and latency, then stops the cluster.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time

import numpy as np
import requests
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from clipper_admin import ClipperConnection, LocalContainerManager
from clipper_admin.deployers import python as python_deployer


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data / 16.0, digits.target, test_size=0.2, random_state=0
    )
    classifier = LogisticRegression(max_iter=2000).fit(x_train, y_train)

    def predict(inputs: np.ndarray) -> list[int]:
        # One call per batch: the frontend hands the model a 2-D array of queries.
        return classifier.predict(np.asarray(inputs)).tolist()

    conn = ClipperConnection(
        LocalContainerManager(cluster_name="demo", cluster_dir=tempfile.mkdtemp(prefix="clipper-"))
    )
    conn.start_clipper()
    try:
        python_deployer.create_endpoint(
            conn, "digits", "doubles", predict, default_output="-1", slo_micros=100000
        )
        url = f"http://{conn.get_query_addr()}/digits/predict"
        session = requests.Session()
        correct = 0
        print(f"\nPOST {url}")
        for features, label in zip(x_test[:20], y_test[:20], strict=True):
            started = time.monotonic()
            answer = session.post(url, data=json.dumps({"input": features.tolist()})).json()
            latency_ms = (time.monotonic() - started) * 1000
            correct += answer["output"] == label
            print(
                f"  true {label}  predicted {answer['output']}  default {answer['default']}  "
                f"{latency_ms:.1f} ms"
            )
        batch = session.post(url, data=json.dumps({"input_batch": x_test[:200].tolist()})).json()
        outputs = [p["output"] for p in batch["batch_predictions"]]
        accuracy = float(np.mean(np.asarray(outputs) == y_test[:200]))
        print(f"  {correct}/20 single queries correct; batch of 200: accuracy {accuracy:.3f}")
    finally:
        conn.stop_all()


if __name__ == "__main__":
    main()
