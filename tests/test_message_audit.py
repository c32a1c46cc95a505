"""Message audit: what leaves a client, for every built-in strategy.

Every reply Message of a short run (local runtime) of each built-in strategy is recorded at
:meth:`fedrec.runtime.local.LocalGrid._deliver` (with the node's private state just before
and after), unpacked per logical client (:func:`fedrec.protocol.unpack_replies`) and checked:

(a) no array (reply array or array-valued metric) equals or contains, as a contiguous run,
    any of the client's raw data loaded through the loaders the clients use: feature rows,
    label / group vectors (:func:`fedrec.tasks.load_client_data`), interaction sequences and
    item sets, attribute vectors (:func:`fedrec.recsys.data.cfg_user_data`), tokenised
    documents (:func:`fedrec.lmtask.lm_task`). Needles carrying under 32 bits (a 5-user 0/1
    vector, a 3-item list) are skipped: a match could be chance.
(b) no array has a user-embedding shape (the client's users x the strategy's user dimension)
    and none contains a row of a user-level private state field (``P``, RAID's targets,
    LEGO's backup and calibrations), unless the allow-list declares it;
(c) every record, array slot (dtype kind and shape) and metric key (and shape) of a reply is
    in the strategy's allow-list :data:`ALLOW` (message type -> what its module docstring
    declares).

Anything else is a finding. :data:`KNOWN` pins the findings this audit made that no docstring
declares (reported, not fixed): the test fails if one disappears (update the entry) or a new
one appears.
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

import fedrec
from fedrec import protocol
from fedrec.config import validate
from fedrec.runtime import local as L

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

HELLO, STATE = protocol.HELLO, protocol.STATE_ACTION
MIN_BITS = 32  # a needle with less information could match by chance

# ------------------------------------------------------------------ the runs
_COMMON = {"output.plots": False, "output.progress": False}
_ADULT = {
    **_COMMON,
    "dataset.name": "adult",
    "dataset.test-fraction": 0.4,
    "partition.num-clients": 3,
    "partition.scheme": "dirichlet-sensitive",
    "partition.min-per-group": 20,
    "num-server-rounds": 1,
}
_REC_OPTIONS = "num_users=40,num_items=50"
_REC = {
    **_COMMON,
    "dataset.name": "synthetic-rec",
    "dataset.options": _REC_OPTIONS,
    "strategy.params.users-per-client": 5,
    "partition.num-clients": 8,
    "strategy.params.dim": 8,
    "num-server-rounds": 2,
    "train.lr": 0.5,
    "train.batch-size": 8,
    "runtime.num-nodes": 2,
}
_RAID = {
    **_REC,
    "strategy.name": "raid",
    "strategy.params.warmup-rounds": 1,
    "strategy.params.centroid-every": 1,
}
_LM = {
    **_COMMON,
    "dataset.name": "factworld",
    "dataset.options": "num_people=12",
    "model.name": "causal-lm",
    "model.params.d-model": 16,
    "model.params.n-layers": 1,
    "model.params.n-heads": 2,
    "partition.num-clients": 3,
    "partition.scheme": "iid",
    "train.optimizer": "adam",
    "train.lr": 0.01,
    "train.batch-size": 8,
    "num-server-rounds": 1,
}
#: LEGO's second attribute (the synthetic world has only gender); added for the run
_LEGO_EXTRA = {"age_bucket": ["a", "b", "c"]}

RUNS: dict[str, dict[str, Any]] = {
    "fedavg": {**_ADULT, "strategy.name": "fedavg", "num-server-rounds": 2},
    "fedfact-post": {**_ADULT, "strategy.name": "fedfact-post", "strategy.params.post-rounds": 1},
    "local-post": {**_ADULT, "strategy.name": "local-post", "strategy.params.post-rounds": 1},
    "fedfact-in": {**_ADULT, "strategy.name": "fedfact-in"},
    "fairfed": {**_ADULT, "strategy.name": "fairfed"},
    "fedfb": {**_ADULT, "strategy.name": "fedfb"},
    "fedmf": {**_REC, "strategy.name": "fedmf"},
    # positive control: the opt-in release must be seen (and is declared)
    "fedmf-release": {
        **_REC,
        "strategy.name": "fedmf",
        "strategy.params.release-embeddings": True,
        "num-server-rounds": 1,
    },
    "fedsasrec": {
        **_REC,
        "strategy.name": "fedsasrec",
        "strategy.params.max-len": 10,
        "strategy.params.num-heads": 2,
    },
    "fedgru4rec": {**_REC, "strategy.name": "fedgru4rec", "strategy.params.max-len": 10},
    "raid": _RAID,
    "raid-free-support": {**_RAID, "strategy.params.mode": "free-support"},
    "raid-adversarial": {**_RAID, "strategy.params.mode": "adversarial"},
    "lego": {
        **_REC,
        "strategy.name": "lego",
        "num-server-rounds": 1,
        "strategy.params.attributes": "gender,age_bucket",
        "strategy.params.eps": 0.5,
        "strategy.params.steps": 2,
        "strategy.params.n-phi": 1,
        "strategy.params.warmup-phi": 1,
        "strategy.params.hidden": 4,
        "strategy.params.combine-steps": 2,
        "strategy.params.consent-fraction": 0.8,
    },
    "fedlm": {**_LM, "strategy.name": "fedlm", "partition.scheme": "by-person"},
    "u2a": {
        **_LM,
        "strategy.name": "u2a",
        "dataset.options": "num_people=16",
        "strategy.params.align-rounds": 1,
        "strategy.params.align-steps": 1,
        "strategy.params.harmful-fraction": 0.5,
        "strategy.params.budget": 4,
        "strategy.fraction-evaluate": 1.0,
    },
    "bifair": {
        **_REC,
        "strategy.name": "bifair",
        "strategy.params.representation": "svd-pop",
        "strategy.params.repr-dim": 8,
        "strategy.params.hidden": 8,
        "strategy.params.outer-every": 1,
        "strategy.params.outer-batch": 32,
        "train.lr": 0.02,
    },
    "ufo": {
        **{k: v for k, v in _REC.items() if k != "strategy.params.dim"},
        "strategy.name": "ufo",
        "dataset.options": "num_users=40,num_items=30",
        "partition.num-clients": 4,
        "strategy.params.public-fraction": 0.5,
        "strategy.params.d-model": 8,
        "strategy.params.n-heads": 2,
        "strategy.params.n-layers": 1,
        "strategy.params.context": 6,
        "strategy.params.pretrain-epochs": 1,
        "strategy.params.sft-rounds": 1,
        "strategy.params.iterations": 1,
        "strategy.params.iteration-rounds": 1,
        "strategy.params.prompts-per-user": 2,
        "strategy.params.negatives": 2,
        "strategy.params.judge-tol": 0.0,
        "train.batch-size": 16,
        "train.lr": 0.01,
    },
}


# ------------------------------------------------------------------ the allow-list
@dataclass(frozen=True)
class R:
    """What one reply (one logical client) may carry: ``arrays`` (None = no arrays; a list of
    ``(dtype kind, shape)``; :data:`MODEL` / :data:`MODEL_TAIL` = the shapes of the global model
    the message carried / without its first array) and ``metrics`` (key or glob -> shape).
    Shape entries: ints, symbols (bound per client, or on first use) or expressions of them.
    ``embeddings``: the reply is declared to carry user embeddings."""

    arrays: Any = None
    metrics: dict[str, tuple | list[tuple]] = field(default_factory=dict)  # list: alternatives
    embeddings: bool = False
    arrays_optional: bool = False  # some replies of the type carry no arrays


MODEL, MODEL_TAIL = "model", "model[1:]"

CLF_HELLO = {
    "num-train": (),
    "num-test": (),
    "num-features": (),
    "num-classes": (),
    "num-groups": (),
    "train-counts": ("C*G",),  # label x group counts
    "test-counts": ("C*G",),
}
CLF_TRAIN = {"num-examples": (), "train-loss": ()}
CLF_EVAL = {  # (group, label, prediction) confusion counts of the test split
    "counts": ("G*C*C",),
    "loss-sum": (),
    "num-examples": (),
    "num-classes": (),
    "num-groups": (),
}
CLASSIFIER = {
    HELLO: R(None, CLF_HELLO),
    "train": R(MODEL, CLF_TRAIN),
    "evaluate": R(None, CLF_EVAL),
    STATE: R(),
}
FEDFACT_POST = {
    "query.fedfact_post": R(
        None,
        {
            "grad-lam": ("U",),
            "dual-value": (),
            "hess-lam": ("U*U",),
            "train-counts": ("G*C*C",),  # expected [a, y, yhat] counts on the train rows
            "mu-l1": (),
            "num-examples": (),
        },
    )
}
REC_HELLO = {"num-users": (), "num-items": (), "num-train": (), "num-test": ()}
RANKING = {"num-examples": (), "users": ("u",), "topk": ("u*20",), "pu.*": ("u",)}
ROWS = [("i", ("k",)), ("f", ("k", "d")), ("i", ("k",))]  # RowSparse: ids, row sums, counts
MF = {
    HELLO: R(None, REC_HELLO),
    "train": R(ROWS, {"num-examples": (), "train-loss": ()}),
    "evaluate": R(None, RANKING),
    STATE: R(),
}
SEQ = {
    **MF,
    # touched item ids, their example-weighted delta sums, the flat dense-delta sum
    "train": R([("i", ("k",)), ("f", ("k", "d")), ("f", ("dense",))], CLF_TRAIN),
}
RAID_COMMON = {**MF, "query.raid_validate": R(None, {"pu.ndcg@10": ("u",)})}
LM_HELLO = {"num-train": (), "num-facts": (), "num-test": (), "vocab": (), "context": ()}
LM_EVAL = {f"{s}-{w}": () for s in ("train", "forgot", "test") for w in ("nll-sum", "em", "n")}

ALLOW: dict[str, dict[str, R]] = {
    "fedavg": CLASSIFIER,
    "fedfact-post": {**CLASSIFIER, **FEDFACT_POST},
    "local-post": {**CLASSIFIER, **FEDFACT_POST},
    "fedfact-in": {
        **CLASSIFIER,
        "train": R(
            MODEL,
            {**CLF_TRAIN, "dg-values": ("U",), "w-ensemble": (), "mu-l1": (), "dl-mix-max": ()},
        ),
    },
    "fairfed": {
        **CLASSIFIER,
        "train": R(
            MODEL, {**CLF_TRAIN, "fairfed-counts": ("G*C*C",), "num-groups": (), "num-classes": ()}
        ),
    },
    "fedfb": {
        **CLASSIFIER,
        "train": R(MODEL, {**CLF_TRAIN, "weight-sum": ()}),
        "query.fedfb_losses": R(None, {"loss-sums": ("C*G",), "num-classes": (), "num-groups": ()}),
    },
    "fedmf": MF,
    "fedmf-release": {
        **MF,
        "query.fedmf_release": R([("i", ("n",)), ("f", ("n", "d"))], embeddings=True),
    },
    "fedsasrec": SEQ,
    "fedgru4rec": SEQ,
    "raid": {  # gaussian: per-group [count, sum e, sum e e^T]
        **RAID_COMMON,
        "query.raid_stats": R(
            [("f", ("A",)), ("f", ("A", "d")), ("f", ("A", "d", "d"))], {"num-examples": ()}
        ),
    },
    "raid-free-support": {  # per group k-means atoms: [group ids, atoms, masses]
        **RAID_COMMON,
        "query.raid_stats": R(
            [("i", ("m",)), ("f", ("m", "d")), ("f", ("m",))], {"num-examples": ()}
        ),
    },
    "raid-adversarial": {  # the adversary's summed CE gradients (flat), count, loss sum
        **RAID_COMMON,
        "query.raid_adv": R([("f", ("adv",))], {"num-examples": (), "loss-sum": ()}),
    },
    "lego": {
        **MF,
        "query.lego_prior": R(None, {"counts": ("K",), "num-examples": ()}),
        # per attribute: the estimators' gradient sums (one flat vector, empty when no user
        # consents), consenting count, loss sum; after an embedding step the vCLUB sums
        "query.lego_calibrate": R(
            [("f", ("flat",))],
            {"count": ("T",), "loss": ("T",), "mi": ("T",), "num-examples": ()},
            arrays_optional=True,
        ),
        # mode fit: as calibrate on U(alpha); mode grad: dJ/d alpha_tilde and vCLUB sums
        "query.lego_combine": R(
            [("f", ("flat",))],
            {
                "count": [("T",), ()],
                "loss": ("T",),
                "mi": ("T",),
                "g-alpha": ("T",),
                "num-examples": (),
            },
            arrays_optional=True,
        ),
        "query.lego_apply": R(),
    },
    "fedlm": {
        HELLO: R(None, LM_HELLO),
        "train": R(MODEL, CLF_TRAIN),
        "evaluate": R(None, LM_EVAL),
        STATE: R(),
    },
    "u2a": {
        HELLO: R(None, {**LM_HELLO, "num-negatives": ()}),
        "train": R(MODEL, CLF_TRAIN),
        "query.u2a_score": R(None, {"u2a-scores": ("negatives",)}),
        "evaluate": R(None, {**LM_EVAL, "gen-banned": (), "gen-n": (), "gen-refusal": ()}),
        STATE: R(),
    },
    "bifair": {
        HELLO: R(None, REC_HELLO),
        "train": R(MODEL_TAIL, CLF_TRAIN),  # the projector [W1, b1, W2, b2]
        "query.bifair_outer": R(  # Z rows (ids, hypergradient sums, counts), per item group
            # the last-layer gradient sums, loss sums and triple counts
            ROWS + [("f", ("Gi", "last")), ("f", ("Gi",)), ("f", ("Gi",))],
            {"num-examples": (), "val-loss": ()},
        ),
        "evaluate": R(None, RANKING),
        STATE: R(),
    },
    "ufo": {
        HELLO: R(None, REC_HELLO),
        "query.ufo_hist": R([("f", ("Gi",))]),
        "train": R(MODEL, {**CLF_TRAIN, "judger-margin": ()}),
        "query.ufo_judge": R([("f", ("Gi",))], {"num-examples": ()}),
        "query.ufo_mass": R([("f", ("v", "Gi")), ("f", ("v", "Gi"))], {"num-examples": ()}),
        "evaluate": R(None, RANKING),
        STATE: R(),
    },
}

#: Findings of this audit that no module docstring declares: (run, message type, kind) ->
#: what it is. Reported, not fixed; the test checks each is still observed.
KNOWN: dict[tuple[str, str, str], str] = {
    ("raid", "query.raid_stats", "embedding"): (
        "gaussian mode: a client with one user of a group sends that group's sum e = the "
        "user's own embedding (and e e^T) with its attribute (its group index): declared "
        "for one-user clients only"
    ),
    ("raid-free-support", "query.raid_stats", "embedding-shape"): (
        "the same atoms: with all of a client's users in groups of at most quantize-k, the "
        "atoms array is (users x dim)"
    ),
    ("raid-free-support", "query.raid_stats", "embedding"): (
        "free-support mode: a group with at most quantize-k (default 16) users in a client is "
        "'quantised' to its users' embeddings themselves (mass 1 each) with their group ids, "
        "i.e. every user's embedding and attribute: declared for one-user clients only"
    ),
}


# ------------------------------------------------------------------ recording
@dataclass
class Sent:
    mtype: str
    round: int
    clients: list[int]
    global_arrays: list[np.ndarray] | None
    record_keys: set[str]
    head: dict[str, Any]
    replies: list[tuple[int, list[np.ndarray] | None, dict[str, Any]]]
    private: dict[int, dict[str, list[np.ndarray]]]  # client -> field -> [before, after]


def _private(ctx) -> dict[int, dict[str, np.ndarray]]:
    from fedrec.clients.app import _load_store

    store = _load_store(ctx)
    out: dict[int, dict[str, np.ndarray]] = {}
    for name, col in store.columns.items():
        if col.scalar or col.values.ndim != 2 or col.values.dtype.kind != "f":
            continue
        for c in col.clients.tolist():
            out.setdefault(int(c), {})[name] = np.array(col.get(int(c)))
    return out


@pytest.fixture
def recorded(monkeypatch):
    """Every reply of the test's runs (:class:`Sent`), in delivery order."""
    return record(monkeypatch)


def record(monkeypatch) -> list[Sent]:
    sent: list[Sent] = []
    original = L.LocalGrid._deliver

    def spy(self, msg):
        ctx = self.contexts.get(msg.metadata.dst_node_id)
        before = _private(ctx)
        reply = original(self, msg)
        after = _private(ctx)
        assert not reply.has_error(), reply.error.reason
        head_in = msg.content.config_records[protocol.FEDREC]
        arrays = msg.content.array_records.get(protocol.ARRAYS)
        content = reply.content
        cols = content.array_records[protocol.REPLIES]
        private: dict[int, dict[str, list[np.ndarray]]] = {}
        for snapshot in (before, after):
            for c, fields in snapshot.items():
                for k, v in fields.items():
                    private.setdefault(c, {}).setdefault(k, []).append(v)
        sent.append(
            Sent(
                mtype=msg.metadata.message_type,
                round=int(head_in[protocol.ROUND]),
                clients=[int(c) for c in head_in.get(protocol.CLIENTS, [])],
                global_arrays=None if arrays is None else arrays.to_numpy_ndarrays(),
                record_keys=set(content.keys()),
                head=dict(content.config_records[protocol.FEDREC]),
                replies=protocol.unpack_replies({k: cols[k].numpy() for k in cols}),
                private=private,
            )
        )
        return reply

    monkeypatch.setattr(L.LocalGrid, "_deliver", spy)
    return sent


# ------------------------------------------------------------------ what a client holds
@dataclass
class Needle:
    what: str
    values: np.ndarray  # float64, 1-D


@dataclass
class Holdings:
    """One client's raw data (needles; feature rows by width, as row bytes), the symbols its
    allow-list shapes use and its users."""

    needles: list[Needle]
    rows: dict[int, set[bytes]]
    symbols: dict[str, int]
    users: np.ndarray


def _needle(what: str, values, alphabet: int) -> Needle | None:
    v = np.asarray(values, dtype=np.float64).ravel()
    if len(v) * math.log2(max(alphabet, 2)) < MIN_BITS:
        return None
    return Needle(what, v)


def _row_set(X: np.ndarray) -> set[bytes]:
    X = np.ascontiguousarray(np.asarray(X, dtype=np.float64))
    return {r.tobytes() for r in X}


def holdings(name: str, cfg, half_cls) -> dict[int, Holdings]:
    from fedrec.clients.classification import ClassifierClient
    from fedrec.clients.fedlm import LMClient

    out: dict[int, Holdings] = {}
    sp = params(cfg)
    n_clients = cfg.partition.num_clients
    if issubclass(half_cls, ClassifierClient):
        from fedrec.tasks import load_client_data

        for c in range(n_clients):
            d = load_client_data(cfg, c)
            C, G = d.num_classes, d.num_groups
            needles = [
                _needle(f"{w}_{s}", getattr(d, f"{w}_{s}"), C if w == "y" else G)
                for w in ("y", "a")
                for s in ("train", "test")
            ]
            X = np.concatenate([d.X_train, d.X_test])
            out[c] = Holdings(
                [n for n in needles if n is not None],
                {X.shape[1]: _row_set(X)},
                {"C": C, "G": G},
                np.zeros(0, dtype=np.int64),
            )
        return out
    if issubclass(half_cls, LMClient):
        from fedrec.lmtask import lm_task

        task = lm_task(cfg)
        vocab = len(task.tok.itos)
        negatives: dict[int, int] = {}
        if name == "u2a":
            from fedrec.lmtask import u2a_task
            from fedrec.strategies.u2a import U2A

            ut = u2a_task(cfg, U2A.parse_params(cfg))
            negatives = {c: len(ut.negatives(c)) for c in range(n_clients)}
        for c in range(n_clients):
            docs = [task.tok.encode(t) for t in task.documents(c)]
            needles = [_needle(f"document {i}", t, vocab) for i, t in enumerate(docs)]
            out[c] = Holdings(
                [n for n in needles if n is not None],
                {},
                {"negatives": negatives.get(c, 0)},
                half_cls.owned_users(cfg, c),
            )
        return out
    from fedrec.recsys.data import cfg_user_data

    ds, ud = cfg_user_data(cfg)
    for c in range(n_clients):
        users = np.asarray(half_cls.owned_users(cfg, c), dtype=np.int64)
        needles: list[Needle | None] = []
        for u in users.tolist():
            needles += [
                _needle(f"user {u} train_seq", ud.train_seq[u], ud.num_items),
                _needle(f"user {u} train items", ud.train[u], ud.num_items),
            ]
        if len(users):
            needles.append(
                _needle(
                    "the client's train_seq",
                    np.concatenate([ud.train_seq[u] for u in users]),
                    ud.num_items,
                )
            )
        for attr, names in ds.attr_names.items():
            needles.append(_needle(f"attribute {attr}", ds.user_attrs[attr][users], len(names)))
        symbols = {"n": len(users), "d": int(getattr(sp, "dim", getattr(sp, "d_model", 0)))}
        out[c] = Holdings([n for n in needles if n is not None], {}, symbols, users)
    return out


def params(cfg):
    """The strategy's typed ``strategy.params.*``."""
    from fedrec.plugins import load_strategy

    return load_strategy(cfg.strategy.name).parse_params(cfg)


def user_dim(cfg) -> int | None:
    """The strategy's user-embedding dimension (None: its users have no embedding)."""
    if cfg.strategy.name in ("fedmf", "raid", "lego", "bifair"):
        return int(params(cfg).dim)
    return None


def run_symbols(name: str, cfg, sent: Sent) -> dict[str, int]:
    """Symbols of a run / message that the allow-list shapes use."""
    s: dict[str, int] = {}
    p = params(cfg)
    g = sent.global_arrays
    if cfg.strategy.name in ("fedsasrec", "fedgru4rec") and g:
        s["dense"] = int(sum(a.size for a in g[1:]))
    if name == "raid-adversarial":
        from fedrec.specs import raid as spec

        s["adv"] = spec.adversary_layout(p.dim, p.adv_hidden, 2).size
    if cfg.strategy.name == "bifair":
        s["last"] = p.dim * p.hidden + p.dim  # [W2 (d, h), b2 (d,)]
    return s


# ------------------------------------------------------------------ the checks
_SYMBOL = re.compile(r"^[A-Za-z_]\w*$")


def _match_shape(pattern: tuple, shape: tuple, bound: dict[str, int]) -> bool:
    if len(pattern) != len(shape):
        return False
    later = []
    for p, n in zip(pattern, shape):
        if isinstance(p, int):
            if p != n:
                return False
        elif _SYMBOL.match(p):
            if bound.setdefault(p, int(n)) != n:
                return False
        else:
            later.append((p, n))
    return all(eval(p, {}, dict(bound)) == n for p, n in later)  # noqa: S307


def _kind(a: np.ndarray) -> str:
    return {"u": "i", "b": "i"}.get(a.dtype.kind, a.dtype.kind)


def _contains(hay: np.ndarray, needle: np.ndarray) -> bool:
    n = len(needle)
    if n == 0 or n > len(hay):
        return False
    k = min(n, 8)
    win = np.lib.stride_tricks.sliding_window_view(hay, k)
    for i in np.flatnonzero((win == needle[:k]).all(axis=1))[:1000]:
        if i + n <= len(hay) and np.array_equal(hay[i : i + n], needle):
            return True
    return False


def _has_row(hay: np.ndarray, width: int, rows: set[bytes] | dict[bytes, int]) -> set[int]:
    """The windows of ``hay`` found in ``rows`` (their values when ``rows`` is a dict)."""
    if not rows or len(hay) < width:
        return set()
    win = np.lib.stride_tricks.sliding_window_view(hay, width)
    found = (np.ascontiguousarray(w).tobytes() for w in win)
    if isinstance(rows, dict):
        return {rows[b] for b in found if b in rows}
    return {0} if any(b in rows for b in found) else set()


def _user_vectors(
    private: dict[str, list[np.ndarray]], users: np.ndarray, d: int
) -> dict[str, dict[bytes, int]]:
    """The client's user-level private vectors: field -> row bytes -> user id (LEGO's one
    field holds [U0 | S slots of (U_t | m | v | t)]: U0 and every U_t)."""
    out: dict[str, dict[bytes, int]] = {}
    n = len(users)
    for name, versions in private.items():
        for v in versions:
            if v.shape[0] != n or n == 0:
                continue
            if v.shape[1] == d:
                blocks = [v]
            elif name == "lego":
                S = (v.shape[1] - d) // (3 * d + 1)
                blocks = [v[:, :d]] + [v[:, d + s * (3 * d + 1) :][:, :d] for s in range(S)]
            else:
                continue
            for b in blocks:
                for u, r in zip(users.tolist(), np.asarray(b, dtype=np.float64)):
                    if len(np.unique(r)) > 1:  # not a zero / constant row
                        out.setdefault(name, {})[np.ascontiguousarray(r).tobytes()] = u
    return out


def audit(name: str, cfg, sent: list[Sent], hold: dict[int, Holdings]):
    """``(findings, declared, leaked)``: sets of (message type, kind, detail), and the users
    whose private vectors a message type carried ((message type, field) -> user ids)."""
    allow = ALLOW[name]
    leaked: dict[tuple[str, str], set[int]] = {}
    d = user_dim(cfg)
    findings: set[tuple[str, str, str]] = set()
    declared: set[tuple[str, str, str]] = set()
    for s in sent:
        spec = allow.get(s.mtype)
        if spec is None:
            findings.add((s.mtype, "keys", "message type not in the allow-list"))
            continue
        if s.record_keys != {protocol.FEDREC, protocol.REPLIES}:
            findings.add((s.mtype, "keys", f"records {sorted(s.record_keys)}"))
        head_keys = {protocol.CLIENTS, protocol.NODE_PARTITION, protocol.NUM_NODE_PARTITIONS}
        if set(s.head) != head_keys:
            findings.add((s.mtype, "keys", f"reply head {sorted(s.head)}"))
        if s.mtype != HELLO:
            assert {c for c, _, _ in s.replies} <= set(s.clients), s.mtype
        rs = run_symbols(name, cfg, s)
        for c, arrays, metrics in s.replies:
            h = hold[c]
            bound = {**rs, **h.symbols}
            if "users" in metrics:
                bound["u"] = len(metrics["users"])
            # (c) arrays and metric keys against the allow-list
            if spec.arrays is None or (spec.arrays_optional and arrays is None):
                if arrays is not None and spec.arrays is None:
                    findings.add((s.mtype, "keys", f"{len(arrays)} arrays where none declared"))
            else:
                if spec.arrays in (MODEL, MODEL_TAIL):
                    g = s.global_arrays or []
                    g = g[1:] if spec.arrays == MODEL_TAIL else g
                    want = [("f", a.shape) for a in g]
                else:
                    want = spec.arrays
                got = arrays or []
                ok = len(want) == len(got) and all(
                    _kind(a) == k and _match_shape(tuple(p), a.shape, bound)
                    for (k, p), a in zip(want, got)
                )
                if not ok:
                    findings.add(
                        (s.mtype, "keys", f"arrays {[(a.dtype.str, a.shape) for a in got]}")
                    )
            checks = []
            for key, value in metrics.items():
                pats = [p for k, p in spec.metrics.items() if fnmatch.fnmatchcase(key, k)]
                if not pats:
                    findings.add((s.mtype, "keys", f"metric {key!r}"))
                else:
                    alts = pats[0] if isinstance(pats[0], list) else [pats[0]]
                    checks.append((key, value, [tuple(a) for a in alts]))
            # patterns that only bind symbols first, then those with expressions of them
            checks.sort(key=lambda kva: any(not _SYMBOL.match(str(x)) for a in kva[2] for x in a))
            for key, value, alts in checks:
                for alt in alts:
                    trial = dict(bound)
                    if _match_shape(alt, np.shape(value), trial):
                        bound.update(trial)
                        break
                else:
                    findings.add((s.mtype, "keys", f"metric {key!r} shape {np.shape(value)}"))
            # (a) raw data, (b) user embeddings
            hays = [np.asarray(a) for a in (arrays or [])] + [
                np.asarray(v) for v in metrics.values() if np.ndim(v) > 0
            ]
            vectors = _user_vectors(s.private.get(c, {}), h.users, d) if d is not None else {}
            for a in hays:
                flat = np.asarray(a, dtype=np.float64).ravel()
                for needle in h.needles:
                    if _contains(flat, needle.values):
                        findings.add((s.mtype, "raw", needle.what))
                for width, rows in h.rows.items():
                    if a.dtype.kind == "f" and _has_row(flat, width, rows):
                        findings.add((s.mtype, "raw", f"a feature row (width {width})"))
                if d is None:
                    continue
                target = declared if spec.embeddings else findings
                if a.ndim == 2 and a.shape == (len(h.users), d):
                    target.add((s.mtype, "embedding-shape", f"{a.shape}"))
                for field_name, rows in vectors.items():
                    who = _has_row(flat, d, rows) if a.dtype.kind == "f" else set()
                    if who:
                        target.add((s.mtype, "embedding", f"rows of private {field_name!r}"))
                        leaked.setdefault((s.mtype, field_name), set()).update(who)
    return findings, declared, leaked


def _alone_in_their_group(cfg, hold: dict[int, Holdings]) -> set[int]:
    """Users that are the only one of their RAID attribute group on their client."""
    from fedrec.recsys.data import cfg_user_data

    ds, _ = cfg_user_data(cfg)
    attr = ds.user_attrs[params(cfg).attribute]
    out: set[int] = set()
    for h in hold.values():
        groups = attr[h.users]
        out |= {int(u) for u, g in zip(h.users, groups) if (groups == g).sum() == 1}
    return out


# ------------------------------------------------------------------ the test
def test_every_builtin_strategy_is_audited():
    from importlib.metadata import entry_points

    builtins = {ep.name for ep in entry_points(group="fedrec.strategies")}
    assert builtins == {validate(cfg).strategy.name for cfg in RUNS.values()}
    assert set(ALLOW) == set(RUNS)


@pytest.mark.parametrize("name", list(RUNS))
def test_message_audit(name, recorded, tmp_path, add_user_attributes):
    from fedrec.clients.app import _half_class
    from fedrec.recsys.data import user_data

    cfg_flat = RUNS[name]
    cfg = validate(cfg_flat)
    half = _half_class(cfg.strategy.name)
    extra = _LEGO_EXTRA if name == "lego" else {}
    ds = user_data("synthetic-rec", _REC_OPTIONS)[0] if extra else None
    with add_user_attributes(ds, extra) if extra else contextlib.nullcontext():
        fedrec.run(cfg_flat, backend="local", out=tmp_path / "run", quiet=True)
        hold = holdings(name, cfg, half)
    findings, declared, leaked = audit(name, cfg, recorded, hold)

    types = {s.mtype for s in recorded}
    assert types == set(ALLOW[name]), f"{name}: phases not run / not declared: {types}"
    known = {(m, k) for (r, m, k) in KNOWN if r == name}
    unexpected = sorted(f for f in findings if (f[0], f[1]) not in known)
    assert not unexpected, f"{name}: what leaves a client beyond its allow-list: {unexpected}"
    missing = known - {(m, k) for m, k, _ in findings}
    assert not missing, f"{name}: known findings no longer observed (update KNOWN): {missing}"
    everyone = set(np.concatenate([h.users for h in hold.values()]).tolist())
    if name == "fedmf-release":  # positive control: the detector sees released embeddings
        assert ("query.fedmf_release", "embedding-shape", "(5, 8)") in declared
        assert leaked == {("query.fedmf_release", "P"): everyone}
    else:
        assert not declared
    if name.startswith("raid"):
        # the validation phase sends only what the back-off reads (it once sent the whole
        # ranking reply, from which the server read 70 of 80 users' validation items)
        keys = {
            k
            for s in recorded
            if s.mtype == "query.raid_validate"
            for _, _, m in s.replies
            for k in m
        }
        assert keys == {"pu.ndcg@10"}, keys
        # gaussian: exactly the users alone in their group on their client; free-support:
        # everyone (no client has more than quantize-k users of a group)
        want = {"raid": _alone_in_their_group(cfg, hold), "raid-free-support": everyone}
        assert leaked == ({("query.raid_stats", "P"): want[name]} if name in want else {})


def _leak(name: str, cfg, c: int, states) -> dict[str, np.ndarray]:
    """What the negative control's leaking client adds to its train reply."""
    if name == "fedavg":
        from fedrec.tasks import load_client_data

        d = load_client_data(cfg, c)
        return {"leak-labels": np.asarray(d.y_train), "leak-row": np.asarray(d.X_train[3])}
    from fedrec.clients.fedmf import MFClient
    from fedrec.recsys.data import cfg_user_data

    _, ud = cfg_user_data(cfg)
    u = int(MFClient.owned_users(cfg, c)[0])
    return {"leak-seq": np.asarray(ud.train_seq[u]), "leak-emb": np.asarray(states[c]["P"])[0]}


@pytest.mark.parametrize("name", ["fedavg", "fedmf"])
def test_audit_catches_a_leaking_client(name, recorded, tmp_path, monkeypatch):
    """Negative control: a client half that adds raw data (and, fedmf, its first user's
    embedding) to its train reply is reported on every count."""
    from fedrec.clients import app
    from fedrec.clients.app import _half_class

    original = app.run_half

    def leaky(cfg, half_cls, mtype, rnd, weights, config, states, clients):
        results = original(cfg, half_cls, mtype, rnd, weights, config, states, clients)
        if mtype != "train":
            return results
        if isinstance(results, protocol.ReplyColumns):
            results = results.as_dict()
        return {c: (w, {**m, **_leak(name, cfg, c, states)}) for c, (w, m) in results.items()}

    monkeypatch.setattr(app, "run_half", leaky)
    cfg = validate(RUNS[name])
    fedrec.run(RUNS[name], backend="local", out=tmp_path / "run", quiet=True)
    findings, _, leaked = audit(name, cfg, recorded, holdings(name, cfg, _half_class(name)))
    kinds = {(m, k) for m, k, _ in findings}
    assert ("train", "keys") in kinds and ("train", "raw") in kinds
    what = {w for m, k, w in findings if k == "raw"}
    if name == "fedavg":
        assert {"y_train", "a feature row (width 87)"} <= what
    else:
        assert any(w.endswith("train_seq") for w in what)
        assert ("train", "embedding") in kinds and ("train", "P") in leaked
