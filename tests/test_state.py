"""Columnar client state (fedrec.state) and columnar replies (fedrec.protocol)."""

import numpy as np
import pytest

from fedrec import protocol
from fedrec.state import StateStore


def _roundtrip(store: StateStore) -> StateStore:
    return StateStore.from_arrays({k: v.copy() for k, v in store.to_arrays().items()})


def test_state_store_load_save_clear_and_roundtrip():
    store = StateStore()
    st = store.cohort([5, 2, 9])
    assert sorted(st) == [2, 5, 9] and st.load(2) == {}
    st[2]["P"] = np.ones((3, 4), np.float32)
    st[5]["P"] = np.zeros((1, 4), np.float32)
    st[5]["version"] = 7
    assert st.load(5)["version"] == 7  # reads see pending writes
    assert "P" not in st[9]
    assert st.commit()
    store = _roundtrip(store)
    assert set(store.columns) == {"P", "version"}
    col = store.columns["P"]
    assert col.clients.tolist() == [2, 5] and col.indptr.tolist() == [0, 3, 4]
    assert store.load(5)["version"].shape == () and int(store.load(5)["version"]) == 7
    np.testing.assert_array_equal(store.load(2)["P"], np.ones((3, 4)))
    st = store.cohort([2, 5])
    st.clear(2)
    st.save(5, {"P": np.full((2, 4), 3.0, np.float32)})  # drops 'version' of 5
    st.commit()
    assert store.clients() == [5] and "version" not in store.columns
    np.testing.assert_array_equal(store.load(5)["P"], np.full((2, 4), 3.0))
    assert not store.cohort([5]).commit()  # nothing changed, nothing to write


def test_columnar_fast_path_equals_per_client_writes():
    rng = np.random.default_rng(0)
    rows = {c: rng.normal(size=(c % 3 + 1, 2)) for c in range(6)}
    a, b = StateStore(), StateStore()
    sa = a.cohort(range(6))
    for c, v in rows.items():
        sa[c]["E"] = v
    sa.commit()
    sb = b.cohort(range(6))
    vals = np.concatenate([rows[c] for c in range(6)])
    indptr = np.concatenate([[0], np.cumsum([len(rows[c]) for c in range(6)])])
    sb.set_column("E", vals, indptr)
    np.testing.assert_array_equal(sb[4]["E"], rows[4])  # pending column reads per client
    sb.commit()
    for c in range(6):
        np.testing.assert_array_equal(a.load(c)["E"], b.load(c)["E"])
    # a sub-cohort reads and writes only its own rows
    sub = a.cohort([1, 4])
    v, p = sub.column("E")
    np.testing.assert_array_equal(v, np.concatenate([rows[1], rows[4]]))
    sub.set_column("E", v + 1, p)
    sub.commit()
    np.testing.assert_array_equal(a.load(4)["E"], rows[4] + 1)
    np.testing.assert_array_equal(a.load(0)["E"], rows[0])
    with pytest.raises(ValueError, match="indptr"):
        sub.set_column("E", v, [0, 1])
    assert a.cohort([0]).column("missing") is None


def test_pack_unpack_replies_roundtrip():
    results = {
        3: (
            [np.arange(3), np.ones((3, 2), np.float32), np.float64(2.5)],
            {"num-examples": 3, "loss": 0.5, "pu.ndcg": [0.1, -1.0], "topk": np.arange(4)},
        ),
        1: (None, {"num-examples": 1, "loss": 1, "topk": np.arange(2)}),
        7: (
            [np.arange(0), np.zeros((0, 2), np.float32), np.float64(1.0)],
            {"num-examples": 0, "loss": 0.0, "pu.ndcg": []},
        ),
    }
    cols = protocol.pack_replies(results)
    assert all(isinstance(v, np.ndarray) for v in cols.values())
    out = {c: (w, m) for c, w, m in protocol.unpack_replies(cols)}
    assert list(out) == [1, 3, 7]
    assert out[1][0] is None
    w3 = out[3][0]
    np.testing.assert_array_equal(w3[0], np.arange(3))
    assert w3[1].dtype == np.float32 and w3[1].shape == (3, 2) and w3[2].shape == ()
    assert out[7][0][1].shape == (0, 2)
    m3 = out[3][1]
    assert m3["num-examples"] == 3 and isinstance(m3["num-examples"], int)
    assert isinstance(m3["loss"], float) and out[1][1]["loss"] == 1.0
    np.testing.assert_array_equal(m3["pu.ndcg"], [0.1, -1.0])
    assert "pu.ndcg" not in out[1][1] and len(out[7][1]["pu.ndcg"]) == 0
    assert out[3][1]["topk"].dtype.kind == "i"
    with pytest.raises(ValueError, match="scalar for some"):
        protocol.pack_replies({0: (None, {"x": 1}), 1: (None, {"x": [1]})})
