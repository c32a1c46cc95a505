"""``fedrec report``: one self-contained HTML page for one or several run folders (pure).

A run folder (``fedrec run --out DIR``) holds ``config.json``, ``rounds.jsonl`` and usually
``summary.json`` and ``partition.json``. The page shows, per run: the global metrics per
round as plots (every numeric global key, one panel per metric family, grouped into
sections: accuracy and ranking, fairness and exposure, training, faults and participation,
privacy, system), the per-round table, the final round's per-client table, the config
(settings that differ from the defaults first, all of them in a collapsible block) and the
partition report. Several runs are shown side by side after a comparison: one overlay plot
per metric (one line per run), a table of the final metrics and the config keys on which
the runs differ. The page needs no network: inline CSS, plots as base64 PNG data URIs
(matplotlib, Agg backend); every text is HTML-escaped.

Example (a 2-round run, then its report)::

    fedrec run --backend local --out /tmp/a -c num-server-rounds=2 --quiet
    fedrec run --backend local --out /tmp/b -c num-server-rounds=2 -c train.lr=0.2 --quiet
    fedrec report /tmp/a                         # writes /tmp/a/report.html
    fedrec report /tmp/a /tmp/b --out cmp.html   # two runs side by side

or from Python::

    from fedrec.report_html import write_report
    print(write_report(["/tmp/a", "/tmp/b"], "cmp.html"))
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedrec.errors import ConfigError

# (section id, title); metric keys are sorted into them by :func:`metric_section`.
SECTIONS: tuple[tuple[str, str], ...] = (
    ("performance", "Accuracy and ranking"),
    ("fairness", "Fairness gaps and exposure"),
    ("train", "Training (train_*)"),
    ("faults", "Faults and participation"),
    ("privacy", "Privacy"),
    ("system", "System"),
    ("other", "Other"),
)
_LOCAL_SUFFIXES = ("_local_max", "_local_mean", "_local_min")
_PRIVACY = ("epsilon", "privacy", "noise", "clip", "delta", "sigma", "dp_budget")
_FAULTS = (
    "fault",
    "failure",
    "crash",
    "drop",
    "straggler",
    "timed_out",
    "timeout",
    "num_sampled",
    "replies",
    "replied",
    "node_fail",
    "deadline",
    "skipped",
)
_FAIRNESS = ("gap", "subgroup_max", "pairwise", "gini", "exposure", "coverage", "disparit")
_SYSTEM = ("wall_s", "seconds", "bytes", "_mb", "memory", "time")
_PERFORMANCE = (
    "accuracy",
    "loss",
    "@",
    "ndcg",
    "recall",
    "precision",
    "auc",
    "f1",
    "_em",
    "nll",
    "margin",
    "_rate",
    "mrr",
    "hit",
)
_SKIP_KEYS = {"round", "scope", "client", "group"}


def metric_section(key: str) -> str:
    """The section id of a global metric key (see :data:`SECTIONS`)."""
    k = key.lower()
    if k.startswith("train_"):
        return "train"
    if any(t in k for t in _PRIVACY):
        return "privacy"
    if any(t in k for t in _FAULTS):
        return "faults"
    if any(t in k for t in _FAIRNESS):
        return "fairness"
    if any(t in k for t in _SYSTEM) or k in ("n",) or k.startswith("num_"):
        return "system"
    if k.endswith("_em") or any(t in k for t in _PERFORMANCE):
        return "performance"
    return "other"


_AT_K = re.compile(r"@\d+")


def metric_family(key: str) -> str:
    """The panel a key is drawn in: ``dp_gap_local_max`` -> ``dp_gap`` (the ``_local_*``
    variants join their global key), ``ndcg@10`` and ``ndcg@20`` -> ``ndcg@k``."""
    for suffix in _LOCAL_SUFFIXES:
        if key.endswith(suffix):
            key = key[: -len(suffix)]
            break
    return _AT_K.sub("@k", key)


def variant_label(key: str) -> str:
    """A key's line label inside its family's panel: ``global``, ``local max``, ``@10``."""
    parts = _AT_K.findall(key)
    parts += [s[1:].replace("_", " ") for s in _LOCAL_SUFFIXES if key.endswith(s)]
    return " ".join(parts) or "global"


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# --------------------------------------------------------------------------- loading
@dataclass
class Run:
    """One run folder, read."""

    path: Path
    label: str
    config: dict[str, Any]
    rows: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)
    partition: dict[str, Any] = field(default_factory=dict)

    @property
    def global_rows(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r.get("scope") == "global"]

    def numeric_global_keys(self) -> list[str]:
        return _numeric_keys(self.global_rows)

    def final_global(self) -> dict[str, Any]:
        g = self.global_rows
        return g[-1] if g else {}


def _numeric_keys(rows: Iterable[dict[str, Any]]) -> list[str]:
    keys: set[str] = set()
    for r in rows:
        keys.update(k for k, v in r.items() if k not in _SKIP_KEYS and is_number(v))
    return sort_keys(keys)


def sort_keys(keys: Iterable[str]) -> list[str]:
    """Keys in section order, then by family, the global value before its local variants."""
    order = {s: i for i, (s, _) in enumerate(SECTIONS)}

    def rank(k: str) -> tuple[int, str, int, str]:
        fam = metric_family(k)
        return (order[metric_section(k)], fam, 0 if k == fam else 1 + len(k), k)

    return sorted(keys, key=rank)


def read_rounds_checked(path: Path) -> list[dict[str, Any]]:
    """``rounds.jsonl`` as a list of rows; a corrupt line is a one-line ConfigError."""
    rows = []
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read '{path}': {exc}") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{path}, line {lineno}: corrupt rounds.jsonl line ({exc.msg})"
            ) from None
        if (
            not isinstance(row, dict)
            or not isinstance(row.get("round"), int)
            or isinstance(row.get("round"), bool)
            or "scope" not in row
        ):
            raise ConfigError(
                f"{path}, line {lineno}: corrupt rounds.jsonl line (not an object with an "
                "integer 'round' and a 'scope')"
            )
        rows.append(row)
    return rows


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read '{path}': {exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}, line {exc.lineno}: corrupt {what} ({exc.msg})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: corrupt {what} (not a JSON object)")
    return data


def load_run(run_dir: str | Path, label: str | None = None) -> Run:
    """Read a run folder; ConfigError when it is not a fedrec run or a file is corrupt."""
    path = Path(run_dir)
    if not path.is_dir():
        raise ConfigError(f"run folder '{path}' does not exist or is not a folder")
    missing = [n for n in ("rounds.jsonl", "config.json") if not (path / n).is_file()]
    if missing:
        raise ConfigError(
            f"'{path}' is not a fedrec run folder (no {' or '.join(missing)}); "
            "give the --out folder of a `fedrec run`"
        )
    config = _read_json(path / "config.json", "config.json")
    rows = read_rounds_checked(path / "rounds.jsonl")
    summary = (
        _read_json(path / "summary.json", "summary.json")
        if (path / "summary.json").is_file()
        else {}
    )
    partition = (
        _read_json(path / "partition.json", "partition.json")
        if (path / "partition.json").is_file()
        else {}
    )
    return Run(path, label or path.name, config, rows, summary, partition)


def _labels(paths: Sequence[Path]) -> list[str]:
    """Short distinct labels: the folder names, with parents added until they differ."""
    resolved = [p.resolve() for p in paths]
    distinct = set(resolved)
    depth = 1
    while True:
        labels = ["/".join(p.parts[-depth:]) for p in resolved]
        unique = {"/".join(p.parts[-depth:]) for p in distinct}
        if len(unique) == len(distinct) or depth > max(len(p.parts) for p in resolved):
            break
        depth += 1
    out: list[str] = []
    seen: dict[str, int] = {}
    for lab in labels:  # the same folder given twice
        seen[lab] = seen.get(lab, 0) + 1
        out.append(lab if seen[lab] == 1 else f"{lab} ({seen[lab]})")
    return out


# --------------------------------------------------------------------------- formatting
def fmt(v: Any) -> str:
    """A table cell's text (not yet escaped)."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v == int(v) and abs(v) < 1e12:
            return str(int(v))
        if 1e-3 <= abs(v) < 1e4:
            return f"{v:.4f}"
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        text = "[" + ", ".join(fmt(x) for x in v) + "]"
        return text if len(text) <= 80 else text[:77] + "..."
    if isinstance(v, dict):
        text = json.dumps(v)
        return text if len(text) <= 80 else text[:77] + "..."
    return str(v)


def esc(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _table(
    head: Sequence[str] | None,
    rows: Iterable[Sequence[Any]],
    cls: str = "",
    row_classes: Sequence[str] | None = None,
    numeric_from: int = 1,
) -> str:
    out = [f'<div class="scroll"><table class="{esc(cls)}">']
    if head is not None:
        out.append("<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead>")
    out.append("<tbody>")
    for i, row in enumerate(rows):
        rc = row_classes[i] if row_classes else ""
        out.append(f'<tr class="{esc(rc)}">' if rc else "<tr>")
        for j, v in enumerate(row):
            num = j >= numeric_from and is_number(v)
            out.append(f'<td class="num">{esc(fmt(v))}</td>' if num else f"<td>{esc(fmt(v))}</td>")
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


# --------------------------------------------------------------------------- plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    _plt().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{esc(alt)}">'


def _grid_figure(
    panels: list[tuple[str, list[tuple[str, list[float], list[float]]]]],
    max_cols: int = 4,
    colors: dict[str, str] | None = None,
):
    """One figure, one small panel per ``(title, [(label, x, y), ...])``; the axes are
    placed at fixed offsets (inches), which is much faster than ``tight_layout``."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    cell_w, cell_h = 3.2, 2.4  # inches per panel
    left, right, top, bottom = 0.62, 0.12, 0.28, 0.42  # margins inside a cell
    ncols = min(max_cols, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    width, height = cell_w * ncols, cell_h * nrows
    fig = plt.figure(figsize=(width, height))
    markers = max((len(x) for _, lines in panels for _, x, _ in lines), default=0) <= 30
    for i, (title, lines) in enumerate(panels):
        row, col = divmod(i, ncols)
        ax = fig.add_axes(
            (
                (col * cell_w + left) / width,
                ((nrows - 1 - row) * cell_h + bottom) / height,
                (cell_w - left - right) / width,
                (cell_h - top - bottom) / height,
            )
        )
        for label, x, y in lines:
            color = colors.get(label) if colors else None
            ax.plot(x, y, "o-" if markers else "-", ms=3, lw=1.4, label=label, color=color)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(6, integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(5))
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.set_xlabel("round", fontsize=7, labelpad=1)
        ax.grid(alpha=0.3)
        if len(lines) > 1 or colors:  # (runs compared: always say which run a line is)
            ax.legend(fontsize=6, loc="upper left", framealpha=0.6)
    return fig


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    x = [float(r["round"]) for r in rows]
    y = [float(r[key]) if is_number(r.get(key)) else math.nan for r in rows]
    return x, y


def run_plots(run: Run, max_cols: int = 4) -> list[tuple[str, str]]:
    """``(section title, PNG data URI)`` per section: one panel per metric family."""
    rows = run.global_rows
    out = []
    keys = run.numeric_global_keys()
    for sec, title in SECTIONS:
        fams: dict[str, list[str]] = {}
        for k in keys:
            if metric_section(k) == sec:
                fams.setdefault(metric_family(k), []).append(k)
        if not fams:
            continue
        panels = []
        for fam, members in fams.items():
            lines = []
            for k in members:
                lines.append((variant_label(k), *_series(rows, k)))
            panels.append((fam if len(members) > 1 else members[0], lines))
        out.append((title, _png(_grid_figure(panels, max_cols))))
    return out


def comparison_plots(runs: Sequence[Run]) -> list[tuple[str, str]]:
    """Overlay plots: one panel per metric, one line per run, grouped by section."""
    have = [set(r.numeric_global_keys()) for r in runs]
    keys = sort_keys(set().union(*have))
    colors = {r.label: f"C{i % 10}" for i, r in enumerate(runs)}  # one colour per run
    out = []
    for sec, title in SECTIONS:
        panels = []
        for k in (k for k in keys if metric_section(k) == sec):
            lines = [(r.label, *_series(r.global_rows, k)) for r, h in zip(runs, have) if k in h]
            panels.append((k, lines))
        if panels:
            out.append((title, _png(_grid_figure(panels, colors=colors))))
    return out


def partition_plot(part: dict[str, Any]) -> str | None:
    """Rows per client (train and test; by sensitive group when reported)."""
    clients = part.get("clients") or []
    if not clients or not all(isinstance(c, dict) for c in clients):
        return None
    plt = _plt()
    import numpy as np

    ids = [str(c.get("client", i)) for i, c in enumerate(clients)]
    fig, ax = plt.subplots(figsize=(min(12.0, max(5.0, 0.3 * len(ids) + 2)), 2.8))
    if len(ids) > 200:  # too many bars: the distribution of the client sizes
        sizes = [
            sum(c.get(k, 0) for k in ("num_train", "num_test") if is_number(c.get(k)))
            for c in clients
        ]
        ax.hist(sizes, bins=40)
        ax.set(xlabel="rows per client", ylabel="clients", title="Partition: client sizes")
    else:
        x = np.arange(len(ids))
        grouped = all(c.get("train_counts_label_by_group") for c in clients)
        if grouped:
            try:
                by_group = np.array(
                    [
                        np.asarray(c["train_counts_label_by_group"]).sum(axis=0)
                        + np.asarray(c["test_counts_label_by_group"]).sum(axis=0)
                        for c in clients
                    ],
                    dtype=float,
                )
            except (KeyError, ValueError, TypeError):
                grouped = False
        if grouped:
            bottom = np.zeros(len(ids))
            for g in range(by_group.shape[1]):
                ax.bar(x, by_group[:, g], bottom=bottom, label=f"group {g}")
                bottom += by_group[:, g]
        else:
            bottom = np.zeros(len(ids))
            for k in ("num_train", "num_test"):
                vals = np.array([float(c.get(k, 0) or 0) for c in clients])
                ax.bar(x, vals, bottom=bottom, label=k)
                bottom += vals
        ax.set_xticks(x, ids, fontsize=6)
        ax.set(xlabel="client", ylabel="rows", title="Partition: rows per client")
        ax.legend(fontsize=7)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    return _png(fig)


# --------------------------------------------------------------------------- sections
def _defaults() -> dict[str, Any]:
    from fedrec.config import all_keys

    return {k: d["default"] for k, d in all_keys().items()}


def _facts(run: Run) -> list[tuple[str, Any]]:
    s, c = run.summary, run.config
    g = run.global_rows
    facts: list[tuple[str, Any]] = [
        ("folder", str(run.path)),
        ("strategy", s.get("strategy", c.get("strategy.name"))),
        ("dataset", s.get("dataset", c.get("dataset.name"))),
        ("rounds", s.get("num_rounds", len({r["round"] for r in g}))),
        ("clients", s.get("num_clients", c.get("partition.num-clients"))),
        ("backend", s.get("backend", c.get("runtime.backend"))),
        ("seed", s.get("seed", c.get("seed"))),
    ]
    if "wall_s" in s:
        facts.append(("wall time (s)", s["wall_s"]))
    if "failures" in s:
        facts.append(("failed replies", s["failures"]))
    if not s:
        facts.append(("summary.json", "missing (unfinished run?)"))
    vers = s.get("versions")
    if isinstance(vers, dict):
        facts.append(("versions", ", ".join(f"{k} {v}" for k, v in vers.items())))
    if s.get("command"):
        facts.append(("command", s["command"]))
    return facts


def _section_tables(final: dict[str, Any], keys: list[str]) -> str:
    """The final round's global metrics, one small key/value table per section."""
    blocks = []
    for sec, title in SECTIONS:
        ks = [k for k in keys if metric_section(k) == sec]
        if ks:
            blocks.append(
                f'<div class="kv"><h4>{esc(title)}</h4>'
                + _table(("metric", "value"), [(k, final.get(k)) for k in ks])
                + "</div>"
            )
    return '<div class="kvs">' + "".join(blocks) + "</div>"


def _rounds_table(run: Run) -> str:
    rows = run.global_rows
    keys = run.numeric_global_keys()
    text_keys = sorted(
        {k for r in rows for k, v in r.items() if k not in _SKIP_KEYS and isinstance(v, str)}
    )
    head = ["round", *text_keys, *keys]
    return _table(
        head,
        [[r["round"], *(r.get(k) for k in text_keys), *(r.get(k) for k in keys)] for r in rows],
        cls="rounds",
        numeric_from=0,
    )


def _client_key(row: dict[str, Any]) -> tuple[int, float, str]:
    c = row.get("client")
    if isinstance(c, (int, float)) and not isinstance(c, bool):
        return (0, float(c), "")
    return (1, 0.0, str(c))


def _clients_tables(run: Run) -> str:
    clients = [r for r in run.rows if r.get("scope") == "client"]
    if not clients:
        return (
            '<p class="note">No per-client rows in rounds.jsonl (output.client-metrics = '
            "false, or the strategy reports no per-client evaluation).</p>"
        )
    last = max(r["round"] for r in clients)
    cl = sorted((r for r in clients if r["round"] == last), key=lambda r: _client_key(r))
    keys = _numeric_keys(cl)
    stats_rows = []
    for k in keys:
        vals = sorted(float(r[k]) for r in cl if is_number(r.get(k)))
        if vals:
            mid = len(vals) // 2
            median = vals[mid] if len(vals) % 2 else 0.5 * (vals[mid - 1] + vals[mid])
            stats_rows.append((k, vals[0], sum(vals) / len(vals), median, vals[-1], len(vals)))
    out = [
        f"<p>Round {esc(last)}: {len(cl)} clients. Distribution over the clients:</p>",
        _table(("metric", "min", "mean", "median", "max", "clients"), stats_rows),
        "<p>Per client:</p>",
        _table(
            ["client", *keys],
            [[r.get("client"), *(r.get(k) for k in keys)] for r in cl],
            cls="clients",
            numeric_from=0,
        ),
    ]
    groups = [r for r in run.rows if r.get("scope") == "group" and r["round"] == last]
    if groups:
        gkeys = sorted({k for r in groups for k in r if k not in _SKIP_KEYS})
        out.append(f"<p>Per sensitive group (round {esc(last)}, pooled):</p>")
        out.append(
            _table(
                ["group", *gkeys], [[r.get("group"), *(r.get(k) for k in gkeys)] for r in groups]
            )
        )
    return "".join(out)


def _config_block(run: Run, defaults: dict[str, Any]) -> str:
    cfg = run.config
    changed = [k for k in sorted(cfg) if k not in defaults or cfg[k] != defaults[k]]
    rows = [(k, cfg[k], defaults.get(k, "(no default)")) for k in changed]
    out = [
        f"<p>{len(changed)} of {len(cfg)} keys differ from the defaults:</p>",
        _table(("key", "value", "default"), rows, cls="config", numeric_from=99),
        f"<details><summary>All {len(cfg)} config keys (non-default ones highlighted)</summary>",
        _table(
            ("key", "value", "default"),
            [(k, cfg[k], defaults.get(k, "(no default)")) for k in sorted(cfg)],
            cls="config",
            row_classes=["changed" if k in changed else "" for k in sorted(cfg)],
            numeric_from=99,
        ),
        "</details>",
    ]
    return "".join(out)


def _partition_block(run: Run) -> str:
    part = run.partition
    if not part:
        return '<p class="note">No partition.json.</p>'
    scalars = [(k, v) for k, v in part.items() if k != "clients" and not isinstance(v, dict)]
    out = [_table(("field", "value"), scalars, numeric_from=99)]
    uri = partition_plot(part)
    if uri:
        out.append(_img(uri, f"partition of {run.label}"))
    clients = [c for c in part.get("clients") or [] if isinstance(c, dict)]
    if clients:
        keys = sorted({k for c in clients for k in c if k != "client"})
        out.append(
            f"<details><summary>Per-client partition ({len(clients)} clients)</summary>"
            + _table(
                ["client", *keys], [[c.get("client"), *(c.get(k) for k in keys)] for c in clients]
            )
            + "</details>"
        )
    return "".join(out)


def _run_section(run: Run, defaults: dict[str, Any], anchor: str, max_cols: int = 4) -> str:
    keys = run.numeric_global_keys()
    plots = run_plots(run, max_cols) if run.global_rows else []
    out = [
        f'<section class="run" id="{esc(anchor)}"><h2>{esc(run.label)}</h2>',
        _table(None, _facts(run), cls="facts", numeric_from=99),
    ]
    if not run.global_rows:
        out.append('<p class="note">rounds.jsonl has no global rows yet.</p>')
    else:
        out.append(f"<h3>Final round ({esc(run.final_global().get('round'))})</h3>")
        out.append(_section_tables(run.final_global(), keys))
        out.append("<h3>Global metrics per round</h3>")
        for title, uri in plots:
            out.append(f"<h4>{esc(title)}</h4>{_img(uri, title + ' of ' + run.label)}")
        out.append("<details open><summary>Per-round table (global scope)</summary>")
        out.append(_rounds_table(run))
        out.append("</details>")
    out.append("<h3>Clients (final round)</h3>")
    out.append(_clients_tables(run))
    out.append("<h3>Config</h3>")
    out.append(_config_block(run, defaults))
    out.append("<h3>Partition</h3>")
    out.append(_partition_block(run))
    out.append("</section>")
    return "".join(out)


def _comparison_section(runs: Sequence[Run], defaults: dict[str, Any]) -> str:
    keys = sort_keys({k for r in runs for k in r.numeric_global_keys()})
    finals = [r.final_global() for r in runs]
    rows: list[list[Any]] = [["final round", *(f.get("round") for f in finals)]]
    row_classes = [""]
    for sec, title in SECTIONS:
        ks = [k for k in keys if metric_section(k) == sec]
        if ks:
            rows.append([title, *([""] * len(runs))])
            row_classes.append("sep")
            for k in ks:
                rows.append([k, *(f.get(k) for f in finals)])
                row_classes.append("")
    cfg_keys = sorted({k for r in runs for k in r.config})
    differ = [
        k
        for k in cfg_keys
        if k != "output.dir" and len({json.dumps(r.config.get(k)) for r in runs}) > 1
    ]
    out = [
        '<section class="compare" id="compare"><h2>Comparison</h2>',
        "<h3>Final metrics (last global row of each run)</h3>",
        _table(["metric", *(r.label for r in runs)], rows, cls="compare", row_classes=row_classes),
        "<h3>Config keys that differ between the runs</h3>",
        _table(
            ["key", *(r.label for r in runs)],
            [[k, *(r.config.get(k, "(unset)") for r in runs)] for k in differ],
            numeric_from=99,
        )
        if differ
        else '<p class="note">The runs share every config key (but output.dir).</p>',
        "<h3>Global metrics per round, one line per run</h3>",
    ]
    for title, uri in comparison_plots(runs):
        out.append(f"<h4>{esc(title)}</h4>{_img(uri, title + ' comparison')}")
    out.append("</section>")
    return "".join(out)


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;
 background:#f4f5f7;color:#1d2330;font-size:14px}
header{background:#1f3a5f;color:#fff;padding:14px 24px}
header h1{margin:0;font-size:22px} header p{margin:4px 0 0;opacity:.85}
nav{padding:6px 24px;background:#e3e8ef} nav a{margin-right:14px;color:#1f3a5f}
main{padding:16px 24px}
.runs{display:grid;grid-template-columns:repeat(auto-fit,minmax(560px,1fr));gap:16px}
section{background:#fff;border:1px solid #d5dbe3;border-radius:6px;padding:12px 16px;
 margin-bottom:16px;min-width:0}
h2{margin:0 0 8px;color:#1f3a5f;font-size:19px;word-break:break-all}
h3{margin:18px 0 6px;font-size:16px;border-bottom:1px solid #e3e8ef;padding-bottom:3px}
h4{margin:10px 0 4px;font-size:14px;color:#44506a}
img{max-width:100%;height:auto;display:block;border:1px solid #eef0f3}
.scroll{overflow:auto;max-height:420px;margin:4px 0}
table{border-collapse:collapse;font-size:12px}
th,td{border:1px solid #dde2e8;padding:2px 6px;text-align:left;vertical-align:top}
th{background:#eef2f7;position:sticky;top:0}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td{max-width:520px;overflow-wrap:anywhere}
tr.changed td{background:#fff3c4;font-weight:600}
tr.sep td{background:#e3e8ef;font-weight:600}
table.facts td:first-child{font-weight:600;white-space:nowrap}
.kvs{display:flex;flex-wrap:wrap;gap:12px} .kv h4{margin:4px 0}
details{margin:6px 0} summary{cursor:pointer;color:#1f3a5f;font-weight:600}
.note{color:#6b7385;font-style:italic}
"""


def _check_run_dirs(paths: Sequence[Path]) -> None:
    """Every folder is a run folder (checked before any is read in full)."""
    for p in paths:
        if not (p / "rounds.jsonl").is_file() or not (p / "config.json").is_file():
            load_run(p)  # raises the one-line error


def render_report(run_dirs: Sequence[str | Path]) -> str:
    """The HTML page for ``run_dirs`` (one or several run folders)."""
    if not run_dirs:
        raise ConfigError("fedrec report needs at least one run folder")
    paths = [Path(p) for p in run_dirs]
    _check_run_dirs(paths)
    runs = [load_run(p, lab) for p, lab in zip(paths, _labels(paths))]
    defaults = _defaults()
    title = (
        f"fedrec report: {runs[0].label}" if len(runs) == 1 else f"fedrec report: {len(runs)} runs"
    )
    anchors = [f"run-{i}" for i in range(len(runs))]
    nav = ([('<a href="#compare">comparison</a>')] if len(runs) > 1 else []) + [
        f'<a href="#{a}">{esc(r.label)}</a>' for a, r in zip(anchors, runs)
    ]
    body = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>",
        f"<header><h1>{esc(title)}</h1><p>{esc(', '.join(r.label for r in runs))} — "
        f"generated {esc(time.strftime('%Y-%m-%d %H:%M:%S'))}</p></header>",
        f"<nav>{' '.join(nav)}</nav><main>",
    ]
    if len(runs) > 1:
        body.append(_comparison_section(runs, defaults))
    body.append('<div class="runs">')
    cols = 4 if len(runs) == 1 else 2  # side by side: narrower plot grids
    body += [_run_section(r, defaults, a, cols) for r, a in zip(runs, anchors)]
    body.append("</div></main></body></html>")
    return "\n".join(body) + "\n"


def default_output(run_dirs: Sequence[str | Path]) -> Path:
    """``RUN_DIR/report.html`` for one run, ``./fedrec-report.html`` for several."""
    return Path(run_dirs[0]) / "report.html" if len(run_dirs) == 1 else Path("fedrec-report.html")


def write_report(run_dirs: Sequence[str | Path], out: str | Path | None = None) -> Path:
    """Render the report of ``run_dirs`` and write it to ``out`` (default
    :func:`default_output`; an existing folder gets ``report.html`` inside). Returns the
    path written."""
    if not run_dirs:
        raise ConfigError("fedrec report needs at least one run folder")
    _check_run_dirs([Path(p) for p in run_dirs])
    dest = Path(out) if out is not None else default_output(run_dirs)
    if dest.is_dir():
        dest = dest / "report.html"
    try:  # an unusable folder fails before the (slower) rendering
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot write the report to '{dest}': {exc.strerror or exc}") from None
    page = render_report(run_dirs)
    try:
        dest.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write the report to '{dest}': {exc.strerror or exc}") from None
    return dest


__all__ = [
    "SECTIONS",
    "Run",
    "default_output",
    "load_run",
    "metric_family",
    "metric_section",
    "read_rounds_checked",
    "render_report",
    "write_report",
]
