"""Recommendation datasets: MovieLens-100K, LastFM hetrec2011-2k and a synthetic world.

All return a :class:`RecDataset` with 0-based contiguous user/item ids, ``rating``
float32, ``timestamp`` int64. Interactions keep the raw file order.

**ml-100k** (``u.data`` tab-separated, ``u.user`` and ``u.item`` pipe-separated,
``u.item`` read as latin-1). Users and items are the ones listed in ``u.user`` /
``u.item``, mapped to 0-based ids in increasing raw-id order (raw ids are 1..943 and
1..1682, so the id is ``raw - 1``). ``user_attrs``:

* ``gender``: 0 = M, 1 = F (670 M / 273 F);
* ``age``: the raw integer age;
* ``age_bucket``: the MovieLens-1M bands, codes 0..6 = ``<18``, ``18-24``, ``25-34``,
  ``35-44``, ``45-49``, ``50-55``, ``56+`` (lower edges 18, 25, 35, 45, 50, 56);
* ``occupation``: codes into the sorted list of occupation names found in ``u.user``
  (the same 21 names, in the same order, as ``u.occupation``).

``attr_names`` gives code -> name for ``gender``, ``age_bucket`` and ``occupation``.
Items carry titles and the 19 genre flags; the genre names are the fixed list of
``u.genre`` (hard-coded, so ``u.genre`` is not needed). Release dates, IMDb URLs and
zip codes are not loaded.

**lastfm** (hetrec2011-lastfm-2k ``user_artists.dat``: tab-separated with a header, CRLF
or LF, possibly no final newline). Users and artists are those occurring in the file,
reindexed 0-based in increasing raw-id order (1,892 users, 17,632 artists, 92,834
pairs). The data are implicit: by default ``rating = 1.0`` for every pair;
``implicit=False`` keeps the listening count (``weight``) as the rating. There are no
timestamps (``timestamp`` is all zeros), no user attributes and no titles (``artists.dat``
is not read, to keep the set of verified files minimal).

**synthetic-rec** (:func:`synthetic_recommendation`, clearly synthetic): a planted-signal
world for attribute-inference and unlearning tests.

* Latent vectors: item ``v_i ~ N(0, I_dim)``; user ``u = z + (g - 1/2) * s * d`` with
  ``z ~ N(0, I_dim / dim)``, a binary attribute ``g ~ Bernoulli(1/2)`` (called
  ``gender``, 0 = "M", 1 = "F" as in ML-100K), a fixed random unit direction ``d`` and
  ``s = attr_strength``: the two groups' preference vectors differ by ``s * d``, and the
  population mean stays 0. With these scales ``z . v_i`` and ``d . v_i`` both have unit
  variance, so ``s`` is directly comparable with the personal-taste noise.
* Popularity: items get a random popularity rank ``r`` and weight
  ``p_i ∝ (r_i + 1) ** -popularity_skew`` (Zipf-like; 0 = uniform).
* Each user draws ``interactions_per_user`` distinct items with probability
  proportional to ``softmax(u . v_i + log p_i)``, sequentially without replacement
  (implemented exactly with the Gumbel-top-k trick); the draw order is the
  interaction order.
* Timestamps are increasing per user: a random start in a 30-day window after
  2020-01-01 UTC plus exponential gaps (mean one hour). Ratings are implicit (1.0).
* Everything comes from ``np.random.default_rng(seed)``; the same arguments give the
  same dataset.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DataError
from . import sources
from .tabular import parse_guard

__all__ = [
    "RecDataset",
    "load_ml100k",
    "load_lastfm",
    "parse_ml100k",
    "parse_lastfm",
    "synthetic_recommendation",
    "ML100K_GENRES",
    "AGE_BUCKETS",
]

ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
]  # fmt: skip
AGE_BUCKETS = ["<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+"]
_AGE_EDGES = np.array([18, 25, 35, 45, 50, 56])


@dataclass
class RecDataset:
    name: str
    num_users: int
    num_items: int
    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray
    timestamp: np.ndarray
    user_attrs: dict[str, np.ndarray]
    attr_names: dict[str, list[str]]
    item_titles: list[str] | None = None
    item_genres: np.ndarray | None = None
    genre_names: list[str] | None = None

    @property
    def num_interactions(self) -> int:
        return int(self.user.shape[0])

    def __len__(self) -> int:
        return self.num_interactions


def age_bucket(ages: np.ndarray) -> np.ndarray:
    """Map raw ages to MovieLens-1M band codes 0..6 (see :data:`AGE_BUCKETS`)."""
    return np.searchsorted(_AGE_EDGES, np.asarray(ages), side="right").astype(np.int64)


# --------------------------------------------------------------------------- ml-100k


def _split_lines(text: str, sep: str, nfields: int, fname: str, dataset: str) -> list[list[str]]:
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split(sep)
        if len(fields) < nfields:
            raise DataError(
                f"dataset '{dataset}': cannot parse {fname} line {lineno} "
                f"({len(fields)} fields, expected {nfields})"
            )
        rows.append(fields)
    return rows


@parse_guard("ml-100k", "u.data/u.user/u.item")
def parse_ml100k(
    u_data: bytes, u_user: bytes, u_item: bytes, *, name: str = "ml-100k"
) -> RecDataset:
    """Parse the raw ``u.data``, ``u.user`` and ``u.item`` bytes."""
    try:
        inter = np.array(u_data.split(), dtype=np.int64)
    except ValueError:
        raise DataError(f"dataset '{name}': u.data holds non-integer fields") from None
    if inter.size % 4:
        raise DataError(f"dataset '{name}': u.data does not have 4 fields per line")
    inter = inter.reshape(-1, 4)

    users = _split_lines(u_user.decode("latin-1"), "|", 5, "u.user", name)
    raw_uid = np.array([int(r[0]) for r in users], dtype=np.int64)
    order = np.argsort(raw_uid, kind="stable")
    users = [users[i] for i in order]
    raw_uid = raw_uid[order]
    if np.unique(raw_uid).size != raw_uid.size:
        raise DataError(f"dataset '{name}': u.user has duplicate user ids")
    ages = np.array([int(r[1]) for r in users], dtype=np.int64)
    genders = [r[2] for r in users]
    if not set(genders) <= {"M", "F"}:
        raise DataError(f"dataset '{name}': u.user genders {sorted(set(genders))}; allowed: M, F")
    occ_raw = [r[3] for r in users]
    occ_names = sorted(set(occ_raw))
    occ_code = {o: i for i, o in enumerate(occ_names)}

    items = _split_lines(u_item.decode("latin-1"), "|", 5 + len(ML100K_GENRES), "u.item", name)
    raw_iid = np.array([int(r[0]) for r in items], dtype=np.int64)
    order = np.argsort(raw_iid, kind="stable")
    items = [items[i] for i in order]
    raw_iid = raw_iid[order]
    if np.unique(raw_iid).size != raw_iid.size:
        raise DataError(f"dataset '{name}': u.item has duplicate item ids")
    genres = np.array(
        [[f.strip() == "1" for f in r[5 : 5 + len(ML100K_GENRES)]] for r in items], dtype=bool
    )
    genres = genres.reshape(len(items), len(ML100K_GENRES))

    if raw_uid.size == 0 or raw_iid.size == 0:
        raise DataError(f"dataset '{name}': u.user or u.item lists no users or items")
    u_idx = np.searchsorted(raw_uid, inter[:, 0])
    i_idx = np.searchsorted(raw_iid, inter[:, 1])
    u_ok = (u_idx < raw_uid.size) & (raw_uid[np.minimum(u_idx, raw_uid.size - 1)] == inter[:, 0])
    i_ok = (i_idx < raw_iid.size) & (raw_iid[np.minimum(i_idx, raw_iid.size - 1)] == inter[:, 1])
    if not (u_ok.all() and i_ok.all()):
        raise DataError(
            f"dataset '{name}': u.data references users or items missing from u.user/u.item"
        )

    return RecDataset(
        name=name,
        num_users=int(raw_uid.size),
        num_items=int(raw_iid.size),
        user=u_idx.astype(np.int64),
        item=i_idx.astype(np.int64),
        rating=inter[:, 2].astype(np.float32),
        timestamp=inter[:, 3].astype(np.int64),
        user_attrs={
            "gender": np.array([g == "F" for g in genders], dtype=np.int64),
            "age": ages,
            "age_bucket": age_bucket(ages),
            "occupation": np.array([occ_code[o] for o in occ_raw], dtype=np.int64),
        },
        attr_names={"gender": ["M", "F"], "age_bucket": list(AGE_BUCKETS), "occupation": occ_names},
        item_titles=[r[1] for r in items],
        item_genres=genres,
        genre_names=list(ML100K_GENRES),
    )


def load_ml100k() -> RecDataset:
    """MovieLens-100K (download-only; 100,000 ratings, 943 users, 1,682 items)."""
    return parse_ml100k(
        sources.read_bytes("ml-100k", "u.data"),
        sources.read_bytes("ml-100k", "u.user"),
        sources.read_bytes("ml-100k", "u.item"),
    )


# --------------------------------------------------------------------------- lastfm


@parse_guard("lastfm", "user_artists.dat")
def parse_lastfm(user_artists: bytes, *, implicit: bool = True, name: str = "lastfm") -> RecDataset:
    """Parse hetrec2011 ``user_artists.dat`` (``userID  artistID  weight``)."""
    lines = user_artists.decode("utf-8").splitlines()
    if not lines or lines[0].split() != ["userID", "artistID", "weight"]:
        raise DataError(
            f"dataset '{name}': user_artists.dat lacks the header 'userID artistID weight'"
        )
    try:
        arr = np.array(" ".join(lines[1:]).split(), dtype=np.int64)
    except ValueError:
        raise DataError(f"dataset '{name}': user_artists.dat holds non-integer fields") from None
    if arr.size % 3:
        raise DataError(f"dataset '{name}': user_artists.dat does not have 3 fields per line")
    arr = arr.reshape(-1, 3)
    users, u_idx = np.unique(arr[:, 0], return_inverse=True)
    items, i_idx = np.unique(arr[:, 1], return_inverse=True)
    rating = np.ones(len(arr), dtype=np.float32) if implicit else arr[:, 2].astype(np.float32)
    return RecDataset(
        name=name,
        num_users=int(users.size),
        num_items=int(items.size),
        user=u_idx.astype(np.int64),
        item=i_idx.astype(np.int64),
        rating=rating,
        timestamp=np.zeros(len(arr), dtype=np.int64),
        user_attrs={},
        attr_names={},
    )


def load_lastfm(*, implicit: bool = True) -> RecDataset:
    """hetrec2011-lastfm-2k user-artist pairs (download-only)."""
    return parse_lastfm(sources.read_bytes("lastfm", "user_artists.dat"), implicit=implicit)


# --------------------------------------------------------------------------- synthetic


def synthetic_recommendation(
    num_users: int = 1000,
    num_items: int = 500,
    dim: int = 16,
    interactions_per_user: int = 30,
    attr_strength: float = 1.0,
    popularity_skew: float = 1.0,
    seed: int = 0,
) -> RecDataset:
    """Synthetic implicit-feedback world with a planted binary user attribute."""
    for label, v in (("num_users", num_users), ("num_items", num_items), ("dim", dim)):
        if int(v) < 1:
            raise DataError(f"synthetic-rec: {label} must be >= 1, got {v}")
    if not 1 <= interactions_per_user <= num_items:
        raise DataError(
            f"synthetic-rec: interactions_per_user must be in [1, num_items={num_items}], "
            f"got {interactions_per_user}"
        )
    if popularity_skew < 0:
        raise DataError(f"synthetic-rec: popularity_skew must be >= 0, got {popularity_skew}")
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=dim)
    direction /= np.linalg.norm(direction)
    items = rng.normal(size=(num_items, dim))
    gender = rng.integers(0, 2, size=num_users).astype(np.int64)
    users = rng.normal(scale=1.0 / np.sqrt(dim), size=(num_users, dim))
    users += (gender[:, None] - 0.5) * attr_strength * direction[None, :]
    rank = rng.permutation(num_items)
    log_pop = -popularity_skew * np.log(rank + 1.0)
    log_pop -= np.log(np.exp(log_pop).sum())
    logits = users @ items.T + log_pop[None, :]
    gumbel = rng.gumbel(size=logits.shape)
    k = interactions_per_user
    keys = logits + gumbel
    top = np.argpartition(-keys, k - 1, axis=1)[:, :k]
    top_keys = np.take_along_axis(keys, top, axis=1)
    seq = np.take_along_axis(top, np.argsort(-top_keys, axis=1, kind="stable"), axis=1)
    start = 1_577_836_800 + rng.integers(0, 30 * 86_400, size=num_users)
    gaps = 1 + rng.exponential(3600.0, size=(num_users, k)).astype(np.int64)
    ts = start[:, None] + np.cumsum(gaps, axis=1)
    return RecDataset(
        name="synthetic-rec",
        num_users=int(num_users),
        num_items=int(num_items),
        user=np.repeat(np.arange(num_users, dtype=np.int64), k),
        item=seq.reshape(-1).astype(np.int64),
        rating=np.ones(num_users * k, dtype=np.float32),
        timestamp=ts.reshape(-1).astype(np.int64),
        user_attrs={"gender": gender},
        attr_names={"gender": ["M", "F"]},
    )
