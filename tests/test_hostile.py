"""Hostile input: every bad input gets ONE clear line, no traceback, nothing half-written.

The rule (fedrec/errors.py): a user error is a :class:`~fedrec.errors.FedrecError` whose
message is one line naming the culprit (a file, a key, a plugin, a path) and, where it makes
sense, the allowed values; ``fedrec`` prints ``fedrec: error: ...`` and exits with status 2.
These tests feed the CLI (in-process) and the Python API malformed configs, overrides, data
files, plugins and output paths, and check that contract: exit 2, exactly one stderr line,
the culprit named, no ``Traceback``, and no output folder, ``.incomplete`` folder or cache
file left behind. A bad input that got past the checks would reach the runtime, which is
replaced here by a stub that fails the test. Property-based tests (hypothesis) cover config
parsing, the raw-file parsers and the partitioners.
"""

from __future__ import annotations

import lzma
import math
import os
import shutil
import sys
import tomllib
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedrec.cli import main
from fedrec.config import (
    INT_MAX,
    INT_MIN,
    RunConfig,
    all_keys,
    coerce,
    load_config,
    load_toml,
    parse_override,
    validate,
)
from fedrec.data import clear_cache, load_dataset, make_partitions, recsys, sources, tabular
from fedrec.data.partition import dirichlet_partition, iid_partition, train_test_split_indices
from fedrec.errors import ConfigError, DataError, FedrecError
from fedrec.runner import check_out_dir

SHARED = Path(os.environ.get("FEDREC_DATA_DIR") or "/nonexistent")
FIXTURES = Path(__file__).parent / "fixtures"
PROPS = settings(
    max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)


# --------------------------------------------------------------------------- helpers
@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """``fedrec ARGS`` in-process, from ``tmp_path``; returns ``(status, stdout, stderr)``.
    A run whose bad input got past the checks reaches the runtime: the stub fails the test."""
    import fedrec.runtime.local as local

    def reached(cfg, out_dir):
        raise AssertionError(f"a bad input reached the runtime (outputs -> {out_dir})")

    monkeypatch.setattr(local, "run_local", reached)
    monkeypatch.chdir(tmp_path)

    def call(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        status = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return status, out, err

    return call


def one_line(result: tuple[int, str, str], *culprits: str) -> str:
    """Assert the one-line error contract; return the line."""
    status, out, err = result
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2, (status, err)
    assert len(lines) == 1 and lines[0].startswith("fedrec: error: "), err
    for culprit in culprits:
        assert culprit in lines[0], (culprit, lines[0])
    return lines[0]


def nothing_written(root: Path, *keep: str) -> None:
    """No output folder (``out*``), staging folder or default ``runs/`` under ``root``."""
    left = sorted(p.name for p in root.iterdir() if p.name not in keep)
    assert not [n for n in left if n.startswith(("out", "runs")) or n.endswith(".incomplete")], left


def run_args(out: Path, *overrides: str) -> list[str]:
    args = ["run", "--backend", "local", "--out", str(out)]
    for o in overrides:
        args += ["-c", o]
    return args


# --------------------------------------------------------------------------- config files
CONFIG_FILES = {
    "syntax": (b"[train\nlr = 1\n", "is not valid TOML"),
    "latin-1": ("[dataset]\nname = 'caf\xe9'\n".encode("latin-1"), "not UTF-8"),
    "utf-16": ("[train]\nlr = 0.1\n".encode("utf-16"), "not UTF-8"),
    "binary": (bytes(range(256)), "not UTF-8"),
    "array": (b"[train]\nlr = [1, 2]\n", "train.lr"),
    "table-for-scalar": (b"[train.lr]\nx = 1\n", "train.lr.x"),
    "array-of-tables": (b"[[train]]\nlr = 1\n", "'train'"),
    "datetime": (b"[train]\nlr = 1979-05-27T07:32:00Z\n", "train.lr"),
    "huge-int": (b"seed = 999999999999999999999999999\n", "'seed'"),
    "huge-int-digits": (b"seed = " + b"9" * 5000 + b"\n", "is not valid TOML"),
    "nan": (b"[train]\nlr = nan\n", "'train.lr': nan is not a finite number"),
    "inf": (b"[partition]\nalpha = inf\n", "'partition.alpha': inf is not a finite number"),
    "minus-inf": (b"[runtime]\ntimeout = -inf\n", "runtime.timeout"),
    "float-overflow": (b"[train]\nlr = 1e400\n", "train.lr"),
    "unknown-key": (b"[train]\nlrr = 0.1\n", "train.lrr"),
    "unknown-section": (b"[bogus]\nx = 1\n", "bogus.x"),
    "non-ascii-key": ('[train]\n"l\u00e9r" = 1\n'.encode(), "train.l\u00e9r"),
    "bool-for-int": (b"seed = true\n", "'seed'"),
    "string-for-number": (b"[train]\nlr = 'fast'\n", "'fast'"),
    "float-for-int": (b"num-server-rounds = 2.5\n", "num-server-rounds"),
    "bad-choice": (b"[runtime]\nbackend = 'k8s'\n", "allowed values: ray, local, deployment"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_FILES))
def test_bad_config_file(cli, tmp_path, case):
    data, culprit = CONFIG_FILES[case]
    path = tmp_path / "e.toml"
    path.write_bytes(data)
    line = one_line(cli("run", path, "--backend", "local", "--out", tmp_path / "out"), culprit)
    if "TOML" in culprit or "UTF-8" in culprit:
        assert str(path) in line
    nothing_written(tmp_path)


def test_config_path_is_a_directory_or_missing(cli, tmp_path):
    (tmp_path / "cfg").mkdir()
    one_line(cli("run", tmp_path / "cfg", "--out", tmp_path / "out"), "cfg", "is a directory")
    one_line(cli("run", tmp_path / "no.toml", "--out", tmp_path / "out"), "no.toml", "not exist")
    nothing_written(tmp_path, "cfg")


def test_empty_config_and_byte_order_mark_are_valid(tmp_path):
    """An empty TOML document is valid TOML (all defaults); a UTF-8 BOM is dropped."""
    (tmp_path / "empty.toml").write_bytes(b"")
    assert load_config(tmp_path / "empty.toml") == RunConfig()
    (tmp_path / "bom.toml").write_bytes(b"\xef\xbb\xbf[train]\nlr = 0.5\n")
    assert load_config(tmp_path / "bom.toml").train.lr == 0.5


# --------------------------------------------------------------------------- overrides
OVERRIDES = {
    "": "override ''",
    "=": "override '='",
    "key": "override 'key'",
    "=1": "empty key",
    "a.b.c.d=1": "a.b.c.d",
    "\u00e9=1": "'\u00e9'",
    "train.lr=[1]": "train.lr=[1]",
    "train.lr={a=1}": "train.lr={a=1}",
    "train.lr=": "'train.lr'",
    "train.lr=nan": "'train.lr': nan is not a finite number",
    "train.lr=inf": "'train.lr': inf is not a finite number",
    "train.lr=1e999": "train.lr",
    "seed=1e400": "'seed'",
    "seed=99999999999999999999": "'seed'",
    "seed=" + "9" * 5000: "'seed'",
    "partition.num-clients=1e20": "partition.num-clients",
    "output.plots=yes": "output.plots",
    "strategy.params.q=1": "strategy.params.q",
    "dataset.options=num_users=3": "num_users",
    "attack.kind=bogus": "attack.kind",
    "attack.kind=random": "attack.kind",
    "unlearning.requests={bad": "unlearning.requests",
    "partition.num-clients=50000": "50000",
    "partition.alpha=1e-300": "alpha=1e-300",
}


@pytest.mark.parametrize("override", sorted(OVERRIDES))
def test_bad_override(cli, tmp_path, override):
    line = one_line(cli(*run_args(tmp_path / "out", override)), OVERRIDES[override])
    assert len(line) < 600  # (a 5000-digit value is shortened)
    nothing_written(tmp_path)


# --------------------------------------------------------------------------- output paths
def test_out_is_an_existing_file(cli, tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("keep me")
    one_line(cli(*run_args(target)), str(target), "not a directory")
    assert target.read_text() == "keep me"
    assert not (tmp_path / "out.txt.incomplete").exists()
    with pytest.raises(ConfigError, match="not a directory"):
        import fedrec

        fedrec.run(None, backend="local", out=target)


def test_out_under_a_file(cli, tmp_path):
    (tmp_path / "afile").write_text("x")
    target = tmp_path / "afile" / "deeper" / "run"
    one_line(cli(*run_args(target)), str(target), f"'{tmp_path / 'afile'}' is not a directory")
    assert (tmp_path / "afile").read_text() == "x"


def test_out_not_empty(cli, tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.json").write_text("{}")
    one_line(cli(*run_args(target)), str(target), "not empty")
    assert [p.name for p in target.iterdir()] == ["old.json"]
    assert not (tmp_path / "out.incomplete").exists()


def test_out_not_writable(cli, tmp_path, monkeypatch):
    """A folder that may not be written (simulated: the tests may run as root)."""
    ro = tmp_path / "readonly"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p) != ro and real(p, mode, **kw))
    target = ro / "sub" / "run"
    one_line(cli(*run_args(target)), str(target), f"'{ro}' is not writable")
    assert list(ro.iterdir()) == []


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write anywhere"
)
def test_out_in_read_only_folder(cli, tmp_path):
    ro = tmp_path / "readonly"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        one_line(cli(*run_args(ro / "run")), str(ro / "run"), "not writable")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_out_odd_paths(cli, tmp_path, monkeypatch):
    (tmp_path / "out.incomplete").write_text("a file where the staging folder goes")
    one_line(cli(*run_args(tmp_path / "out")), "out.incomplete", "not a directory")
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    one_line(cli(*run_args(Path("."))), "'.'", "must name a new folder")
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    one_line(cli(*run_args(tmp_path / "link")), "link", "symbolic link")
    assert list(empty.iterdir()) == [] and list((tmp_path / "real").iterdir()) == []


def test_check_out_dir_accepts_new_and_empty_folders(tmp_path):
    check_out_dir(tmp_path / "new" / "deep" / "run")  # created later, by the run
    (tmp_path / "empty").mkdir()
    check_out_dir(tmp_path / "empty")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]
    with pytest.raises(ConfigError, match="NUL byte"):
        check_out_dir(str(tmp_path / "nul\0byte"))


def test_compare_out_is_a_file(cli, tmp_path):
    (tmp_path / "cmp").write_text("x")
    one_line(cli("compare", "--strategies", "fedavg", "--out", tmp_path / "cmp"), "cmp")


# --------------------------------------------------------------------------- plugins
PLUGIN_MODULES = {
    "hostile_broken_import": "import fedrec_no_such_dependency\nclass S: pass\n",
    "hostile_syntax": "def f(:\n",
    "hostile_raises": "raise RuntimeError('boom at import')\n",
    "hostile_ok": "class NotAPlugin:\n    pass\nvalue = 3\n",
}
PLUGIN_CASES = {
    "nonexistent": "nonexistent",
    "hostile_missing_module:Class": "hostile_missing_module",
    "hostile_broken_import:S": "hostile_broken_import",
    "hostile_syntax:S": "hostile_syntax",
    "hostile_raises:S": "hostile_raises",
    "hostile_ok:Missing": "Missing",
    "hostile_ok:NotAPlugin": "hostile_ok:NotAPlugin",
    "hostile_ok:value": "hostile_ok:value",
    "pkg.mod:": "pkg.mod:",
    "a:b:c": "a:b:c",
}


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    d = tmp_path / "plugins"
    d.mkdir()
    for name, code in PLUGIN_MODULES.items():
        (d / f"{name}.py").write_text(code)
    monkeypatch.syspath_prepend(str(d))
    yield d
    for name in PLUGIN_MODULES:
        sys.modules.pop(name, None)


@pytest.mark.parametrize("key", ["strategy.name", "attack.kind", "unlearning.method"])
@pytest.mark.parametrize("name", sorted(PLUGIN_CASES))
def test_bad_plugin(cli, tmp_path, plugin_dir, key, name):
    one_line(cli(*run_args(tmp_path / "out", f"{key}={name}")), PLUGIN_CASES[name])
    nothing_written(tmp_path, "plugins")


# --------------------------------------------------------------------------- data files
@pytest.fixture
def data_env(tmp_path, monkeypatch):
    """A private FEDREC_DATA_DIR / cache, no network, fresh caches. ``copy(dirname, files)``
    copies real files from the shared data folder (skips when it is not there)."""
    from fedrec import tasks
    from fedrec.recsys.data import user_data

    def no_network(url, dest, desc):
        raise urllib.error.URLError("network disabled in tests")

    def fresh():
        clear_cache()
        sources._clear_memo()
        user_data.cache_clear()
        tasks._partitions.cache_clear()

    root = tmp_path / "data"
    monkeypatch.setattr(sources, "_fetch_url", no_network)
    monkeypatch.setenv("FEDREC_DATA_DIR", str(root))
    monkeypatch.setenv("FEDREC_CACHE_DIR", str(tmp_path / "cache"))
    fresh()

    def copy(dirname: str, files: list[str]) -> Path:
        if not all((SHARED / dirname / f).is_file() for f in files):
            pytest.skip(f"FEDREC_DATA_DIR with {dirname}/ not available")
        (root / dirname).mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copyfile(SHARED / dirname / f, root / dirname / f)
        return root / dirname

    yield copy
    fresh()


MUTATIONS = {
    "truncated": lambda b: b[: len(b) // 2],
    "flipped-byte": lambda b: b[:100] + bytes([b[100] ^ 0xFF]) + b[101:],
    "empty": lambda b: b"",
    "utf-16": lambda b: b.decode("latin-1").encode("utf-16"),
    "extra-column": lambda b: b.replace(b"\n", b"\t7\n", 1).replace(b",", b",7,", 1),
}
DATASETS = {  # name: (folder, the files the loader reads, the file to damage, run overrides)
    "adult": ("adult", ["adult.data", "adult.test"], "adult.test", ["dataset.name=adult"]),
    "ml-100k": (
        "ml-100k",
        ["u.data", "u.user", "u.item"],
        "u.data",
        ["dataset.name=ml-100k", "strategy.name=fedmf"],
    ),
    "lastfm": (
        "hetrec2011-lastfm-2k",
        ["user_artists.dat"],
        "user_artists.dat",
        ["dataset.name=lastfm", "strategy.name=fedmf"],
    ),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
@pytest.mark.parametrize("name", sorted(DATASETS))
def test_damaged_data_file(cli, tmp_path, data_env, name, mutation):
    folder, files, victim, overrides = DATASETS[name]
    path = data_env(folder, files) / victim
    path.write_bytes(MUTATIONS[mutation](path.read_bytes()))
    one_line(cli("data", "verify", name), str(path), "sha256")
    one_line(cli(*run_args(tmp_path / "out", *overrides)), str(path), "sha256")
    nothing_written(tmp_path, "data")


def test_missing_download_only_file(cli, tmp_path, data_env):
    data_env("ml-100k", ["u.data", "u.item"])  # no u.user, no network
    one_line(cli("data", "verify", "ml-100k"), "ml-100k", "FEDREC_DATA_DIR")
    one_line(cli(*run_args(tmp_path / "out", *DATASETS["ml-100k"][3])), "could not download")
    nothing_written(tmp_path, "data", "cache")
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]  # no partial file


def test_missing_adult_file_falls_back_to_the_verified_bundle(data_env):
    data_env("adult", ["adult.data"])  # adult.test only in the package
    files = sources.resolve_files("adult")
    assert files["adult.test"] == sources.bundled_dir() / "adult.test.xz"


@pytest.mark.parametrize(
    "damage, culprit",
    [
        (lambda b: b[:1000], "could not be decompressed"),
        (lambda b: b"", "could not be decompressed"),
        (lambda b: b"not xz", "could not be decompressed"),
        (lambda b: lzma.compress(b"39, State-gov\n"), "sha256"),
    ],
)
def test_damaged_bundled_file(cli, tmp_path, data_env, monkeypatch, damage, culprit):
    monkeypatch.delenv("FEDREC_DATA_DIR")
    bundle = tmp_path / "bundled"
    shutil.copytree(sources.bundled_dir(), bundle)
    monkeypatch.setattr(sources, "_BUNDLED_DIR", bundle)
    victim = bundle / "adult.data.xz"
    victim.write_bytes(damage(victim.read_bytes()))
    one_line(cli("data", "verify", "adult"), "adult.data.xz", culprit)
    one_line(cli(*run_args(tmp_path / "out")), "adult.data.xz", culprit)
    nothing_written(tmp_path, "bundled")


def test_import_damaged_zip_and_unwritable_cache(cli, tmp_path, data_env, monkeypatch):
    src = data_env("ml-100k", ["u.data", "u.user", "u.item"])
    good = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(good, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for f in ("u.data", "u.user", "u.item"):
            zf.write(src / f, f"ml-100k/{f}")
    blob = bytearray(good.read_bytes())
    blob[3000] ^= 0xFF  # inside u.data's compressed bytes
    (tmp_path / "crc.zip").write_bytes(bytes(blob))
    one_line(cli("data", "import", "ml-100k", tmp_path / "crc.zip"), "crc.zip", "damaged zip")
    (tmp_path / "cut.zip").write_bytes(bytes(blob[: len(blob) // 2]))
    one_line(cli("data", "import", "ml-100k", tmp_path / "cut.zip"), "cut.zip")
    one_line(cli("data", "import", "ml-100k", tmp_path / "nope"), "nope", "does not exist")
    assert not (tmp_path / "cache").exists()
    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv("FEDREC_CACHE_DIR", str(tmp_path / "afile" / "cache"))
    one_line(cli("data", "import", "ml-100k", good), "afile", "FEDREC_CACHE_DIR")
    monkeypatch.delenv("FEDREC_DATA_DIR")
    one_line(cli("data", "verify", "ml-100k"), "afile", "FEDREC_CACHE_DIR")


def test_unlearn_damaged_run_folder(cli, tmp_path):
    run = tmp_path / "run"
    (run / "client_state").mkdir(parents=True)
    (run / "checkpoint.npz").write_bytes(b"")
    request = tmp_path / "req.toml"
    request.write_text('[[request]]\nkind = "users"\nusers = [1]\n')
    for config in (b"{not json", b"[1, 2]", b"\xff\xfe\x00"):
        (run / "config.json").write_bytes(config)
        one_line(cli("unlearn", run, "--request", request, "--out", tmp_path / "o"), str(run))
    (run / "config.json").write_text("{}")
    request.write_bytes('[[request]]\nkind = "users"\nname = "caf\xe9"\n'.encode("latin-1"))
    one_line(cli("unlearn", run, "--request", request, "--out", tmp_path / "o"), "req.toml")
    assert not (tmp_path / "o").exists()


def _bundled(fname: str) -> bytes:
    return lzma.decompress((sources.bundled_dir() / f"{fname}.xz").read_bytes())


def _head(data: bytes, lines: int = 150) -> bytes:
    return b"".join(data.splitlines(keepends=True)[:lines])


PARSERS = {
    "adult": lambda b: tabular.parse_adult(b, _head(_bundled("adult.test"), 20)),
    "german": tabular.parse_german,
    "bank": tabular.parse_bank,
    "drug-consumption": tabular.parse_drug_consumption,
    "compas": tabular.parse_compas,
    "ml-100k u.user": lambda b: recsys.parse_ml100k(
        (FIXTURES / "ml-100k/u.data.fixture").read_bytes(),
        b,
        (FIXTURES / "ml-100k/u.item.fixture").read_bytes(),
    ),
    "ml-100k u.item": lambda b: recsys.parse_ml100k(
        (FIXTURES / "ml-100k/u.data.fixture").read_bytes(),
        (FIXTURES / "ml-100k/u.user.fixture").read_bytes(),
        b,
    ),
    "lastfm": recsys.parse_lastfm,
}
PARSER_INPUT = {
    "adult": lambda: _head(_bundled("adult.data")),
    "german": lambda: _head(_bundled("german.data")),
    "bank": lambda: _head(_bundled("bank-full.csv")),
    "drug-consumption": lambda: _head(_bundled("drug_consumption.data")),
    "compas": lambda: (FIXTURES / "compas/compas-scores-two-years.csv.fixture").read_bytes(),
    "ml-100k u.user": lambda: (FIXTURES / "ml-100k/u.user.fixture").read_bytes(),
    "ml-100k u.item": lambda: (FIXTURES / "ml-100k/u.item.fixture").read_bytes(),
    "lastfm": lambda: (FIXTURES / "hetrec2011-lastfm-2k/user_artists.dat.fixture").read_bytes(),
}


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_parsers_raise_data_errors_only(name):
    """The raw-file parsers (reached with bytes that passed no checksum: fixtures, the API)
    turn truncation, stray bytes, a wrong encoding or a wrong field count into DataError."""
    base = PARSER_INPUT[name]()
    parse = PARSERS[name]

    @PROPS
    @given(
        cut=st.integers(0, len(base)),
        at=st.integers(0, len(base)),
        junk=st.sampled_from(
            [b"", b"\xe9", b"\xff\xfe", b"abc", b",", b";", b"\t", b"|", b"\n", b" 1e999 ", b"\x00"]
        ),
        encode=st.sampled_from([None, "utf-16", "latin-1"]),
    )
    def check(cut, at, junk, encode):
        data = (base[:at] + junk + base[at:])[: cut + len(junk)]
        if encode:
            data = data.decode("latin-1").encode(encode)
        try:
            parse(data)
        except DataError:
            pass

    check()
    with pytest.raises(DataError, match=name.split()[0]):
        parse(b"\xff")


@pytest.mark.parametrize(
    "options, culprit",
    [
        ({"num_users": "abc"}, "num_users"),
        ({"num_users": 1.5}, "num_users"),
        ({"attr_strength": float("nan")}, "attr_strength"),
        ({"popularity_skew": "inf"}, "popularity_skew"),
        ({"seed": -1}, "seed=-1"),
        ({"num_users": 2**70}, "num_users"),
        ({"bogus": 1}, "allowed: num_users"),
    ],
)
def test_bad_dataset_options(options, culprit):
    with pytest.raises(DataError, match=culprit):
        load_dataset("synthetic-rec", **options)


# --------------------------------------------------------------------------- partitioners
@PROPS
@given(
    n=st.integers(0, 200),
    k=st.integers(-1, 210),
    alpha=st.one_of(
        st.floats(allow_nan=True, allow_infinity=True), st.floats(1e-300, 1e-2), st.floats(1, 1e300)
    ),
    min_size=st.integers(0, 30),
    min_per_value=st.integers(0, 3),
    classes=st.integers(1, 4),
    seed=st.integers(0, 2**63 - 1),
    scheme=st.sampled_from(["iid", "dirichlet-label", "dirichlet-sensitive", "heterogeneous"]),
    gamma=st.tuples(st.floats(-0.5, 1.5), st.floats(-0.5, 1.5)),
)
def test_partitions_cover_every_row_once_or_raise(
    n, k, alpha, min_size, min_per_value, classes, seed, scheme, gamma
):
    rng = np.random.default_rng(n)
    labels = rng.integers(0, 2 if scheme == "heterogeneous" else classes, n)
    groups = rng.integers(0, 2, n)
    kw = dict(
        n=n,
        num_partitions=k,
        seed=seed,
        labels=labels,
        groups=groups,
        alpha=alpha,
        min_partition_size=min_size,
        min_per_value=min_per_value,
        gamma_min=gamma[0],
        gamma_max=gamma[1],
    )
    try:
        parts = make_partitions(scheme, **kw)
    except DataError as exc:
        assert "\n" not in str(exc)
        return
    assert len(parts) == k
    rows = np.concatenate(parts)
    assert rows.dtype == np.int64 and np.array_equal(np.sort(rows), np.arange(n))
    assert all(np.all(np.diff(p) > 0) for p in parts)  # sorted, no duplicate
    if scheme.startswith("dirichlet"):
        assert min(map(len, parts)) >= min_size
    again = make_partitions(scheme, **kw)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


@pytest.mark.parametrize(
    "call, culprit",
    [
        (lambda: iid_partition(5, 6, 0), "allowed: 1..5"),
        (lambda: iid_partition(5, 0, 0), "num_partitions"),
        (lambda: iid_partition(5, 2, -1), "seed"),
        (lambda: iid_partition(5, 2, 1.5), "seed"),
        (lambda: dirichlet_partition(np.zeros(50), 2, math.inf, 0), "alpha must be a finite"),
        (lambda: dirichlet_partition(np.zeros(50), 2, math.nan, 0), "alpha"),
        (lambda: dirichlet_partition(np.zeros(50), 2, 0.5, 0, min_partition_size=26), "min"),
        (lambda: train_test_split_indices(np.arange(5), math.nan, 0), "test_fraction"),
        (lambda: make_partitions("zipf", n=5, num_partitions=2, seed=0), "allowed: iid"),
    ],
)
def test_infeasible_partitions(call, culprit):
    with pytest.raises(DataError, match=culprit):
        call()


# --------------------------------------------------------------------------- config properties
KEYS = all_keys()
SCALARS = st.one_of(
    st.integers(),
    st.integers(INT_MIN - 5, INT_MIN + 5) | st.integers(INT_MAX - 5, INT_MAX + 5),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=12),
    st.sampled_from(["true", "False", "1", "0.5", "nan", "-inf", "1e999", "", " "]),
)


def _value(key: str):
    d = KEYS[key]
    pool = [d["default"]] + list(d["choices"] or [])
    return st.one_of(st.sampled_from(pool), SCALARS)


@st.composite
def flat_configs(draw):
    keys = draw(st.lists(st.sampled_from(sorted(KEYS)), max_size=8, unique=True))
    flat = {k: draw(_value(k)) for k in keys}
    if draw(st.booleans()):
        flat[draw(st.sampled_from(["bogus", "train.bogus", "strategy.params.x", "a.b.c.d"]))] = 1
    return flat


@PROPS
@given(flat=flat_configs())
def test_validate_returns_a_config_or_raises_config_error(flat):
    try:
        cfg = validate(flat)
    except ConfigError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 400
        return
    assert validate(cfg.to_flat()) == cfg  # round trip
    assert cfg.replace() == cfg
    flat2 = cfg.to_flat()
    for k, v in flat2.items():
        if isinstance(v, float):
            assert math.isfinite(v), k
        elif isinstance(v, int) and not isinstance(v, bool):
            assert INT_MIN <= v <= INT_MAX, k


@PROPS
@given(text=st.text(max_size=40))
def test_parse_override_raises_config_error_only(text):
    try:
        k, v = parse_override(text)
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return
    assert k and k == k.strip() and not isinstance(v, (list, dict))


TOML_VALUES = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True).map(repr),
    st.sampled_from(
        [
            "true",
            "'text'",
            '"caf\\u00e9"',
            "1979-05-27T07:32:00Z",
            "1979-05-27T07:32:00",
            "1979-05-27",
            "07:32:00",
            "[1, 2]",
            "[]",
            "{a = 1}",
            "0x1F",
            "1_000",
            "+inf",
            "-nan",
        ]
    ),
)


@PROPS
@given(key=st.sampled_from(sorted(KEYS)), raw=TOML_VALUES)
def test_toml_values_of_every_type(tmp_path_factory, key, raw):
    section, _, name = key.rpartition(".")
    text = f'[{section}]\n"{name}" = {raw}\n' if section else f'"{name}" = {raw}\n'
    path = tmp_path_factory.mktemp("toml") / "e.toml"
    path.write_text(text)
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return
    value = cfg.to_flat()[key]
    assert isinstance(value, (int, float, bool, str))
    try:  # the override path reads the same TOML value the same way
        assert validate({key: parse_override(f"{key}={raw}")[1]}) == cfg
    except ConfigError:
        pytest.fail(f"{key} = {raw} is valid in a file but not as an override")


@PROPS
@given(data=st.binary(max_size=200))
def test_load_toml_on_arbitrary_bytes(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("bytes") / "e.toml"
    path.write_bytes(data)
    try:
        flat = load_toml(path)
    except ConfigError:
        return
    assert all(isinstance(v, (int, float, bool, str)) for v in flat.values())


@PROPS
@given(
    typ=st.sampled_from([int, float, bool, str]),
    value=st.one_of(
        SCALARS, st.none(), st.lists(st.integers(), max_size=2), st.just(10**400), st.just(b"1")
    ),
)
def test_coerce_gives_the_type_or_config_error(typ, value):
    try:
        out = coerce("k", value, typ)
    except ConfigError as exc:
        assert "'k'" in str(exc) and len(str(exc)) < 300
        return
    assert type(out) is typ
    if typ is float:
        assert math.isfinite(out)
    if typ is int:
        assert INT_MIN <= out <= INT_MAX


def test_validate_rejects_non_string_keys():
    with pytest.raises(ConfigError, match="not a string"):
        validate({1: 2})
    with pytest.raises(ConfigError, match="not a string"):
        validate({None: 2, "seed": 1})


def test_toml_int_and_override_agree_on_hex():
    """TOML spellings (hex, underscores) mean the same in a file and in ``-c``."""
    assert parse_override("seed=0x10") == ("seed", 16)
    assert tomllib.loads("v = 1_000")["v"] == parse_override("x=1_000")[1]


def test_fedrec_error_is_always_printed_on_one_line(cli, monkeypatch):
    import fedrec.runner

    def boom(*a, **kw):
        raise FedrecError("first line\nsecond line")

    monkeypatch.setattr(fedrec.runner, "run", boom)
    assert one_line(cli("run")) == "fedrec: error: first line second line"
