"""Pure layers of fedrec import no flwr (only fedrec.flower, fedrec.runtime,
fedrec.strategies and fedrec.clients.app may)."""

import subprocess
import sys

PURE = ["fedrec", "fedrec.config", "fedrec.data", "fedrec.models", "fedrec.metrics",
        "fedrec.training", "fedrec.tasks", "fedrec.seeding", "fedrec.plugins",
        "fedrec.protocol", "fedrec.callbacks", "fedrec.report", "fedrec.clients.base",
        "fedrec.clients.classification",
        "fedrec.algorithms.fedfact", "fedrec.algorithms.lp", "fedrec.algorithms.fair_baselines",
        "fedrec.algorithms.raid", "fedrec.algorithms.lego",
        "fedrec.clients.fedfact", "fedrec.clients.fair_baselines", "fedrec.attacks", "fedrec.recsys", "fedrec.models.recsys",
        "fedrec.metrics.ranking"]


def test_pure_modules_do_not_import_flwr():
    code = ("import sys\n" + "".join(f"import {m}\n" for m in PURE)
            + "bad = sorted(m for m in sys.modules if m == 'flwr' or m.startswith('flwr.'))\n"
            "print(','.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "", f"flwr imported by pure modules: {out}"
