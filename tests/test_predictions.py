"""--save-predictions: any library can recompute fedrec's metrics from the file."""

import csv
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import accuracy_score

import fedrec


@pytest.mark.e2e
def test_fairlearn_recomputes_global_and_local_metrics(tmp_path, small_config):
    fl = pytest.importorskip("fairlearn.metrics")
    out = tmp_path / "run"
    s = fedrec.run(
        {
            **small_config,
            "output.save-predictions": True,
            "partition.scheme": "dirichlet-sensitive",
        },
        backend="local",
        out=out,
    )
    with open(out / "predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    c = np.array([int(r["client"]) for r in rows])
    y = np.array([int(r["label"]) for r in rows])
    a = np.array([int(r["group"]) for r in rows])
    p = np.array([int(r["prediction"]) for r in rows])
    g = s["final"]["global"]
    assert len(rows) == g["n"]
    assert abs(accuracy_score(y, p) - g["accuracy"]) < 1e-12
    assert abs(fl.demographic_parity_difference(y, p, sensitive_features=a) - g["dp_gap"]) < 1e-12
    assert abs(fl.equalized_odds_difference(y, p, sensitive_features=a) - g["eo_gap"]) < 1e-12
    local = []
    for k in sorted(set(c)):
        m = c == k
        d = fl.demographic_parity_difference(y[m], p[m], sensitive_features=a[m])
        assert abs(d - s["final_by_client"][str(k)]["dp_gap"]) < 1e-12
        local.append(d)
    assert abs(max(local) - s["final"]["local"]["dp_gap_local_max"]) < 1e-12


@pytest.mark.e2e
def test_cli_flag(tmp_path):
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedrec.cli",
            "run",
            "--backend",
            "local",
            "--quiet",
            "--out",
            "o",
            "--save-predictions",
            "-c",
            "num-server-rounds=1",
            "-c",
            "partition.num-clients=2",
            "-c",
            "output.plots=false",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "o" / "predictions.csv").read_text().startswith("client,row,label")
