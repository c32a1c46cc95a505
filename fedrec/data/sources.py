"""Raw data files: resolution, download, sha256 verification, cache and import.

Every raw file a loader reads is looked up in this order:

1. ``$FEDREC_DATA_DIR/<dirname>/<file>`` (the layout of a directory of raw copies:
   ``adult/``, ``compas/``, ``german/``, ``bank-marketing/``, ``drug-consumption/``,
   ``ml-100k/``, ``hetrec2011-lastfm-2k/``);
2. the cache, ``cache_dir()/<dirname>/<file>``;
3. the xz-compressed copy shipped in ``fedrec/data/_bundled/`` (only the CC BY 4.0
   sets: Adult, German Credit, Drug consumption, Bank Marketing);
4. a download from the canonical URL into the cache.

Choices and caveats:

* **Every file is verified** against its registered sha256 each time it is read (the
  result is memoised per ``(path, mtime, size)`` in-process, so repeated loads do not
  re-hash). A mismatch raises :class:`~fedrec.errors.ChecksumError`; a file found at an
  earlier step that fails verification is an error, never silently skipped in favour
  of a later step. For a bundled ``.xz`` copy the sha256 of the *decompressed* bytes is
  checked against the registered sha256 of the raw file.
* **Registered checksums.** Adult (``adult.data``/``adult.test``) and COMPAS are
  byte-exact with the official files (Adult's values equal TensorFlow Datasets'
  registered checksums). German Credit, Drug consumption and Bank Marketing have no
  published checksum: the registered value is the sha256 of the known local copy,
  whose byte-exactness against the official archive is not guaranteed. If UCI serves
  different bytes (e.g. other line endings) a download fails verification; the bundled
  copy is used first, so this only matters when the bundle is missing.
* **MovieLens-100K** is download-only (GroupLens forbids redistribution). The zip's
  sha256 (as registered by TensorFlow Datasets) is verified before the needed members
  (``u.data``, ``u.user``, ``u.item``) are extracted; each extracted file is verified
  too.
* **LastFM hetrec2011-lastfm-2k** is download-only (non-commercial terms). The zip has
  no published checksum, so it is not verified as a whole; each needed member is
  verified against the sha256 of the known local copy instead. Those copies come from
  several public mirrors with differing line endings, so the official zip may fail
  that check: then place verified files with ``FEDREC_DATA_DIR`` instead.
* **COMPAS** is download-only (ProPublica's terms) from the commit-pinned raw GitHub URL.
* Downloads go to a temporary file in the target directory, are verified, then
  atomically renamed into place: a failed or mismatching download leaves nothing in
  the cache.
* :func:`import_dataset` (``fedrec data import NAME PATH``) accepts a directory (files
  at its top level or in ``<dirname>/``), the official zip, or a single raw file. Files
  the loader reads are required and must verify; other known files (READMEs, extra
  splits) are copied when they verify and skipped with a warning otherwise.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import tempfile
import urllib.request
import warnings
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ChecksumError, DataError

__all__ = [
    "SourceSpec",
    "SOURCES",
    "cache_dir",
    "bundled_dir",
    "resolve_files",
    "read_bytes",
    "import_dataset",
    "sha256_bytes",
]

_BUNDLED_DIR = Path(__file__).resolve().parent / "_bundled"
_UCI = "https://archive.ics.uci.edu/ml/machine-learning-databases"


@dataclass(frozen=True)
class SourceSpec:
    """Where a dataset's raw files live and how to verify them.

    ``files`` maps every known raw file name to its sha256; ``required`` lists the files
    the loader reads. A required file is downloaded either directly from ``urls[file]``
    or, when absent there, extracted (by base name) from the zip at ``zip_url``.
    """

    dirname: str
    files: Mapping[str, str]
    required: tuple[str, ...]
    urls: Mapping[str, str] = field(default_factory=dict)
    zip_url: str | None = None
    zip_sha256: str | None = None
    bundled: tuple[str, ...] = ()


SOURCES: dict[str, SourceSpec] = {
    "adult": SourceSpec(
        dirname="adult",
        files={
            "adult.data": "5b00264637dbfec36bdeaab5676b0b309ff9eb788d63554ca0a249491c86603d",
            "adult.test": "a2a9044bc167a35b2361efbabec64e89d69ce82d9790d2980119aac5fd7e9c05",
            "adult.names": "c248284c0b5de30c9e1958d6cdd168a34a654758b620e68f46aefa83fc0a576a",
        },
        required=("adult.data", "adult.test"),
        urls={
            "adult.data": f"{_UCI}/adult/adult.data",
            "adult.test": f"{_UCI}/adult/adult.test",
            "adult.names": f"{_UCI}/adult/adult.names",
        },
        bundled=("adult.data", "adult.test", "adult.names"),
    ),
    "compas": SourceSpec(
        dirname="compas",
        files={
            "compas-scores-two-years.csv": (
                "c451db85908b2f7fef1d83203bedf6b71ecda0d5af468d82ae62178f91d0cc7d"
            ),
            "README": "160743c26d705b4879b4fd5d440ee8a48e067ebb9a74c245a9c16d0564480e98",
        },
        required=("compas-scores-two-years.csv",),
        urls={
            "compas-scores-two-years.csv": (
                "https://raw.githubusercontent.com/propublica/compas-analysis/"
                "bafff5da3f2e45eca6c2d5055faad269defd135a/compas-scores-two-years.csv"
            ),
        },
    ),
    "german": SourceSpec(
        dirname="german",
        files={
            "german.data": "b21f3d81db8071257d5ff1deaeba1fd4303b62712e6fcc9715c7a86202cb5871",
            "german.doc": "69b92cb551111bc37098698288849c96f0fd87ce81a2e54451ff39aa1e53fe49",
        },
        required=("german.data",),
        urls={"german.data": f"{_UCI}/statlog/german/german.data"},
        bundled=("german.data",),
    ),
    "bank": SourceSpec(
        dirname="bank-marketing",
        files={
            "bank-full.csv": "d1513ec63b385506f7cfce9f2c5caa9fe99e7ba4e8c3fa264b3aaf0f849ed32d",
            "bank-names.txt": "3899a77082573ed676a7dfce3765a5307915c7f11b1fe2f6f55fd3c5467c12f7",
        },
        required=("bank-full.csv",),
        zip_url=f"{_UCI}/00222/bank.zip",
        bundled=("bank-full.csv",),
    ),
    "drug-consumption": SourceSpec(
        dirname="drug-consumption",
        files={
            "drug_consumption.data": (
                "76007010e9859dd612f28ce79fa99ca7378cd57783b2b4e375862f4451d65937"
            ),
        },
        required=("drug_consumption.data",),
        urls={"drug_consumption.data": f"{_UCI}/00373/drug_consumption.data"},
        bundled=("drug_consumption.data",),
    ),
    "ml-100k": SourceSpec(
        dirname="ml-100k",
        files={
            "u.data": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
            "u.user": "f120e114da2e8cf314fd28f99417c94ae9ddf1cb6db8ce0e4b5995d40e90e62c",
            "u.item": "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701",
            "README": "4883b8cf340ed0059971b33f56ad3adc88a40792108ebca3d24aafc4c82e8b52",
            "u.genre": "9757e0d3e6b298159a80dd48eaf938114690e911e39af97a76949ef1663610bb",
            "u.info": "5b0a40b2e47a729ee6203063f6dcf8790c2e63f5a18663e6ee318a72c5f3c27b",
            "u.occupation": "cd5fbec9afe345d993a62fc7817df1a4a9079c4feb267b3118763b8fd942137d",
            "u1.base": "ce253ec86c448b44fb3ba9a30d12dcfc2e9210cbde71efada3730c22e9ac212a",
            "u1.test": "18c6014a4b2c7324f250a63f8904a7b16b2b19f911129e346141507b0cbac950",
            "ua.base": "67b5bcdb380c29f85d56a012ecd88612ae020f30a6730d117a334ee8203b91f2",
            "ua.test": "d0497e202417720f57a184ec8c66be2d1afa4ff41bb53787c57b28d6bf79bc42",
        },
        required=("u.data", "u.user", "u.item"),
        zip_url="https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        zip_sha256="50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
    ),
    "lastfm": SourceSpec(
        dirname="hetrec2011-lastfm-2k",
        files={
            "user_artists.dat": "650cd69d5a68db24b439042557aa539aec47e473273e12cdfdca2cd944b3773a",
            "artists.dat": "c173881362c6b28551368fecb3c0be5a6a30a6cd859e1f5775413dfe46d48648",
            "tags.dat": "e95175f259be4c0c47644ae23d66131cd6d5767142a1405000e79f5584691d70",
            "user_friends.dat": "9a3a8f7fa5f5ec832335e5b58ed69a4cf27c6f6f6afcde62134810eea46445a7",
            "readme.txt": "44c38757b3a24e68e844ac60c97ba7fd8e0f691cf1b00e9cf6bd8854df0dd64a",
        },
        required=("user_artists.dat",),
        zip_url="https://files.grouplens.org/datasets/hetrec2011/hetrec2011-lastfm-2k.zip",
        zip_sha256=None,  # no published checksum; members are verified instead
    ),
}

# sha256 memo: (path, mtime_ns, size, decompress) -> hex digest
_SHA_MEMO: dict[tuple[str, int, int, bool], str] = {}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cache_dir() -> Path:
    """``$FEDREC_CACHE_DIR``, else ``$XDG_CACHE_HOME/fedrec``, else ``~/.cache/fedrec``."""
    env = os.environ.get("FEDREC_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "fedrec"
    return Path.home() / ".cache" / "fedrec"


def bundled_dir() -> Path:
    """Directory of the xz-compressed CC BY 4.0 files shipped with fedrec."""
    return _BUNDLED_DIR


def _spec(name: str) -> SourceSpec:
    spec = _maybe_spec(name)
    if spec is None:
        raise DataError(f"dataset '{name}' is generated; it has no raw files")
    return spec


def _maybe_spec(name: str) -> SourceSpec | None:
    """The spec of ``name`` (aliases allowed); None for generated datasets."""
    spec = SOURCES.get(name)
    if spec is not None:
        return spec
    from .registry import DATASETS, canonical_name  # lazy: registry imports this module

    canon = canonical_name(name)
    if canon in SOURCES:
        return SOURCES[canon]
    if canon in DATASETS:
        return None
    raise DataError(
        f"unknown dataset '{name}'; allowed: {', '.join(sorted(set(SOURCES) | set(DATASETS)))}"
    )


def _read_raw(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read data file {path} ({exc.strerror or exc})") from None
    if path.suffix == ".xz":
        try:
            data = lzma.decompress(data)
        except lzma.LZMAError as exc:
            raise DataError(f"bundled file {path.name} could not be decompressed ({exc})") from None
    return data


def _check(
    name: str, fname: str, path: Path, expected: str, data: bytes | None = None
) -> bytes | None:
    """Verify ``path`` (decompressed when .xz) against ``expected``; return bytes if read."""
    try:
        st = path.stat()
    except OSError as exc:
        raise DataError(f"dataset '{name}': cannot read {path} ({exc.strerror})") from None
    key = (str(path), st.st_mtime_ns, st.st_size, path.suffix == ".xz")
    actual = _SHA_MEMO.get(key)
    if actual is None:
        if data is None:
            data = _read_raw(path)
        actual = sha256_bytes(data)
        _SHA_MEMO[key] = actual
    if actual != expected:
        raise ChecksumError(
            f"dataset '{name}': file {path} has sha256 {actual} but expected {expected}"
            f" (registered sha256 of {fname}); replace or delete it"
        )
    return data


def _located(name: str, spec: SourceSpec, fname: str) -> Path | None:
    data_dir = os.environ.get("FEDREC_DATA_DIR")
    if data_dir:
        p = Path(data_dir).expanduser() / spec.dirname / fname
        if p.is_file():
            return p
    p = cache_dir() / spec.dirname / fname
    if p.is_file():
        return p
    if fname in spec.bundled:
        p = _BUNDLED_DIR / f"{fname}.xz"
        if p.is_file():
            return p
    return None


def _locate(name: str, fname: str) -> Path:
    spec = _spec(name)
    if fname not in spec.files:
        raise DataError(
            f"dataset '{name}' has no registered file '{fname}'; known: {', '.join(spec.files)}"
        )
    path = _located(name, spec, fname)
    if path is None:
        _download(name, spec, fname)
        path = cache_dir() / spec.dirname / fname
    return path


def resolve_files(name: str) -> dict[str, Path]:
    """Return verified local paths of the raw files the loader of ``name`` reads.

    Downloads missing files into the cache when possible. A bundled file is returned
    as the path of its ``.xz`` copy. Generated datasets return ``{}``.
    """
    spec = _maybe_spec(name)
    if spec is None:
        return {}
    out: dict[str, Path] = {}
    for fname in spec.required:
        path = _locate(name, fname)
        _check(name, fname, path, spec.files[fname])
        out[fname] = path
    return out


def read_bytes(name: str, fname: str) -> bytes:
    """Read one raw file of dataset ``name`` (decompressed), verified against its sha256."""
    spec = _spec(name)
    path = _locate(name, fname)
    data = _read_raw(path)
    _check(name, fname, path, spec.files[fname], data)
    return data


# --------------------------------------------------------------------------- download


def _fetch_url(url: str, dest: Path, desc: str) -> None:
    """Download ``url`` to ``dest`` with a tqdm progress bar (tests monkeypatch this)."""
    from tqdm.auto import tqdm

    req = urllib.request.Request(url, headers={"User-Agent": "fedrec"})
    with urllib.request.urlopen(req, timeout=60) as resp, open(dest, "wb") as fh:
        total = resp.headers.get("Content-Length")
        with tqdm(
            total=int(total) if total else None, unit="B", unit_scale=True, desc=desc, leave=False
        ) as bar:
            while True:
                chunk = resp.read(1 << 16)
                if not chunk:
                    break
                fh.write(chunk)
                bar.update(len(chunk))


def _make_dir(directory: Path) -> None:
    """Create a cache folder, or fail with one line naming it."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"cannot create the data cache folder {directory} ({exc.strerror or exc}); set "
            "FEDREC_CACHE_DIR to a writable folder"
        ) from None


def _tmp_in(directory: Path, suffix: str = ".part") -> Path:
    _make_dir(directory)
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".fedrec-", suffix=suffix)
    except OSError as exc:
        raise DataError(
            f"cannot write to the data cache folder {directory} ({exc.strerror or exc}); set "
            "FEDREC_CACHE_DIR to a writable folder"
        ) from None
    os.close(fd)
    return Path(tmp)


def _fetch(name: str, url: str, tmp: Path, desc: str) -> None:
    try:
        _fetch_url(url, tmp, desc)
    except Exception as exc:  # network errors come in many types
        tmp.unlink(missing_ok=True)
        reason = str(exc).replace("\n", " ") or type(exc).__name__
        raise DataError(
            f"could not download {name} from {url} ({reason}); set FEDREC_DATA_DIR or run "
            f"`fedrec data import {name} PATH`"
        ) from None


def _write_atomic(dest: Path, data: bytes) -> None:
    tmp = _tmp_in(dest.parent)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _verify_data(name: str, fname: str, data: bytes, expected: str, origin: str) -> None:
    actual = sha256_bytes(data)
    if actual != expected:
        raise ChecksumError(
            f"dataset '{name}': file {fname} from {origin} has sha256 {actual} "
            f"but expected {expected}"
        )


def _zip_members(zf: zipfile.ZipFile) -> dict[str, str]:
    """Map base name -> member path (shortest path wins; macOS metadata ignored)."""
    found: dict[str, str] = {}
    for member in zf.namelist():
        if member.endswith("/") or member.startswith("__MACOSX") or "/._" in member:
            continue
        base = member.rsplit("/", 1)[-1]
        if base not in found or len(member) < len(found[base]):
            found[base] = member
    return found


def _download(name: str, spec: SourceSpec, fname: str) -> None:
    target_dir = cache_dir() / spec.dirname
    url = spec.urls.get(fname)
    if url is not None:
        tmp = _tmp_in(target_dir)
        try:
            _fetch(name, url, tmp, fname)
            data = tmp.read_bytes()
            _verify_data(name, fname, data, spec.files[fname], url)
            os.replace(tmp, target_dir / fname)
        finally:
            tmp.unlink(missing_ok=True)
        return
    if spec.zip_url is None:
        raise DataError(
            f"dataset '{name}': file {fname} not found and no download URL is known; set "
            f"FEDREC_DATA_DIR or run `fedrec data import {name} PATH`"
        )
    tmp = _tmp_in(target_dir, suffix=".zip.part")
    try:
        _fetch(name, spec.zip_url, tmp, spec.zip_url.rsplit("/", 1)[-1])
        if spec.zip_sha256 is not None:
            _verify_data(
                name,
                spec.zip_url.rsplit("/", 1)[-1],
                tmp.read_bytes(),
                spec.zip_sha256,
                spec.zip_url,
            )
        try:
            with zipfile.ZipFile(tmp) as zf:
                members = _zip_members(zf)
                wanted = [f for f in spec.required if not (target_dir / f).is_file()]
                if fname not in wanted:
                    wanted.append(fname)
                blobs: dict[str, bytes] = {}
                for f in wanted:
                    if f not in members:
                        raise DataError(f"dataset '{name}': {spec.zip_url} has no member {f}")
                    blobs[f] = zf.read(members[f])
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise DataError(
                f"dataset '{name}': {spec.zip_url} is not a valid zip ({exc})"
            ) from None
        for f, data in blobs.items():  # verify everything before writing anything
            _verify_data(name, f, data, spec.files[f], spec.zip_url)
        for f, data in blobs.items():
            _write_atomic(target_dir / f, data)
    finally:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- import


def import_dataset(name: str, path: str | os.PathLike[str]) -> Path:
    """Verify the raw files at ``path`` and copy them into the cache; return the cache dir.

    ``path`` is a directory holding the raw files (at its top level or in
    ``<dirname>/``), the official zip, or a single known raw file.
    """
    spec = _spec(name)
    src = Path(path).expanduser()
    if not src.exists():
        raise DataError(f"cannot import dataset '{name}': {src} does not exist")
    found: dict[str, bytes] = {}
    origin: dict[str, str] = {}
    try:
        _read_import(name, spec, src, found, origin)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise DataError(f"cannot import dataset '{name}': {src} is a damaged zip ({exc})") from None
    except OSError as exc:
        raise DataError(
            f"cannot import dataset '{name}': cannot read {exc.filename or src} "
            f"({exc.strerror or exc})"
        ) from None
    target_dir = cache_dir() / spec.dirname
    if src.is_file() and not zipfile.is_zipfile(src):
        required_missing: list[str] = []  # single-file import: import just that file
    else:
        required_missing = [f for f in spec.required if f not in found]
    if required_missing:
        raise DataError(
            f"cannot import dataset '{name}' from {src}: missing {', '.join(required_missing)}"
        )
    accepted: dict[str, bytes] = {}
    for fname, data in found.items():
        try:
            _verify_data(name, fname, data, spec.files[fname], origin[fname])
        except ChecksumError as exc:
            if fname in spec.required:
                raise
            warnings.warn(f"skipping {fname}: {exc}", stacklevel=2)
            continue
        accepted[fname] = data
    _make_dir(target_dir)
    for fname, data in accepted.items():
        _write_atomic(target_dir / fname, data)
    return target_dir


def _read_import(
    name: str, spec: SourceSpec, src: Path, found: dict[str, bytes], origin: dict[str, str]
) -> None:
    """Read the known files at ``src`` (a zip, one raw file or a directory) into ``found``."""
    if src.is_file() and zipfile.is_zipfile(src):
        with zipfile.ZipFile(src) as zf:
            members = _zip_members(zf)
            for fname in spec.files:
                if fname in members:
                    found[fname] = zf.read(members[fname])
                    origin[fname] = f"{src}:{members[fname]}"
    elif src.is_file():
        if src.name not in spec.files:
            raise DataError(
                f"cannot import {src} for dataset '{name}': not a zip and not a known file "
                f"({', '.join(spec.files)})"
            )
        found[src.name] = src.read_bytes()
        origin[src.name] = str(src)
    else:
        for fname in spec.files:
            for cand in (src / fname, src / spec.dirname / fname):
                if cand.is_file():
                    found[fname] = cand.read_bytes()
                    origin[fname] = str(cand)
                    break


def _clear_memo() -> None:
    _SHA_MEMO.clear()
