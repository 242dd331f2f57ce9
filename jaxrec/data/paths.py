"""Data directory resolution, SHA256SUMS verification and the (explicit, opt-in) download helper.

* :func:`resolve_data_dir` -- ``--data-dir`` flag > ``$JAXREC_DATA`` > a clear error.
* :func:`data_file` -- the path of one dataset file, checked to exist and (when ``<data_dir>/SHA256SUMS``
  lists it) to match its SHA-256. Verification is cached per process, keyed by (path, size, mtime), so
  loading the same dataset twice hashes it once.
* :func:`download` -- fetch a dataset that has a public download (GroupLens ml-100k / ml-latest-small,
  UCI adult) into ``data_dir`` and check every extracted file against a pinned SHA-256. Loaders never
  call it: nothing is downloaded implicitly.
"""
from __future__ import annotations

import hashlib
import urllib.request
import io
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import data_error

__all__ = [
    "ENV_VAR", "resolve_data_dir", "data_file", "sha256_file", "read_sha256sums", "verify_file",
    "clear_verification_cache", "DOWNLOADS", "Download", "download",
]

ENV_VAR = "JAXREC_DATA"

# Where each dataset lives under the data directory and how to obtain it (for error messages).
DATASET_HELP: dict[str, tuple[str, str]] = {
    "ml-100k": ("the MovieLens 100K files (u.data, u.item, u.user)",
                "https://grouplens.org/datasets/movielens/100k/ or jaxrec.data.download('ml-100k', data_dir)"),
    "ml-latest-small": ("the MovieLens latest-small files (ratings.csv, movies.csv)",
                        "https://grouplens.org/datasets/movielens/latest/ or "
                        "jaxrec.data.download('ml-latest-small', data_dir)"),
    "ml-1m-melu": ("the MeLU preprocessing of MovieLens-1M (users.dat, movies_extrainfos.dat, m_*.txt, "
                   "*_cold_state*.json)", "the MeLU authors' repository"),
    "adult": ("UCI Adult (adult.data)",
              "https://archive.ics.uci.edu/dataset/2/adult or jaxrec.data.download('adult', data_dir)"),
    "lastfm": ("the LightGCN split of Last.fm HetRec 2011 (data1.txt, test1.txt, trustnetwork.txt)",
               "the LightGCN authors' repository"),
    **{name: (f"the 5-core sequence file {name}.txt", "the CL4SRec / ICLRec / DuoRec preprocessing")
       for name in ("Amazon_Beauty", "Amazon_Sports_and_Outdoors", "Amazon_Toys_and_Games", "Yelp")},
}


def _help(name: str) -> tuple[str, str]:
    return DATASET_HELP.get(name, (f"the {name} files", "its publisher"))


def resolve_data_dir(flag: str | os.PathLike | None = None) -> Path:
    """Return the data directory: the ``--data-dir`` flag if given, else ``$JAXREC_DATA``, else an error.

    Raises :class:`DataError` when neither is set or the chosen path is not an existing directory.
    """
    source = "--data-dir"
    if flag is None or str(flag) == "":
        flag = os.environ.get(ENV_VAR) or None
        source = f"${ENV_VAR}"
    if flag is None:
        raise data_error(
            "no data directory given",
            fix=f"pass --data-dir DIR (or data_dir=...) or set {ENV_VAR}=DIR, where DIR holds one folder per "
                "dataset (e.g. DIR/ml-100k/u.data); the synthetic datasets need no files")
    path = Path(flag).expanduser()
    if not path.is_dir():
        raise data_error(f"data directory {path} (from {source}) does not exist or is not a directory",
                         path=path, fix="point it at the folder that holds one sub-folder per dataset")
    return path


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


# Caches: parsed SHA256SUMS per (path, size, mtime) and verified files per (path, size, mtime).
_SUMS_CACHE: dict[tuple, dict[str, str]] = {}
_VERIFIED: dict[tuple, str] = {}


def _stat_key(path: Path) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def clear_verification_cache() -> None:
    """Forget which files were verified in this process (the next load re-hashes them)."""
    _SUMS_CACHE.clear()
    _VERIFIED.clear()


def read_sha256sums(data_dir: str | os.PathLike) -> dict[str, str] | None:
    """Parse ``<data_dir>/SHA256SUMS`` (``<hex>  ./<relative path>`` per line) into {relpath: hex}.

    Returns ``None`` when the file is absent. A malformed line raises :class:`DataError` with its number.
    """
    sums_path = Path(data_dir) / "SHA256SUMS"
    if not sums_path.is_file():
        return None
    key = _stat_key(sums_path)
    if key in _SUMS_CACHE:
        return _SUMS_CACHE[key]
    table: dict[str, str] = {}
    with open(sums_path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.strip().split(None, 1)
            digest = parts[0].lower()
            if len(parts) != 2 or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise data_error("malformed checksum line (expected '<64 hex digits>  <path>')",
                                 path=sums_path, line=lineno,
                                 fix="fix or regenerate SHA256SUMS (sha256sum ./*/* > SHA256SUMS)")
            rel = parts[1].strip().lstrip("*")
            rel = rel[2:] if rel.startswith("./") else rel
            table[rel] = digest
    _SUMS_CACHE[key] = table
    return table


def verify_file(data_dir: str | os.PathLike, relpath: str) -> bool:
    """Check ``data_dir/relpath`` against ``SHA256SUMS``; return True if checked, False if not listed.

    Cached per process: a file whose (path, size, mtime) was already verified is not hashed again.
    Raises :class:`DataError` on a mismatch.
    """
    sums = read_sha256sums(data_dir)
    if sums is None or relpath not in sums:
        return False
    path = Path(data_dir) / relpath
    key = _stat_key(path)
    expected = sums[relpath]
    if _VERIFIED.get(key) == expected:
        return True
    actual = sha256_file(path)
    if actual != expected:
        raise data_error(
            f"checksum mismatch: SHA-256 is {actual}, but {Path(data_dir) / 'SHA256SUMS'} expects {expected}",
            path=path,
            fix="the file is corrupt, truncated or a different version; restore the original file "
                "(or re-download it) and do not edit files in the data directory")
    _VERIFIED[key] = expected
    return True


def data_file(data_dir: str | os.PathLike | None, dataset: str, filename: str, *, verify: bool = True) -> Path:
    """Path of ``<data_dir>/<dataset>/<filename>``, checked to exist and, if ``verify``, against SHA256SUMS.

    ``data_dir=None`` resolves ``$JAXREC_DATA``. A missing file raises :class:`DataError` saying which file
    to put where and where to get it.
    """
    root = resolve_data_dir(data_dir)
    path = root / dataset / filename
    if not path.is_file():
        what, source = _help(dataset)
        raise data_error(f"missing file for dataset {dataset!r}", path=path,
                         fix=f"put {what} into {root / dataset}/ (get them from {source})")
    if verify:
        verify_file(root, f"{dataset}/{filename}")
    return path


# --------------------------------------------------------------------------------------------- download


@dataclass(frozen=True)
class Download:
    """A public download: ``url``; ``members`` maps a path inside the archive (or ``None`` for a plain
    file) to the target file name under ``<data_dir>/<name>/``; ``sha256`` pins each target file."""

    url: str
    members: dict[str | None, str]
    sha256: dict[str, str] = field(default_factory=dict)
    archive: str = "zip"  # "zip" or "file"


# Pinned SHA-256 of each extracted file (identical to the project's shared SHA256SUMS for these files).
DOWNLOADS: dict[str, Download] = {
    "ml-100k": Download(
        url="https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        members={f"ml-100k/{m}": m for m in ("u.data", "u.item", "u.user", "u.genre", "u.occupation", "README")},
        sha256={
            "u.data": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
            "u.item": "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701",
            "u.user": "f120e114da2e8cf314fd28f99417c94ae9ddf1cb6db8ce0e4b5995d40e90e62c",
            "u.genre": "9757e0d3e6b298159a80dd48eaf938114690e911e39af97a76949ef1663610bb",
            "u.occupation": "cd5fbec9afe345d993a62fc7817df1a4a9079c4feb267b3118763b8fd942137d",
            "README": "4883b8cf340ed0059971b33f56ad3adc88a40792108ebca3d24aafc4c82e8b52",
        }),
    "ml-latest-small": Download(
        url="https://files.grouplens.org/datasets/movielens/ml-latest-small.zip",
        members={f"ml-latest-small/{m}": m
                 for m in ("ratings.csv", "movies.csv", "tags.csv", "links.csv", "README.txt")},
        sha256={
            "ratings.csv": "aa289ca83157595d0df6aea1be6a4ded676ddc4385472e8313a8ed9805352646",
            "movies.csv": "5a5f32dd9bb3797b8e728a1b98958789d2b13f294a69fdfbc5727f8a9611aa07",
            "tags.csv": "92a9f8bb7916dceef6151209845788c3643f794dfa79d1feaec7121b5960399d",
            "links.csv": "97ad18e4e56a09363c65676b6cb3482ce3e2cea2372a24620c1599c843325f31",
            "README.txt": "63d22ac138e80fae37021797ed8e1b9424b5239dc576a137422adf783ae3f404",
        }),
    "adult": Download(
        url="https://archive.ics.uci.edu/ml/machine-learning-databases/adult/adult.data",
        members={None: "adult.data"},
        sha256={"adult.data": "5b00264637dbfec36bdeaab5676b0b309ff9eb788d63554ca0a249491c86603d"},
        archive="file"),
}


def _fetch(url: str, timeout: float = 60.0) -> bytes:
    """Download ``url`` into memory (the single network call of the library; tests replace it)."""

    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (fixed https URLs above)
        return resp.read()


def download(name: str, data_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Download dataset ``name`` into ``<data_dir>/<name>/`` and verify each file's pinned SHA-256.

    Only datasets with a public download are offered (``DOWNLOADS``: ml-100k, ml-latest-small, adult).
    Files are written through a temporary directory and moved into place only when every checksum
    matches. Offline (or on any network error) raises :class:`DataError` saying where to put the files by
    hand. Existing files are kept unless ``overwrite``. Returns the dataset folder.
    """
    if name not in DOWNLOADS:
        raise data_error(f"no public download is registered for dataset {name!r}",
                         fix=f"downloads exist for {sorted(DOWNLOADS)}; put {_help(name)[0]} into "
                             f"<data_dir>/{name}/ by hand (from {_help(name)[1]})")
    spec = DOWNLOADS[name]
    target = Path(data_dir).expanduser() / name
    if not overwrite and all((target / f).is_file() for f in spec.members.values()):
        return target
    try:
        payload = _fetch(spec.url)
    except Exception as exc:  # URLError, timeouts, DNS failures, ...
        raise data_error(f"could not download {spec.url} ({type(exc).__name__}: {exc})", path=target,
                         fix=f"when offline, download {spec.url} elsewhere and put {_help(name)[0]} into "
                             f"{target}/ ({', '.join(spec.members.values())})") from exc
    with tempfile.TemporaryDirectory(dir=Path(data_dir).expanduser() if Path(data_dir).expanduser().is_dir()
                                     else None) as tmp:
        tmpdir = Path(tmp)
        if spec.archive == "zip":
            try:
                zf = zipfile.ZipFile(io.BytesIO(payload))
            except zipfile.BadZipFile as exc:
                raise data_error(f"the download from {spec.url} is not a valid zip archive", path=target,
                                 fix="retry later or download it by hand") from exc
            names = set(zf.namelist())
            for member, out in spec.members.items():
                if member not in names:
                    raise data_error(f"archive {spec.url} lacks {member}", path=target,
                                     fix="the upstream archive changed; download it by hand")
                (tmpdir / out).write_bytes(zf.read(member))
        else:
            (tmpdir / spec.members[None]).write_bytes(payload)
        for out in spec.members.values():
            expected = spec.sha256.get(out)
            actual = sha256_file(tmpdir / out)
            if expected is not None and actual != expected:
                raise data_error(f"downloaded {out} has SHA-256 {actual}, expected the pinned {expected}",
                                 path=target / out,
                                 fix="the upstream file changed or the transfer was corrupted; nothing was "
                                     "written. Retry, or put a verified copy there by hand")
        target.mkdir(parents=True, exist_ok=True)
        for out in spec.members.values():
            shutil.move(str(tmpdir / out), str(target / out))
    return target
