"""``fedrec report``: the self-contained HTML page of one or several run folders.

One real 2-round run (local runtime, 3 clients, a few seconds) is made once for the module;
the other folders are written by hand (:func:`synthetic_run`): a ranking run with fault and
privacy keys, hostile config values, corrupt files.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from fedrec.cli import main as cli_main
from fedrec.config import all_keys
from fedrec.errors import ConfigError
from fedrec.report_html import (
    _labels,
    load_run,
    metric_family,
    metric_section,
    render_report,
    variant_label,
    write_report,
)

VOID = {"meta", "img", "br", "hr", "input", "link", "col", "area", "base", "wbr", "source"}


class Page(HTMLParser):
    """The parts of the page the tests look at; also checks that the tags nest."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.sections: list[dict] = []
        self.imgs: list[str] = []
        self.headings: dict[str, list[str]] = {"h1": [], "h2": [], "h3": [], "h4": []}
        self.tags: list[str] = []
        self.changed_rows: list[list[str]] = []
        self._heading: str | None = None
        self._row: list[str] | None = None
        self._changed = False
        self._cell: list[str] | None = None
        self.tables: list[list[list[str]]] = []
        self.feed(text)
        self.close()
        if self.stack:
            self.errors.append(f"unclosed: {self.stack}")

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if tag not in VOID:
            self.stack.append(tag)
        if tag == "section":
            self.sections.append({"id": a.get("id"), "class": a.get("class"), "tables": 0})
        elif tag == "img":
            self.imgs.append(a.get("src", ""))
        elif tag in self.headings:
            self._heading = ""
        elif tag == "table":
            self.tables.append([])
            if self.sections:
                self.sections[-1]["tables"] += 1
        elif tag == "tr":
            self._row, self._changed = [], "changed" in (a.get("class") or "")
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:]}")
        else:
            self.stack.pop()
        if tag in self.headings and self._heading is not None:
            self.headings[tag].append(self._heading.strip())
            self._heading = None
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[-1].append(self._row)
            if self._changed:
                self.changed_rows.append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._heading is not None:
            self._heading += data
        if self._cell is not None:
            self._cell.append(data)


def decode_png(uri: str) -> np.ndarray:
    import matplotlib.image as mpimg

    assert uri.startswith("data:image/png;base64,"), uri[:40]
    raw = base64.b64decode(uri.split(",", 1)[1], validate=True)
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    return mpimg.imread(io.BytesIO(raw), format="png")


def n_colours(img: np.ndarray) -> int:
    """Distinct RGB colours of an image read by matplotlib (floats in [0, 1])."""
    rgb = (img[..., :3] * 255).astype(np.uint32).reshape(-1, 3)
    return len(np.unique((rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]))


def synthetic_run(
    path: Path, rounds: int = 3, config: dict | None = None, scale: float = 1.0
) -> Path:
    """A hand-written run folder: ranking metrics, fault and privacy keys, 4 clients."""
    path.mkdir(parents=True)
    flat = {k: d["default"] for k, d in all_keys().items()}
    flat.update({"strategy.name": "fedmf", "dataset.name": "ml-100k", "output.dir": str(path)})
    flat.update(config or {})
    (path / "config.json").write_text(json.dumps(flat, indent=2, sort_keys=True))
    lines = []
    for r in range(1, rounds + 1):
        g = {
            "round": r,
            "scope": "global",
            "ndcg@10": scale * 0.1 * r,
            "ndcg@20": scale * 0.12 * r,
            "hr@10": scale * 0.2 * r,
            "gini@10": 0.5 - 0.05 * r,
            "user_ndcg@10_gap": 0.01 * r,
            "fault_rate": 0.25,
            "epsilon": 0.5 * r,
            "failures": 1,
            "num_sampled": 4,
            "train_train_loss": 1.0 / r,
            "wall_s": 0.1,
            "stage": "train",
            "maybe": None,
        }
        lines.append(g)
        for c in range(4):
            lines.append({"round": r, "scope": "client", "client": c, "ndcg@10": 0.1 * c})
        lines.append({"round": r, "scope": "group", "group": 0, "hr@10": 0.2, "n": 10})
    (path / "rounds.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    part = {
        "num_clients": 4,
        "sizes": [5, 6, 7, 8],
        "clients": [{"client": c, "num_train": 4 + c, "num_test": 1} for c in range(4)],
    }
    (path / "partition.json").write_text(json.dumps(part))
    (path / "summary.json").write_text(
        json.dumps({"strategy": "fedmf", "dataset": "ml-100k", "num_rounds": rounds})
    )
    return path


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    from fedrec.runner import run

    out = tmp_path_factory.mktemp("report") / "adult-run"
    run(
        None,
        backend="local",
        out=out,
        overrides=["num-server-rounds=2", "partition.num-clients=3", "output.plots=false"],
        quiet=True,
    )
    return out


def test_single_run_page(real_run):
    path = write_report([real_run])
    assert path == real_run / "report.html"
    text = path.read_text()
    page = Page(text)
    assert not page.errors, page.errors[:3]
    assert "<script" not in text and "http://" not in text and "https://" not in text
    runs = [s for s in page.sections if s["class"] == "run"]
    assert len(runs) == 1 and runs[0]["tables"] >= 6
    assert page.headings["h2"] == ["adult-run"]
    h3 = page.headings["h3"]
    for want in ("Final round (2)", "Global metrics per round", "Clients (final round)"):
        assert want in h3
    assert "Config" in h3 and "Partition" in h3
    for want in ("Accuracy and ranking", "Fairness gaps and exposure", "Training (train_*)"):
        assert want in page.headings["h4"]
    # every image is an inline PNG that decodes to a non-trivial picture
    assert len(page.imgs) >= 4
    for src in page.imgs:
        img = decode_png(src)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 200
        assert n_colours(img) > 10
    # the per-round table: one row per round; the per-client table: the 3 clients
    rounds_table = next(t for t in page.tables if t[0][:2] == ["round", "accuracy"])
    assert [row[0] for row in rounds_table[1:]] == ["1", "2"]
    g = [json.loads(x) for x in (real_run / "rounds.jsonl").read_text().splitlines()]
    acc = [r["accuracy"] for r in g if r["scope"] == "global"]
    assert rounds_table[1][1] == f"{acc[0]:.4f}" and rounds_table[2][1] == f"{acc[1]:.4f}"
    clients = next(t for t in page.tables if t[0][:2] == ["client", "accuracy"])
    assert [row[0] for row in clients[1:]] == ["0", "1", "2"]
    # non-default config keys highlighted (and only those)
    changed = {row[0] for row in page.changed_rows}
    assert {"num-server-rounds", "partition.num-clients", "output.plots"} <= changed
    assert "seed" not in changed and "train.lr" not in changed


def test_cli_prints_the_path(tmp_path, capsys):
    run = synthetic_run(tmp_path / "r", rounds=2)
    out = tmp_path / "sub" / "r.html"
    assert cli_main(["report", str(run), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert out.is_file() and out.read_text().startswith("<!DOCTYPE html>")


def test_ranking_faults_privacy_grouping(tmp_path):
    run = synthetic_run(tmp_path / "mf")
    page = Page(render_report([run]))
    assert not page.errors
    h4 = page.headings["h4"]
    for want in (
        "Accuracy and ranking",
        "Fairness gaps and exposure",
        "Faults and participation",
        "Privacy",
        "Training (train_*)",
        "System",
    ):
        assert want in h4
    assert "Other" not in h4
    # string keys are shown in the per-round table; a null value is a dash
    rounds_table = next(t for t in page.tables if t[0][:2] == ["round", "stage"])
    assert rounds_table[1][:2] == ["1", "train"]
    assert metric_section("accuracy") == metric_section("ndcg@10") == "performance"
    assert metric_section("dp_gap_local_max") == metric_section("gini@10") == "fairness"
    assert metric_section("train_train_loss") == "train"
    assert metric_section("fault_rate") == metric_section("failures") == "faults"
    assert metric_section("epsilon") == "privacy" and metric_section("wall_s") == "system"
    assert metric_family("dp_gap_local_max") == "dp_gap" and metric_family("ndcg@20") == "ndcg@k"
    assert variant_label("eo_gap_local_mean") == "local mean" and variant_label("hr@20") == "@20"


def test_hostile_text_is_escaped(tmp_path):
    evil = '<script>alert("x")</script>'
    run = synthetic_run(tmp_path / "a&b<i>", config={"dataset.options": evil, "seed": 3})
    rows = (run / "rounds.jsonl").read_text()
    (run / "rounds.jsonl").write_text(
        rows + json.dumps({"round": 3, "scope": "client", "client": 9, "note": evil}) + "\n"
    )
    text = render_report([run])
    assert "<script" not in text and "<i>" not in text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in text
    page = Page(text)
    assert not page.errors
    assert page.headings["h2"] == ["a&b<i>"]  # the folder name, shown as text
    changed = {row[0]: row[1] for row in page.changed_rows}
    assert changed["dataset.options"] == evil and changed["seed"] == "3"


@pytest.fixture(scope="module")
def three_runs(real_run, tmp_path_factory) -> tuple[list[Path], Path]:
    """Two synthetic ranking runs and the real run in one report (the CLI's default path)."""
    tmp = tmp_path_factory.mktemp("three")
    a = synthetic_run(tmp / "x" / "lr-small", config={"train.lr": 0.01})
    b = synthetic_run(tmp / "y" / "lr-big", rounds=4, config={"train.lr": 0.5}, scale=2)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        assert cli_main(["report", str(a), str(b), str(real_run)]) == 0
    return [a, b, real_run], tmp / "fedrec-report.html"


def test_two_runs_side_by_side(three_runs):
    (a, _, _), path = three_runs
    page = Page(path.read_text())
    assert not page.errors
    assert [s["class"] for s in page.sections] == ["compare", "run", "run", "run"]
    assert page.headings["h2"] == ["Comparison", "lr-small", "lr-big", "adult-run"]
    final = page.tables[0]
    assert final[0] == ["metric", "lr-small", "lr-big", "adult-run"]
    rows = {r[0]: r[1:] for r in final[1:]}
    assert rows["final round"] == ["3", "4", "2"]
    assert rows["ndcg@10"][:2] == ["0.3000", "0.8000"] and rows["ndcg@10"][2] == "–"
    assert rows["accuracy"][:2] == ["–", "–"] and rows["accuracy"][2] != "–"
    differ = {r[0]: r[1:] for r in page.tables[1][1:]}
    assert differ["train.lr"] == ["0.0100", "0.5000", "0.0500"]
    assert "output.dir" not in differ and "seed" not in differ
    # overlay plots: one panel per metric over all runs, before the per-run plots
    assert "Global metrics per round, one line per run" in page.headings["h3"]
    for src in page.imgs:
        decode_png(src)


def test_run_labels(tmp_path):
    a, b = tmp_path / "seed0" / "fedmf", tmp_path / "seed1" / "fedmf"
    assert _labels([a, b]) == ["seed0/fedmf", "seed1/fedmf"]  # parents until they differ
    assert _labels([a, a]) == ["fedmf", "fedmf (2)"]  # the same folder twice
    assert _labels([a, tmp_path / "other"]) == ["fedmf", "other"]


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: d.mkdir(), r"is not a fedrec run folder \(no rounds.jsonl or config.json\)"),
        (lambda d: None, "does not exist"),
        (
            lambda d: (d.mkdir(), (d / "rounds.jsonl").write_text("")),
            r"no config.json\)",
        ),
    ],
    ids=["empty-folder", "missing-folder", "no-config"],
)
def test_not_a_run_folder(tmp_path, setup, message):
    d = tmp_path / "nope"
    setup(d)
    with pytest.raises(ConfigError, match=message):
        write_report([d])
    assert not (d / "report.html").exists()


def test_corrupt_files_name_file_and_line(tmp_path, capsys):
    run = synthetic_run(tmp_path / "r")
    lines = (run / "rounds.jsonl").read_text().splitlines()
    lines[2] = lines[2][:20]  # a truncated line
    (run / "rounds.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=r"rounds.jsonl, line 3: corrupt rounds.jsonl line"):
        load_run(run)
    lines[2] = "[1, 2]"
    (run / "rounds.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=r"line 3: corrupt .*integer 'round' and a 'scope'"):
        load_run(run)
    (run / "rounds.jsonl").write_text("")
    (run / "config.json").write_text("{\n  oops")
    with pytest.raises(ConfigError, match=r"config.json, line 2: corrupt config.json"):
        load_run(run)
    # the CLI prints one line and exits 2
    assert cli_main(["report", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedrec: error: ") and "\n" not in err


def test_unwritable_output(tmp_path, capsys):
    run = synthetic_run(tmp_path / "r")
    blocker = tmp_path / "file.txt"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cannot write the report to"):
        write_report([run], blocker / "report.html")
    assert cli_main(["report", str(run), "--out", str(blocker / "x.html")]) == 2
    assert "cannot write the report" in capsys.readouterr().err
    # an existing folder as --out gets report.html inside
    (tmp_path / "outdir").mkdir()
    assert write_report([run], tmp_path / "outdir") == tmp_path / "outdir" / "report.html"


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.e2e
@pytest.mark.skipif(_chromium() is None, reason="chromium not installed")
def test_headless_chromium_renders_the_page(three_runs, tmp_path):
    import matplotlib.image as mpimg

    page = three_runs[1]
    shot = tmp_path / "shot.png"
    cmd = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",  # (containers with a small /dev/shm)
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        "--window-size=1280,2000",
        page.resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), proc.stderr[-2000:]
    img = mpimg.imread(str(shot))
    assert img.shape[:2] == (2000, 1280)
    assert n_colours(img) > 50  # text, plots, table borders: not blank
    not_white = (img[..., :3].sum(axis=2) < 720 / 255).mean()
    assert 0.05 < not_white < 0.95
