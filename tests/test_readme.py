"""The README's plugin example runs as written (by dotted path, on the local runtime)."""

import json
import re
from pathlib import Path

import pytest

import fedrec

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.e2e
def test_readme_plugin_example_runs(tmp_path, monkeypatch, small_config):
    text = README.read_text()
    code = re.search(r"```python\n# myfair/__init__.py\n(.*?)```", text, re.S).group(1)
    pkg = tmp_path / "site" / "myfair"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    out = tmp_path / "run"
    fedrec.run(
        {**small_config, "strategy.name": "myfair:MyFair", "strategy.params.boost": 2},
        backend="local",
        out=out,
    )
    rows = [json.loads(l) for l in (out / "rounds.jsonl").read_text().splitlines()]
    pos = [r["positives"] for r in rows if r["scope"] == "global"]
    assert len(pos) == 2 and pos[0] == pos[1] > 1000


def test_readme_quickstart_has_two_commands():
    text = README.read_text()
    quick = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", quick, re.S)
    assert len(blocks) == 2 and all(b.strip().count("\n") == 0 for b in blocks)
    ci = (README.parent / ".ci" / "run").read_text()
    assert blocks[1].strip() in ci
