"""Tests of fedrec.data: sources, loaders, registry and partitioners (offline).

Tests that read the real, non-redistributable copies use ``FEDREC_DATA_DIR`` and skip
when it is unset or lacks the dataset directory.
"""

from __future__ import annotations

import json
import lzma
import os
import re
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest

from fedrec.data import (
    DATASETS,
    RecDataset,
    TabularDataset,
    cache_dir,
    clear_cache,
    dirichlet_partition,
    get_dataset_info,
    iid_partition,
    import_dataset,
    list_datasets,
    load_dataset,
    make_partitions,
    natural_partition,
    partition_report,
    recsys,
    resolve_files,
    sources,
    synthetic_recommendation,
    tabular,
    train_test_split_indices,
)
from fedrec.errors import ChecksumError, DataError, FedrecError

FIXTURES = Path(__file__).parent / "fixtures"
REAL_DIR = os.environ.get("FEDREC_DATA_DIR")


def real_dir(dirname: str) -> Path:
    if not REAL_DIR or not (Path(REAL_DIR) / dirname).is_dir():
        pytest.skip(f"FEDREC_DATA_DIR unset or without {dirname}/")
    return Path(REAL_DIR)


@pytest.fixture(autouse=True)
def _fresh_caches():
    clear_cache()
    sources._clear_memo()
    yield
    clear_cache()
    sources._clear_memo()


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No FEDREC_DATA_DIR, an empty cache dir, and any download attempt fails."""
    monkeypatch.delenv("FEDREC_DATA_DIR", raising=False)
    monkeypatch.setenv("FEDREC_CACHE_DIR", str(tmp_path / "cache"))

    def no_network(url, dest, desc):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(sources, "_fetch_url", no_network)
    return tmp_path / "cache"


def bundled_bytes(fname: str) -> bytes:
    return lzma.decompress((sources.bundled_dir() / f"{fname}.xz").read_bytes())


# --------------------------------------------------------------------------- sources


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDREC_CACHE_DIR", str(tmp_path / "a"))
    assert cache_dir() == tmp_path / "a"
    monkeypatch.delenv("FEDREC_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x" / "fedrec"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "fedrec"


def test_bundled_adult_offline(offline):
    paths = resolve_files("adult")
    assert {p.name for p in paths.values()} == {"adult.data.xz", "adult.test.xz"}
    ds = load_dataset("adult")
    assert isinstance(ds, TabularDataset)
    assert ds.X.shape[0] == len(ds.y) == len(ds.a) == 45_222
    assert ds.X.dtype == np.float32 and ds.y.dtype == np.int64 and ds.a.dtype == np.int64
    assert ds.class_names == ["<=50K", ">50K"] and ds.group_names == ["Male", "Female"]
    assert ds.num_classes == 2 and ds.num_groups == 2 and ds.num_features == len(ds.feature_names)
    assert "fnlwgt" not in ds.feature_names and "sex=Female" in ds.feature_names
    assert np.abs(ds.X[:, ds.feature_names.index("age")].mean()) < 1e-4
    assert np.bincount(ds.y).tolist() == [34_014, 11_208]
    assert not offline.exists() or not any(offline.rglob("*"))  # nothing downloaded
    race = load_dataset("adult", sensitive="race")
    assert race.group_names == ["White", "non-White"] and race.a.sum() == 6_319
    assert load_dataset("adult") is ds  # in-process cache
    with pytest.raises(ValueError):
        ds.X[0, 0] = 1.0  # cached arrays are read-only


def test_bundled_sha_is_of_decompressed_bytes(offline, monkeypatch, tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    tampered = bundled_bytes("german.data").replace(b"A11", b"A12", 1)
    (bundle / "german.data.xz").write_bytes(lzma.compress(tampered))
    monkeypatch.setattr(sources, "_BUNDLED_DIR", bundle)
    with pytest.raises(ChecksumError, match=r"german\.data"):
        load_dataset("german")


def test_corrupted_file_in_data_dir(monkeypatch, tmp_path):
    data_dir = tmp_path / "data"
    (data_dir / "german").mkdir(parents=True)
    bad = data_dir / "german" / "german.data"
    bad.write_bytes(bundled_bytes("german.data")[:-10] + b"corrupted\n")
    monkeypatch.setenv("FEDREC_DATA_DIR", str(data_dir))
    monkeypatch.setenv("FEDREC_CACHE_DIR", str(tmp_path / "cache"))
    expected = sources.SOURCES["german"].files["german.data"]
    with pytest.raises(ChecksumError) as exc:
        resolve_files("german")
    msg = str(exc.value)
    assert "german.data" in msg and expected in msg and "\n" not in msg
    with pytest.raises(ChecksumError, match="german.data"):
        load_dataset("german")
    bad.write_bytes(bundled_bytes("german.data"))  # a good copy in FEDREC_DATA_DIR is used
    os.utime(bad, ns=(1, 1))
    assert resolve_files("german")["german.data"] == bad


def _fake_spec(name: str, sha: str, **kw) -> sources.SourceSpec:
    files = {"a.txt": sha, **kw.pop("extra_files", {})}
    return sources.SourceSpec(dirname=name, files=files, required=("a.txt",), **kw)


def test_download_verifies_and_renames(offline, monkeypatch, tmp_path):
    payload = b"hello fedrec\n"
    src = tmp_path / "remote.txt"
    src.write_bytes(payload)
    calls = []

    def fake_fetch(url, dest, desc):
        calls.append(url)
        Path(dest).write_bytes(src.read_bytes())

    monkeypatch.setattr(sources, "_fetch_url", fake_fetch)
    spec = _fake_spec(
        "fake", sources.sha256_bytes(payload), urls={"a.txt": "https://example.invalid/a.txt"}
    )
    monkeypatch.setitem(sources.SOURCES, "fake", spec)
    path = resolve_files("fake")["a.txt"]
    assert path == cache_dir() / "fake" / "a.txt" and path.read_bytes() == payload
    assert sources.read_bytes("fake", "a.txt") == payload
    assert len(calls) == 1  # second access hits the cache
    assert sorted(p.name for p in (cache_dir() / "fake").iterdir()) == ["a.txt"]

    bad = _fake_spec("fake-bad", "0" * 64, urls={"a.txt": "https://example.invalid/a.txt"})
    monkeypatch.setitem(sources.SOURCES, "fake-bad", bad)
    with pytest.raises(ChecksumError, match=r"a\.txt.*expected 0{64}"):
        resolve_files("fake-bad")
    left = cache_dir() / "fake-bad"
    assert not left.exists() or not any(left.iterdir())  # no partial file left behind


def test_download_zip_and_zip_checksum(offline, monkeypatch, tmp_path):
    payload = b"1\t2\t3\t4\n"
    zpath = tmp_path / "fake.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("fake/a.txt", payload)
        zf.writestr("fake/other.txt", b"x")
    monkeypatch.setattr(
        sources, "_fetch_url", lambda url, dest, desc: Path(dest).write_bytes(zpath.read_bytes())
    )
    zsha = sources.sha256_bytes(zpath.read_bytes())
    good = _fake_spec(
        "fz",
        sources.sha256_bytes(payload),
        zip_url="https://example.invalid/f.zip",
        zip_sha256=zsha,
    )
    monkeypatch.setitem(sources.SOURCES, "fz", good)
    assert resolve_files("fz")["a.txt"].read_bytes() == payload
    assert sorted(p.name for p in (cache_dir() / "fz").iterdir()) == ["a.txt"]

    bad = _fake_spec(
        "fzb",
        sources.sha256_bytes(payload),
        zip_url="https://example.invalid/f.zip",
        zip_sha256="1" * 64,
    )
    monkeypatch.setitem(sources.SOURCES, "fzb", bad)
    with pytest.raises(ChecksumError, match="f.zip"):
        resolve_files("fzb")
    left = cache_dir() / "fzb"
    assert not left.exists() or not any(left.iterdir())


def test_offline_download_error_is_one_helpful_line(offline):
    with pytest.raises(DataError) as exc:
        resolve_files("compas")
    msg = str(exc.value)
    assert "could not download compas from https://raw.githubusercontent.com/propublica" in msg
    assert "FEDREC_DATA_DIR" in msg and "fedrec data import compas PATH" in msg and "\n" not in msg
    with pytest.raises(
        DataError, match="could not download ml-100k from https://files.grouplens.org"
    ):
        load_dataset("ml-100k")


def test_import_dataset_dir_zip_and_errors(offline, monkeypatch, tmp_path):
    payload, extra = b"payload\n", b"extra\n"
    spec = _fake_spec(
        "fimp",
        sources.sha256_bytes(payload),
        extra_files={"b.txt": sources.sha256_bytes(extra), "c.txt": "2" * 64},
    )
    monkeypatch.setitem(sources.SOURCES, "fimp", spec)
    src = tmp_path / "src" / "fimp"  # files inside <dirname>/ are found too
    src.mkdir(parents=True)
    (src / "a.txt").write_bytes(payload)
    (src / "b.txt").write_bytes(extra)
    (src / "c.txt").write_bytes(b"does not match\n")
    with pytest.warns(UserWarning, match="c.txt"):
        out = import_dataset("fimp", tmp_path / "src")
    assert out == cache_dir() / "fimp"
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "b.txt"]
    assert resolve_files("fimp")["a.txt"] == out / "a.txt"

    zpath = tmp_path / "official.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("fimp/a.txt", payload)
    monkeypatch.setenv("FEDREC_CACHE_DIR", str(tmp_path / "cache2"))
    assert (import_dataset("fimp", zpath) / "a.txt").read_bytes() == payload

    (src / "a.txt").write_bytes(b"tampered\n")
    monkeypatch.setenv("FEDREC_CACHE_DIR", str(tmp_path / "cache3"))
    with pytest.raises(ChecksumError, match="a.txt"):
        import_dataset("fimp", src)
    assert not (tmp_path / "cache3" / "fimp" / "a.txt").exists()
    (src / "a.txt").unlink()
    with pytest.raises(DataError, match="missing a.txt"):
        import_dataset("fimp", src)
    with pytest.raises(DataError, match="does not exist"):
        import_dataset("fimp", tmp_path / "nope")
    with pytest.raises(DataError, match="unknown dataset 'nope'"):
        import_dataset("nope", src)
    with pytest.raises(DataError, match="generated"):
        import_dataset("synthetic-rec", src)


def test_import_real_ml100k(offline, monkeypatch):
    root = real_dir("ml-100k")
    out = import_dataset("ml-100k", root / "ml-100k")
    assert (out / "u.data").is_file() and out.parent == cache_dir()
    assert set(resolve_files("ml-100k")) == {"u.data", "u.user", "u.item"}


# --------------------------------------------------------------------------- registry


def test_registry_and_errors():
    names = [d.name for d in list_datasets()]
    assert names == list(DATASETS)
    assert {
        "adult",
        "compas",
        "german",
        "bank",
        "drug-consumption",
        "ml-100k",
        "lastfm",
        "synthetic-rec",
    } <= set(names)
    for info in list_datasets():
        assert info.kind in ("tabular", "recsys", "text")
        assert info.default_sensitive is None or info.default_sensitive in info.sensitive
        assert info.default_target is None or info.default_target in info.targets
    assert {d.name for d in list_datasets() if d.shipped and d.kind == "tabular"} == {
        "adult", "german", "bank", "drug-consumption",
    }  # fmt: skip
    assert get_dataset_info("bank-marketing").name == "bank"
    with pytest.raises(DataError, match=r"unknown dataset 'mnist'; allowed: .*adult.*ml-100k"):
        get_dataset_info("mnist")
    with pytest.raises(DataError, match="unknown dataset 'mnist'"):
        load_dataset("mnist")
    with pytest.raises(DataError, match=r"unknown sensitive attribute 'age'; allowed: sex, race"):
        load_dataset("adult", sensitive="age")
    with pytest.raises(DataError, match=r"unknown target 'heroine'; allowed: cannabis, alcohol"):
        load_dataset("drug-consumption", target="heroine")
    with pytest.raises(DataError, match=r"unknown option\(s\) bogus; allowed: num_users"):
        load_dataset("synthetic-rec", bogus=1)
    with pytest.raises(DataError, match="allowed: none"):
        load_dataset("ml-100k", target="rating")
    assert issubclass(ChecksumError, DataError) and issubclass(DataError, FedrecError)
    assert resolve_files("synthetic-rec") == {}


def test_no_flwr_import_in_data_layer():
    pkg = Path(sources.__file__).parent
    for f in pkg.glob("*.py"):
        assert not re.search(r"^\s*(import|from)\s+flwr\b", f.read_text(), re.MULTILINE), f.name


# --------------------------------------------------------------------------- tabular (bundled)


def test_bundled_tabular_sets(offline):
    g = load_dataset("german")
    assert (
        g.X.shape[0] == 1000
        and np.bincount(g.y).tolist() == [300, 700]
        and g.class_names == ["bad", "good"]
    )
    assert g.group_names == ["male", "female"] and g.a.sum() == 310  # A92 count
    ga = load_dataset("german", sensitive="age")
    assert ga.group_names == ["age>=25", "age<25"] and 0 < ga.a.sum() < 1000
    b = load_dataset("bank")
    assert b.X.shape[0] == 45_211 and int(b.y.sum()) == 5_289
    assert "duration" not in b.feature_names and "age" in b.feature_names
    d = load_dataset("drug-consumption")
    assert d.X.shape == (1885, 12) and d.num_classes == 7 and d.class_names[0] == "CL0"
    assert np.bincount(d.a).tolist() == [943, 942]
    assert load_dataset("drug-consumption", target="heroin").target == "heroin"
    assert load_dataset("drug-consumption", sensitive="ethnicity").a.sum() == 1885 - 1720


def test_drug_fixture_parser():
    data = (FIXTURES / "drug-consumption" / "drug_consumption.data").read_bytes()
    d = tabular.parse_drug_consumption(data)
    assert d.X.shape == (4, 12) and d.y.tolist() == [0, 4, 6, 2]
    assert d.a.tolist() == [1, 0, 0, 1]  # 0.48246 = female -> 1
    assert tabular.parse_drug_consumption(data, sensitive="ethnicity").a.tolist() == [1, 0, 0, 1]
    assert tabular.parse_drug_consumption(data, sensitive="age").a.tolist() == [0, 1, 0, 1]
    assert tabular.parse_drug_consumption(data, target="caff").y.tolist() == [6, 6, 6, 6]


def test_compas_fixture_parser():
    data = (FIXTURES / "compas" / "compas-scores-two-years.csv.fixture").read_bytes()
    c = tabular.parse_compas(data)
    assert len(c.y) == 4  # ids 1, 2, 3, 9 survive the ProPublica filter
    assert c.y.tolist() == [1, 0, 0, 1]
    assert c.a.tolist() == [1, 0, 0, 0] and c.group_names == ["other", "African-American"]
    assert tabular.parse_compas(data, sensitive="sex").a.tolist() == [0, 1, 0, 1]
    assert not any(
        n.split("=")[0] in {"name", "first", "last", "dob", "decile_score", "score_text"}
        for n in c.feature_names
    )
    assert "priors_count" in c.feature_names and "c_charge_degree=M" in c.feature_names


def test_compas_real():
    real_dir("compas")
    c = load_dataset("compas")
    assert c.X.shape[0] == 6_172 and int(c.a.sum()) == 3_175


# --------------------------------------------------------------------------- recsys


def test_ml100k_fixture_parser():
    f = FIXTURES / "ml-100k"
    ds = recsys.parse_ml100k(
        *[(f / f"{n}.fixture").read_bytes() for n in ("u.data", "u.user", "u.item")]
    )
    assert isinstance(ds, RecDataset)
    assert (ds.num_users, ds.num_items, len(ds.user)) == (4, 3, 6)
    assert ds.user.tolist() == [0, 1, 2, 0, 3, 1] and ds.item.tolist() == [1, 0, 2, 2, 1, 2]
    assert ds.rating.dtype == np.float32 and ds.rating.tolist() == [4, 3, 1, 5, 2, 4]
    assert ds.timestamp.dtype == np.int64 and ds.timestamp[0] == 881250949
    assert ds.user_attrs["gender"].tolist() == [0, 1, 0, 1]
    assert ds.user_attrs["age"].tolist() == [24, 53, 17, 56]
    assert ds.user_attrs["age_bucket"].tolist() == [1, 5, 0, 6]
    assert [ds.attr_names["occupation"][c] for c in ds.user_attrs["occupation"]] == [
        "technician",
        "other",
        "student",
        "writer",
    ]
    assert ds.item_titles[1] == "Cit\u00e9 des enfants perdus, La (1995)"  # latin-1
    assert ds.item_genres.shape == (3, 19) and ds.genre_names[8] == "Drama"
    assert ds.item_genres[1].nonzero()[0].tolist() == [8, 15]
    bad_data = (f / "u.data.fixture").read_bytes() + b"9\t1\t3\t1\n"
    with pytest.raises(DataError, match="missing from u.user"):
        recsys.parse_ml100k(
            bad_data, (f / "u.user.fixture").read_bytes(), (f / "u.item.fixture").read_bytes()
        )


def test_ml100k_real():
    real_dir("ml-100k")
    ds = load_dataset("ml-100k")
    assert (ds.num_users, ds.num_items, len(ds.user)) == (943, 1682, 100_000)
    assert np.bincount(ds.user_attrs["gender"]).tolist() == [670, 273]
    assert len(ds.attr_names["occupation"]) == 21
    assert ds.user.max() == 942 and ds.item.max() == 1681 and ds.user.min() == 0


def test_lastfm_fixture_and_real():
    data = (FIXTURES / "hetrec2011-lastfm-2k" / "user_artists.dat.fixture").read_bytes()
    ds = recsys.parse_lastfm(data)
    assert (ds.num_users, ds.num_items) == (3, 3)
    assert ds.user.tolist() == [0, 0, 1, 2] and ds.item.tolist() == [0, 1, 0, 2]
    assert ds.rating.tolist() == [1, 1, 1, 1] and ds.user_attrs == {}
    assert recsys.parse_lastfm(data, implicit=False).rating.tolist() == [13883, 11690, 100, 5]
    real_dir("hetrec2011-lastfm-2k")
    real = load_dataset("lastfm")
    assert (real.num_users, real.num_items, len(real.user)) == (1892, 17_632, 92_834)


def _attribute_auc(strength: float) -> float:
    sklearn = pytest.importorskip("sklearn")
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    del sklearn
    ds = synthetic_recommendation(
        num_users=600, num_items=200, interactions_per_user=30, attr_strength=strength, seed=3
    )
    counts = np.zeros((ds.num_users, ds.num_items))
    np.add.at(counts, (ds.user, ds.item), 1.0)
    g = ds.user_attrs["gender"]
    clf = LogisticRegression(C=0.1, max_iter=1000).fit(counts[:400], g[:400])
    return roc_auc_score(g[400:], clf.predict_proba(counts[400:])[:, 1])


def test_synthetic_attribute_is_recoverable():
    assert _attribute_auc(2.0) > 0.7
    assert abs(_attribute_auc(0.0) - 0.5) < 0.1


def test_synthetic_rec_properties():
    ds = load_dataset(
        "synthetic-rec", num_users=200, num_items=100, interactions_per_user=20, seed=1
    )
    assert ds.name == "synthetic-rec" and len(ds.user) == 200 * 20
    again = synthetic_recommendation(num_users=200, num_items=100, interactions_per_user=20, seed=1)
    assert np.array_equal(ds.item, again.item) and np.array_equal(ds.timestamp, again.timestamp)
    other = synthetic_recommendation(num_users=200, num_items=100, interactions_per_user=20, seed=2)
    assert not np.array_equal(ds.item, other.item)
    for u in range(5):  # distinct items, increasing timestamps per user
        m = ds.user == u
        assert len(np.unique(ds.item[m])) == 20 and np.all(np.diff(ds.timestamp[m]) > 0)

    def top_share(skew: float) -> float:
        d = synthetic_recommendation(
            num_users=300, num_items=200, popularity_skew=skew, attr_strength=0.0, seed=0
        )
        c = np.sort(np.bincount(d.item, minlength=200))[::-1]
        return c[:20].sum() / c.sum()

    assert top_share(1.5) > 0.4 > 0.2 > top_share(0.0)
    with pytest.raises(DataError, match="interactions_per_user"):
        synthetic_recommendation(num_items=10, interactions_per_user=11)


# --------------------------------------------------------------------------- partitions


def _check_cover(parts, n):
    allidx = np.concatenate(parts)
    assert allidx.dtype == np.int64 and len(allidx) == n
    assert np.array_equal(np.sort(allidx), np.arange(n))
    assert all(np.all(np.diff(p) > 0) for p in parts)


def test_iid_partition():
    parts = iid_partition(103, 10, seed=0)
    _check_cover(parts, 103)
    assert {len(p) for p in parts} == {10, 11}
    assert all(np.array_equal(a, b) for a, b in zip(parts, iid_partition(103, 10, seed=0)))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, iid_partition(103, 10, seed=1)))
    with pytest.raises(DataError, match="num_partitions"):
        iid_partition(5, 6, seed=0)


def test_dirichlet_partition():
    rng = np.random.default_rng(0)
    groups = (rng.random(4000) < 0.3).astype(np.int64)
    skewed = dirichlet_partition(groups, 10, alpha=0.1, seed=0, min_partition_size=1)
    _check_cover(skewed, 4000)
    again = dirichlet_partition(groups, 10, alpha=0.1, seed=0, min_partition_size=1)
    assert all(np.array_equal(a, b) for a, b in zip(skewed, again))
    flat = dirichlet_partition(groups, 10, alpha=1000.0, seed=0)
    _check_cover(flat, 4000)
    share = lambda parts: np.array([groups[p].mean() for p in parts])  # noqa: E731
    assert share(skewed).std() > 0.2 > 0.05 > share(flat).std()
    sizes = lambda parts: np.array([len(p) for p in parts])  # noqa: E731
    assert sizes(skewed).std() > sizes(flat).std() and sizes(flat).min() > 300
    assert (
        min(
            len(p)
            for p in dirichlet_partition(groups, 10, alpha=0.3, seed=0, min_partition_size=50)
        )
        >= 50
    )
    with pytest.raises(DataError, match=r"alpha=0\.5.*min_partition_size=60.*larger alpha"):
        dirichlet_partition(
            np.zeros(100, dtype=int), 10, alpha=0.5, seed=0, min_partition_size=60, max_attempts=5
        )


def test_natural_and_make_partitions():
    ids = np.array([5, 2, 5, 9, 2, 2])
    parts = natural_partition(ids)
    assert [p.tolist() for p in parts] == [[1, 4, 5], [0, 2], [3]]
    y = np.arange(60) % 3
    a = (np.arange(60) // 30).astype(np.int64)
    for scheme, kw in [
        ("iid", {}),
        ("dirichlet-label", {"labels": y}),
        ("dirichlet-sensitive", {"groups": a}),
    ]:
        p = make_partitions(scheme, n=60, num_partitions=3, seed=0, min_partition_size=2, **kw)
        _check_cover(p, 60)
    assert len(make_partitions("natural", n=6, num_partitions=3, seed=0, ids=ids)) == 3
    with pytest.raises(DataError, match="num_partitions=4"):
        make_partitions("natural", n=6, num_partitions=4, seed=0, ids=ids)
    with pytest.raises(
        DataError, match=r"unknown partition scheme 'shards'; allowed: iid, dirichlet-label"
    ):
        make_partitions("shards", n=60, num_partitions=3, seed=0)
    with pytest.raises(DataError, match="needs labels"):
        make_partitions("dirichlet-label", n=60, num_partitions=3, seed=0)


def test_train_test_split_and_report():
    idx = np.arange(10, 30, dtype=np.int64)
    tr, te = train_test_split_indices(idx, 0.25, seed=4)
    assert len(te) == 5 and np.array_equal(np.sort(np.concatenate([tr, te])), idx)
    tr2, te2 = train_test_split_indices(idx, 0.25, seed=4)
    assert np.array_equal(tr, tr2) and np.array_equal(te, te2)
    assert len(train_test_split_indices(idx[:2], 0.01, seed=0)[1]) == 1
    with pytest.raises(DataError, match="test_fraction"):
        train_test_split_indices(idx, 1.0, seed=0)

    rng = np.random.default_rng(1)
    y, a = rng.integers(0, 3, 500), rng.integers(0, 2, 500)
    parts = iid_partition(500, 4, seed=0)
    rep = partition_report(parts, y, a, num_classes=3, num_groups=2)
    json.dumps(rep)
    assert rep["num_partitions"] == 4 and sum(rep["sizes"]) == 500
    assert np.array(rep["counts"]).shape == (4, 3, 2) and np.array(rep["counts"]).sum() == 500
    assert rep["counts"][0][y[parts[0][0]]][a[parts[0][0]]] >= 1
    assert rep["size_min"] == 125 == rep["size_max"] and rep["size_mean"] == 125.0
    assert all(abs(sum(s) - 1) < 1e-9 for s in rep["group_share_per_partition"])
    assert isinstance(rep["counts"][0][0][0], int) and isinstance(rep["size_mean"], float)


def test_heterogeneous_split_covers_rows_and_varies_correlation():
    from fedrec.data.partition import heterogeneous_partition, make_partitions

    rng = np.random.default_rng(0)
    y, a = rng.integers(0, 2, 4000), rng.integers(0, 2, 4000)
    parts = heterogeneous_partition(y, a, 5, seed=3)
    allrows = np.concatenate(parts)
    assert len(allrows) == 4000 and len(np.unique(allrows)) == 4000
    corr = [np.corrcoef(y[p], a[p])[0, 1] for p in parts]
    assert max(corr) - min(corr) > 0.2  # clients differ in the A-Y correlation
    again = make_partitions("heterogeneous", n=4000, num_partitions=5, seed=3, labels=y, groups=a)
    assert all(np.array_equal(p, q) for p, q in zip(parts, again))
    with pytest.raises(DataError, match="binary"):
        heterogeneous_partition(np.full(10, 2), a[:10], 2, seed=0)
