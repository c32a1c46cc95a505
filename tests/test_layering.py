"""Layering: only a short, named allow-list of Flower-facing modules may import flwr.

Every .py file under fedrec/, strategies/ and clients/ is parsed (ast) and may not import
flwr anywhere -- module level or inside a function -- unless it is in FLOWER_FACING. The
pure layers (everything but FLOWER_FACING and the strategy classes, which subclass
Flower's Strategy through strategies/base.py) must not pull flwr in at import time either.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# source folder -> installed package (pyproject's package-dir mapping)
PACKAGES = {"fedrec": "fedrec", "strategies": "fedrec.strategies", "clients": "fedrec.clients"}

# The only modules that may import flwr (each must still do so: no stale entries).
FLOWER_FACING = {
    "strategies/base.py": "FedrecStrategy subclasses Flower's Message-API Strategy",
    "clients/app.py": "the ClientApp: client halves <-> Flower Messages",
    "strategies/defense.py": "Flower's robust aggregation rules (full-model uploads)",
    "fedrec/flower/server_app.py": "the ServerApp",
    "fedrec/runtime/local.py": "the in-process Grid (local runtime)",
    "fedrec/runtime/ray.py": "flwr.simulation.run_simulation (ray runtime)",
    "fedrec/runtime/deployment.py": "the long-lived ClientApp executor (Flower's Runtime API)",
}
# Packages whose modules import flwr transitively through an allowed module.
TRANSITIVE = ("fedrec.strategies",)


def _modules():
    """(path relative to the repo, installed dotted name) of every source file."""
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT)
            parts = list(rel.with_suffix("").parts[1:])
            if parts and parts[-1] == "__init__":
                parts.pop()
            yield rel.as_posix(), ".".join([package, *parts])


def _is_flwr(name):
    return name == "flwr" or name.startswith("flwr.")


def _flwr_imports(path):
    """Line numbers of every flwr import in the file, wherever it is."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            hit = any(_is_flwr(a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            hit = node.level == 0 and _is_flwr(node.module or "")
        elif isinstance(node, ast.Call):  # importlib.import_module("flwr...") / __import__
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            hit = (
                name in ("import_module", "__import__")
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
                and _is_flwr(node.args[0].value)
            )
        else:
            continue
        if hit:
            lines.append(node.lineno)
    return lines


def test_only_flower_facing_modules_import_flwr():
    bad = {
        rel: lines
        for rel, _ in _modules()
        if rel not in FLOWER_FACING and (lines := _flwr_imports(ROOT / rel))
    }
    assert not bad, (
        "flwr imported outside the Flower-facing allow-list (file: lines): "
        f"{bad}; move the Flower code into one of {sorted(FLOWER_FACING)}"
    )


def test_allow_list_is_minimal():
    for rel in FLOWER_FACING:
        assert (ROOT / rel).is_file(), f"{rel} is allow-listed but does not exist"
        assert _flwr_imports(ROOT / rel), f"{rel} is allow-listed but imports no flwr: drop it"


@pytest.mark.slow
def test_pure_modules_do_not_import_flwr():
    pure = [
        m
        for rel, m in _modules()
        if rel not in FLOWER_FACING and not any(m == p or m.startswith(p + ".") for p in TRANSITIVE)
    ]
    assert "fedrec.config" in pure and "fedrec.clients.base" in pure
    code = (
        "import importlib, sys\n"
        "flwr = lambda: any(m == 'flwr' or m.startswith('flwr.') for m in sys.modules)\n"
        f"for m in {pure!r}:\n"
        "    importlib.import_module(m)\n"
        "    if flwr():\n"
        "        print(m)\n"
        "        break\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip() == "", f"importing pure module {p.stdout.strip()} imports flwr"
