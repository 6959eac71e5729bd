"""`gateway drift report`: an HTML page with embedded charts, from a JSON Lines file of reports."""
from __future__ import annotations

import base64
import re
import subprocess
import sys

import numpy as np
import orjson

from gateway.models.demo import sample_wines
from tests.conftest import ROOT
from tests.test_drift_wine import run, wine_events


def test_the_page_shows_the_drifted_window_its_histograms_and_scores_over_time(demo_repository, tmp_path):
    rows = np.concatenate([sample_wines("train", 400, seed=3), sample_wines("drift", 200, seed=4)])
    _, out = run(demo_repository, wine_events(demo_repository, "1", rows))
    reports = tmp_path / "reports.jsonl"
    reports.write_bytes(b"\n".join(orjson.dumps(r) for r in out) + b"\n")  # alerts too: passed over
    page = tmp_path / "drift.html"
    result = subprocess.run([sys.executable, "-m", "gateway", "drift", "report", "--reports", str(reports),
                             "--model", "wine", "--version", "1", "--out", str(page)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    text = page.read_text()
    drifted = [r for r in out if r["type"] == "drift_report" and r["drift"]]
    assert f"Window {drifted[-1]['window_id']}: DRIFT" in text
    assert "Top features: alcohol" in text or "alcohol (" in text  # the classifier's answer
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    # A histogram per drifted column (at most 6), then effect over time for features and predictions.
    assert len(images) == min(6, len(drifted[-1]["drifted_features"] + drifted[-1]["drifted_predictions"])) + 2
    assert all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    missing = subprocess.run([sys.executable, "-m", "gateway", "drift", "report", "--reports", str(reports),
                              "--model", "wine", "--version", "9"], cwd=ROOT, capture_output=True, text=True)
    assert missing.returncode == 1 and "no drift reports for wine/9" in missing.stderr
