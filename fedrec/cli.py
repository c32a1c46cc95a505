"""The ``fedrec`` command line.

``fedrec run [CONFIG] [--backend ray|local|deployment] [-c key=value ...] [--out DIR]``
runs an experiment (default: FedAvg on the shipped Adult data) and prints the final
table (``fedrec run --resume DIR`` continues an interrupted run from its last
checkpoint); ``fedrec list`` shows strategies, datasets, models, metrics (``--keys``: every
config key with its default and documentation); ``fedrec data import NAME PATH``
verifies and caches a local copy of a dataset; ``fedrec data verify NAME`` checks it;
``fedrec report RUN_DIR [RUN_DIR ...] [--out FILE.html]`` writes an HTML report.
User errors print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys

from fedrec.errors import FedrecError


def _cmd_run(args) -> int:
    from fedrec.report import format_table
    from fedrec.runner import run

    overrides = args.override + (["output.save-predictions=true"] if args.save_predictions else [])
    summary = run(
        args.config,
        backend=args.backend,
        out=args.out,
        overrides=overrides,
        quiet=args.quiet,
        resume=args.resume,
    )
    print()
    print(
        f"{summary['strategy']} on {summary['dataset']}: {summary['num_clients']} clients, "
        f"{summary['num_rounds']} rounds, backend {summary['backend']}, "
        f"{summary['wall_s']:.1f} s"
    )
    print(format_table(summary))
    print(f"outputs: {summary['out_dir']} (rounds.jsonl, summary.json, *.png)")
    return 0


def _cmd_compare(args) -> int:
    """Run several strategies on the same experiment and print one comparison table."""
    from pathlib import Path

    from fedrec.flower.server_app import default_out_dir
    from fedrec.report import format_comparison
    from fedrec.runner import as_config, run

    base = as_config(args.config, args.override)
    root = Path(args.out or default_out_dir(base.replace(**{"strategy.name": "compare"})))
    from fedrec.plugins import load_strategy

    for name in args.strategies:  # fail before running anything
        load_strategy(name).parse_params(base.replace(**{"strategy.name": name}))
    summaries = {}
    for name in args.strategies:
        summaries[name] = run(
            base.replace(**{"strategy.name": name}),
            backend=args.backend,
            out=root / name.replace(":", "_"),
            quiet=args.quiet,
        )
    print()
    first = next(iter(summaries.values()))
    print(
        f"{first['dataset']}: {first['num_clients']} clients, backend {first['backend']}, "
        f"seed {first['seed']}"
    )
    print(format_comparison(summaries))
    print(f"outputs: {root}/<strategy>/")
    return 0


def _cmd_unlearn(args) -> int:
    from pathlib import Path

    from fedrec.runner import unlearn

    kw = dict(backend=args.backend, overrides=args.override, quiet=args.quiet)
    summary = unlearn(args.run_dir, args.request, method=args.method, out=args.out, **kw)
    reference = None
    if args.compare_retrain and summary["unlearning"][-1]["method"] != "retrain":
        out = Path(summary["out_dir"])
        reference = unlearn(
            args.run_dir,
            args.request,
            method="retrain",
            out=out.with_name(out.name + "-retrain"),
            **kw,
        )
    print()
    for i, e in enumerate(summary.get("unlearning", [])):
        kinds = ", ".join(sorted({r["kind"] for r in e["requests"]}))
        print(
            f"{e['method']}: {len(e['requests'])} request(s) ({kinds}) at round {e['round']}: "
            f"{e['seconds']:.2f} s, {e['rounds']} rounds, {e['bytes_down']} B down, "
            f"{e['bytes_up']} B up; {len(e['leaving'])} client(s) left"
        )
        ref = reference["unlearning"][i] if reference else None
        cols = ["original", e["method"]] + (["retrain", "|method - retrain|"] if ref else [])
        print(f"  {'metric':<28}" + "".join(f"{c:>20}" for c in cols))
        for k in sorted(set(e["metrics"]) | set(e.get("before", {}))):
            vals = [e.get("before", {}).get(k), e["metrics"].get(k)]
            if ref:
                r = ref["metrics"].get(k)
                vals += [r, None if r is None or vals[1] is None else abs(vals[1] - r)]
            print(
                f"  {k:<28}" + "".join("-".rjust(20) if v is None else f"{v:20.4f}" for v in vals)
            )
        if ref:
            print(f"  speedup over retrain: {ref['seconds'] / max(e['seconds'], 1e-9):.1f}x")
    print(f"outputs: {summary['out_dir']} (unlearning.jsonl, summary.json)")
    return 0


def _cmd_report(args) -> int:
    from fedrec.report_html import write_report

    print(write_report(args.run_dirs, args.out))
    return 0


def _cmd_list(args) -> int:
    if args.keys:
        from fedrec.config import all_keys

        for k, d in all_keys().items():
            extra = f" [{', '.join(map(str, d['choices']))}]" if d["choices"] else ""
            extra += f" ({d['constraint']})" if d["constraint"] else ""
            print(f"{k} = {d['default']!r}{extra}\n    {d['doc']}")
        print("strategy.params.* / model.params.*: see the strategy's / model's Params")
        return 0
    from fedrec.data import list_datasets
    from fedrec.metrics import METRICS
    from fedrec.models import list_models
    from fedrec.plugins import GROUP, _entry_points

    print(f"strategies (entry points '{GROUP}'):")
    for name, ep in sorted(_entry_points().items()):
        print(f"  {name:<22} {ep.value}")
    print("datasets:")
    for info in list_datasets():
        tag = "shipped" if info.shipped else "download/FEDREC_DATA_DIR"
        print(f"  {info.name:<22} {info.kind:<8} {tag:<25} {info.description}")
    print("models:")
    for m in list_models():
        print(f"  {m.name:<22} {m.description}")
    print("metrics:")
    for name, doc in METRICS.items():
        print(f"  {name:<22} {doc}")
    from fedrec.unlearning.methods import load_method, method_names

    print("unlearning methods (entry points 'fedrec.unlearning'):")
    for name in method_names():
        um = load_method(name)
        print(f"  {name:<22} {'exact' if um.exact else 'approximate'}; {', '.join(um.kinds)}")
    return 0


def _cmd_data(args) -> int:
    from fedrec.data import import_dataset, resolve_files

    if args.data_cmd == "import":
        dest = import_dataset(args.name, args.path)
        print(f"imported {args.name} into {dest}")
    else:
        files = resolve_files(args.name)
        for name, path in sorted(files.items()):
            print(f"ok  {name}  {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedrec", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run an experiment")
    r.add_argument("config", nargs="?", help="experiment TOML (default: built-in defaults)")
    r.add_argument("--backend", choices=("ray", "local", "deployment"))
    r.add_argument(
        "-c",
        "--config-override",
        dest="override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (repeatable)",
    )
    r.add_argument("--out", help="output directory (default runs/<strategy>-<dataset>-<time>)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument(
        "--resume",
        metavar="DIR",
        help="continue the interrupted run DIR (its DIR.incomplete folder) from its last "
        "checkpoint; -c may change only runtime.* keys",
    )
    r.add_argument(
        "--save-predictions",
        action="store_true",
        help="write predictions.csv (per-client test rows; an audit option)",
    )
    r.set_defaults(func=_cmd_run)
    c = sub.add_parser("compare", help="run several strategies on one experiment, one table")
    c.add_argument("config", nargs="?", help="experiment TOML (default: built-in defaults)")
    c.add_argument(
        "--strategies",
        nargs="+",
        default=["fedavg", "fedfact-post"],
        help="strategy names (default: fedavg fedfact-post)",
    )
    c.add_argument("--backend", choices=("ray", "local", "deployment"))
    c.add_argument(
        "-c", "--config-override", dest="override", action="append", default=[], metavar="KEY=VALUE"
    )
    c.add_argument("--out", help="parent output directory (one folder per strategy)")
    c.add_argument("--quiet", action="store_true")
    c.set_defaults(func=_cmd_compare)
    un = sub.add_parser("unlearn", help="serve unlearning requests on a finished run")
    un.add_argument("run_dir", help="the run folder (kept client state, checkpoint)")
    un.add_argument("--request", required=True, help="request TOML ([[request]] tables)")
    un.add_argument(
        "--method", help="retrain, sisa, federaser, gradient-ascent, finetune, influence, ..."
    )
    un.add_argument("--out", help="output folder (default <run_dir>-unlearn-<method>)")
    un.add_argument("--backend", choices=("ray", "local", "deployment"))
    un.add_argument(
        "--compare-retrain",
        action="store_true",
        help="also serve the requests with retrain (the gold reference) and show both",
    )
    un.add_argument(
        "-c", "--config-override", dest="override", action="append", default=[], metavar="KEY=VALUE"
    )
    un.add_argument("--quiet", action="store_true")
    un.set_defaults(func=_cmd_unlearn)
    rep = sub.add_parser("report", help="one self-contained HTML page for one or several runs")
    rep.add_argument(
        "run_dirs", nargs="+", metavar="RUN_DIR", help="run folder(s): the --out of fedrec run"
    )
    rep.add_argument(
        "--out",
        metavar="FILE.html",
        help="output file (default RUN_DIR/report.html for one run, ./fedrec-report.html "
        "for several)",
    )
    rep.set_defaults(func=_cmd_report)
    ls = sub.add_parser("list", help="registered strategies, datasets, models, metrics")
    ls.add_argument("--keys", action="store_true", help="list every config key instead")
    ls.set_defaults(func=_cmd_list)
    d = sub.add_parser("data", help="manage datasets")
    dsub = d.add_subparsers(dest="data_cmd", required=True)
    imp = dsub.add_parser("import", help="verify and cache a local copy (dir or zip)")
    imp.add_argument("name")
    imp.add_argument("path")
    ver = dsub.add_parser("verify", help="locate and checksum a dataset's files")
    ver.add_argument("name")
    d.set_defaults(func=_cmd_data)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except FedrecError as exc:
        message = " ".join(str(exc).splitlines())  # always one line
        print(f"fedrec: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedrec: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
