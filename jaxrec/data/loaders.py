"""Loaders for every dataset of the shared data directory (see its README.md).

Each loader takes ``data_dir`` (``None`` = ``$JAXREC_DATA``) and ``verify`` (check ``SHA256SUMS``), reads
the files strictly -- a wrong column count, a non-numeric id, a rating out of range, an unknown id or a
blank line in the middle of a file raises :class:`DataError` naming the file and the 1-based line --
and re-indexes ids densely while keeping the raw ids (``user_ids``/``item_ids``). Nothing is skipped.

=====================  ===============================================================================
loader                 returns
=====================  ===============================================================================
load_ml100k            Interactions: 100,000 ratings 1..5 with timestamps; user features age, gender,
                       occupation, zip; item features genre (multi-hot [n, 19]), first_genre, year
load_ml_latest_small   Interactions: 100,836 ratings 0.5..5 with timestamps over the 9,742 catalogue movies
                       (18 have no rating); item feature genre (multi-hot)
load_ml1m_melu         ColdStartTasks: MeLU user/item features and support/query tasks of a cold state
load_sequences         Sequences: Amazon_Beauty, Amazon_Sports_and_Outdoors, Amazon_Toys_and_Games, Yelp
load_adult             Tabular: 32,561 rows, 6 numeric + 8 categorical columns, label >50K
load_adult_test        Tabular: adult.test, 16,281 rows, categories indexed by the training vocabulary
load_lastfm            LastFM: train/test Interactions (play counts) and the trust edges
load_dataset           dispatch by name (also the offline synthetic sets)
=====================  ===============================================================================
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from . import synthetic
from .errors import data_error
from .paths import data_file
from .types import ColdStartTasks, Interactions, LastFM, Sequences, Tabular

__all__ = [
    "SEQUENCE_DATASETS", "DATASETS", "load_dataset", "load_ml100k", "load_ml_latest_small",
    "load_ml1m_melu", "load_ml1m_melu_interactions", "load_sequences", "load_adult", "load_adult_test", "load_lastfm",
    "interactions_to_sequences",
]

SEQUENCE_DATASETS = ("Amazon_Beauty", "Amazon_Sports_and_Outdoors", "Amazon_Toys_and_Games", "Yelp")
MELU_STATES = ("user_cold_state", "item_cold_state", "user_and_item_cold_state")

# ------------------------------------------------------------------------------------------ primitives


def _read_lines(path: Path, encoding: str = "utf-8") -> list[str]:
    """Decoded lines of ``path`` (``\\n`` or ``\\r\\n``), trailing blank lines removed; a decoding error
    raises :class:`DataError` with the line number."""
    raw = path.read_bytes()
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise data_error(f"bytes that are not valid {encoding} ({exc.reason})", path=path, line=line,
                         fix="restore the original file; it must be " + encoding + " text") from exc
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise data_error("the file is empty", path=path, fix="restore the original file")
    return lines


def _split_rows(path: Path, lines: list[str], sep: str | None, names: tuple[str, ...], first_line: int = 1,
                strip: bool = False) -> list[list[str]]:
    """Split each line on ``sep`` (whitespace when None) and check the column count is ``len(names)``."""
    ncols = len(names)
    rows = [ln.split(sep) for ln in lines]
    if strip:
        rows = [[c.strip() for c in r] for r in rows]
    counts = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    bad = np.flatnonzero(counts != ncols)
    if bad.size:
        i = int(bad[0])
        sep_name = {None: "whitespace", "\t": "tab", ",": "comma", "|": "'|'", "::": "'::'"}.get(sep, repr(sep))
        if not lines[i].strip():
            problem = f"blank line (expected {ncols} {sep_name}-separated columns: {', '.join(names)})"
        else:
            problem = (f"wrong column count: expected {ncols} {sep_name}-separated columns "
                       f"({', '.join(names)}), found {counts[i]}")
        raise data_error(problem, path=path, line=first_line + i,
                         fix="the file is malformed; restore the original (checksums: SHA256SUMS)")
    return rows


def _to_numeric(path: Path, values, name: str, kind: str, first_line: int = 1) -> np.ndarray:
    """Convert a column of strings to int64 (``kind='int'``) or float64; a bad value raises with its line."""
    dtype = np.int64 if kind == "int" else np.float64
    try:
        out = np.array(values, dtype=dtype)
    except (ValueError, OverflowError):
        out = None
    if out is not None and kind == "float" and not np.all(np.isfinite(out)):
        i = int(np.flatnonzero(~np.isfinite(out))[0])
        raise data_error(f"non-finite {name} {values[i]!r}", path=path, line=first_line + i,
                         fix="the file is malformed; restore the original")
    if out is not None:
        return out
    conv = int if kind == "int" else float
    for i, v in enumerate(values):
        try:
            conv(v)
        except (ValueError, OverflowError):
            what = "an integer" if kind == "int" else "a number"
            raise data_error(f"non-numeric {name} {v!r} (expected {what})", path=path, line=first_line + i,
                             fix="the file is malformed; restore the original (checksums: SHA256SUMS)") from None
    raise data_error(f"could not parse column {name}", path=path)  # pragma: no cover


def _check_range(path: Path, values: np.ndarray, name: str, ok: np.ndarray, rule: str, first_line: int = 1):
    bad = np.flatnonzero(~ok)
    if bad.size:
        i = int(bad[0])
        v = values[i].item() if isinstance(values[i], np.generic) else values[i]
        raise data_error(f"{name} {v!r} out of range (expected {rule})", path=path, line=first_line + i,
                         fix="the file is malformed; restore the original")


def _index_of(path: Path, raw: np.ndarray, known: np.ndarray, name: str, source: str, first_line: int = 1):
    """Dense index of each raw id in the sorted array ``known``; an unknown id raises with its line."""
    pos = np.searchsorted(known, raw)
    pos_c = np.minimum(pos, len(known) - 1)
    bad = np.flatnonzero(known[pos_c] != raw)
    if bad.size:
        i = int(bad[0])
        raise data_error(f"{name} {int(raw[i])} does not appear in {source}", path=path, line=first_line + i,
                         fix=f"the files are inconsistent; restore the original {source}")
    return pos.astype(np.int32)


def _unique_sorted(path: Path, raw: np.ndarray, name: str, first_line: int = 1) -> np.ndarray:
    """Sorted raw ids of a catalogue file; a duplicate raises with the line of its second occurrence."""
    order = np.argsort(raw, kind="stable")
    s = raw[order]
    dup = np.flatnonzero(s[1:] == s[:-1])
    if dup.size:
        i = int(order[dup[0] + 1])
        raise data_error(f"duplicate {name} {int(raw[i])}", path=path, line=first_line + i,
                         fix="each id must appear once; restore the original file")
    return s


def _vocab_index(values, vocab: list | None = None) -> tuple[np.ndarray, list]:
    """Index of each value in ``vocab`` (default: sorted unique values); values missing from a given vocab
    are appended to it in sorted order (so nothing is lost)."""
    values = list(values)
    if vocab is None:
        vocab = sorted(set(values))
    else:
        vocab = list(vocab)
        seen = set(vocab)
        vocab += sorted({v for v in values if v not in seen})
    lookup = {v: k for k, v in enumerate(vocab)}
    return np.fromiter((lookup[v] for v in values), dtype=np.int32, count=len(values)), vocab


# ------------------------------------------------------------------------------------------ MovieLens


def load_ml100k(data_dir=None, *, verify: bool = True) -> Interactions:
    """MovieLens 100K: all 100,000 ratings (1..5, integer) of 943 users on 1,682 movies, with timestamps.

    Users are indexed over ``u.user`` and items over ``u.item`` (sorted raw ids). Features:
    ``user_features`` age (years), gender / occupation / zip (indices into ``vocab``);
    ``item_features`` genre (int32 multi-hot [n_items, 19], columns = ``vocab['genre']``), first_genre
    (index of the first set genre column, 0 = "unknown" when none is set) and year (release year, -1 if
    the date is missing). ``vocab['title']`` holds the movie titles.
    """
    path = data_file(data_dir, "ml-100k", "u.user", verify=verify)
    rows = _split_rows(path, _read_lines(path), "|", ("user id", "age", "gender", "occupation", "zip code"))
    cols = list(zip(*rows))
    uid_raw = _to_numeric(path, cols[0], "user id", "int")
    age = _to_numeric(path, cols[1], "age", "int")
    _check_range(path, age, "age", (age > 0) & (age < 130), "1..129")
    u_order = np.argsort(uid_raw, kind="stable")
    user_ids = _unique_sorted(path, uid_raw, "user id")
    gender, gender_vocab = _vocab_index(cols[2])
    occupation, occ_vocab = _vocab_index(cols[3])
    zipc, zip_vocab = _vocab_index(cols[4])

    ipath = data_file(data_dir, "ml-100k", "u.item", verify=verify)
    genre_names = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                   "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
                   "Sci-Fi", "Thriller", "War", "Western"]
    irows = _split_rows(ipath, _read_lines(ipath, "latin-1"), "|",
                        ("movie id", "title", "release date", "video release date", "IMDb URL", *genre_names))
    icols = list(zip(*irows))
    iid_raw = _to_numeric(ipath, icols[0], "movie id", "int")
    i_order = np.argsort(iid_raw, kind="stable")
    item_ids = _unique_sorted(ipath, iid_raw, "movie id")
    genre = np.stack([_to_numeric(ipath, icols[5 + g], f"genre flag {name!r}", "int")
                      for g, name in enumerate(genre_names)], axis=1)
    _check_range(ipath, genre.max(axis=1), "genre flag", np.all((genre == 0) | (genre == 1), axis=1), "0 or 1")
    year = np.array([int(d[-4:]) if len(d) >= 4 and d[-4:].isdigit() else -1 for d in icols[2]], dtype=np.int32)
    first_genre = np.where(genre.any(axis=1), genre.argmax(axis=1), 0).astype(np.int32)

    rpath = data_file(data_dir, "ml-100k", "u.data", verify=verify)
    rrows = _split_rows(rpath, _read_lines(rpath), "\t", ("user id", "item id", "rating", "timestamp"))
    rcols = list(zip(*rrows))
    u_raw = _to_numeric(rpath, rcols[0], "user id", "int")
    i_raw = _to_numeric(rpath, rcols[1], "item id", "int")
    rating = _to_numeric(rpath, rcols[2], "rating", "int")
    ts = _to_numeric(rpath, rcols[3], "timestamp", "int")
    _check_range(rpath, rating, "rating", (rating >= 1) & (rating <= 5), "an integer 1..5")
    _check_range(rpath, ts, "timestamp", ts >= 0, ">= 0")
    user = _index_of(rpath, u_raw, user_ids, "user id", "u.user")
    item = _index_of(rpath, i_raw, item_ids, "item id", "u.item")
    return Interactions(
        user=user, item=item, n_users=len(user_ids), n_items=len(item_ids), rating=rating.astype(np.float32),
        timestamp=ts, user_ids=user_ids, item_ids=item_ids,
        user_features={"age": age[u_order].astype(np.int32), "gender": gender[u_order],
                       "occupation": occupation[u_order], "zip": zipc[u_order]},
        item_features={"genre": genre[i_order].astype(np.int32), "first_genre": first_genre[i_order],
                       "year": year[i_order]},
        vocab={"gender": gender_vocab, "occupation": occ_vocab, "zip": zip_vocab, "genre": genre_names,
               "title": [icols[1][k] for k in i_order]},
        name="ml-100k")


def load_ml_latest_small(data_dir=None, *, verify: bool = True) -> Interactions:
    """MovieLens latest-small: 100,836 ratings (0.5..5 in steps of 0.5) of 610 users, with timestamps.

    Items are indexed over the whole catalogue ``movies.csv`` (9,742 movies; 18 of them have no rating --
    use :func:`jaxrec.data.k_core` with ``k=1`` to drop them); users over the ids in ``ratings.csv``.
    ``item_features['genre']`` is a multi-hot int32 matrix over ``vocab['genre']`` (which includes the
    value "(no genres listed)"); ``vocab['title']`` holds the titles.
    """
    mpath = data_file(data_dir, "ml-latest-small", "movies.csv", verify=verify)
    lines = _read_lines(mpath)
    if lines[0].strip() != "movieId,title,genres":
        raise data_error(f"unexpected header {lines[0]!r} (expected 'movieId,title,genres')", path=mpath, line=1,
                         fix="restore the original movies.csv")
    try:
        mrows = list(csv.reader(io.StringIO("\n".join(lines[1:]), newline="")))
    except csv.Error as exc:
        raise data_error(f"malformed CSV ({exc})", path=mpath, fix="restore the original movies.csv") from exc
    if len(mrows) != len(lines) - 1:  # a quoted field spanning lines would shift line numbers
        raise data_error("a quoted field spans several lines", path=mpath, fix="restore the original movies.csv")
    for k, r in enumerate(mrows):
        if len(r) != 3:
            raise data_error(f"wrong column count: expected 3 comma-separated columns (movieId, title, genres), "
                             f"found {len(r)}", path=mpath, line=k + 2, fix="restore the original movies.csv")
    mid_raw = _to_numeric(mpath, [r[0] for r in mrows], "movieId", "int", first_line=2)
    m_order = np.argsort(mid_raw, kind="stable")
    item_ids = _unique_sorted(mpath, mid_raw, "movieId", first_line=2)
    genres = [r[2].split("|") for r in mrows]
    genre_vocab = sorted({g for gs in genres for g in gs})
    gidx = {g: k for k, g in enumerate(genre_vocab)}
    genre = np.zeros((len(mrows), len(genre_vocab)), np.int32)
    rr = np.repeat(np.arange(len(mrows)), [len(gs) for gs in genres])
    genre[rr, [gidx[g] for gs in genres for g in gs]] = 1

    rpath = data_file(data_dir, "ml-latest-small", "ratings.csv", verify=verify)
    lines = _read_lines(rpath)
    if lines[0].strip() != "userId,movieId,rating,timestamp":
        raise data_error(f"unexpected header {lines[0]!r} (expected 'userId,movieId,rating,timestamp')",
                         path=rpath, line=1, fix="restore the original ratings.csv")
    rows = _split_rows(rpath, lines[1:], ",", ("userId", "movieId", "rating", "timestamp"), first_line=2)
    cols = list(zip(*rows))
    u_raw = _to_numeric(rpath, cols[0], "userId", "int", first_line=2)
    i_raw = _to_numeric(rpath, cols[1], "movieId", "int", first_line=2)
    rating = _to_numeric(rpath, cols[2], "rating", "float", first_line=2)
    ts = _to_numeric(rpath, cols[3], "timestamp", "int", first_line=2)
    _check_range(rpath, rating, "rating", (rating >= 0.5) & (rating <= 5) & (rating * 2 == np.round(rating * 2)),
                 "0.5..5 in steps of 0.5", first_line=2)
    _check_range(rpath, ts, "timestamp", ts >= 0, ">= 0", first_line=2)
    user_ids, user = np.unique(u_raw, return_inverse=True)
    item = _index_of(rpath, i_raw, item_ids, "movieId", "movies.csv", first_line=2)
    return Interactions(
        user=user.astype(np.int32), item=item, n_users=len(user_ids), n_items=len(item_ids),
        rating=rating.astype(np.float32), timestamp=ts, user_ids=user_ids, item_ids=item_ids,
        item_features={"genre": genre[m_order]}, vocab={"genre": genre_vocab, "title": [mrows[k][1] for k in m_order]},
        name="ml-latest-small")


def _melu_vocab(data_dir, name: str, verify: bool) -> list[str]:
    path = data_file(data_dir, "ml-1m-melu", f"m_{name}.txt", verify=verify)
    return [ln.strip() for ln in _read_lines(path) if ln.strip()]


def _padded_lists(lists: list[list[int]]) -> np.ndarray:
    width = max(1, max(len(x) for x in lists))
    out = np.full((len(lists), width), -1, np.int32)
    for k, x in enumerate(lists):
        out[k, : len(x)] = x
    return out


def _load_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise data_error(f"invalid JSON ({exc.msg}, column {exc.colno})", path=path, line=exc.lineno,
                         fix="restore the original file") from exc


def load_ml1m_melu_interactions(data_dir=None, state: str = "user_cold_state", *, verify: bool = True) -> Interactions:
    """All ratings of one MeLU cold state (``user_cold_state``, ``item_cold_state`` or
    ``user_and_item_cold_state``) as :class:`Interactions` over all 6,040 users of ``users.dat`` and all
    3,881 movies of ``movies_extrainfos.dat``, with the MeLU features.

    ``user_features``: gender, age, occupation, zip (int32 indices into ``vocab``). ``item_features``:
    rate (index), year, genre (multi-hot int32 [n, n_genre]), director / actor (padded index lists, -1 =
    padding). Vocabularies start from the ``m_*.txt`` files; values the data uses that those files lack
    ("N/A", ZIP+4 codes, "(co-director)" entries) are appended, so nothing is dropped. The ``timestamp``
    is the rating's position in the user's JSON list (the MeLU files carry no times).
    """
    if state not in MELU_STATES:
        raise data_error(f"unknown ml-1m-melu state {state!r}", fix=f"use one of {MELU_STATES}")
    upath = data_file(data_dir, "ml-1m-melu", "users.dat", verify=verify)
    urows = _split_rows(upath, _read_lines(upath), "::", ("user id", "gender", "age", "occupation", "zip"))
    ucols = list(zip(*urows))
    uid_raw = _to_numeric(upath, ucols[0], "user id", "int")
    u_order = np.argsort(uid_raw, kind="stable")
    user_ids = _unique_sorted(upath, uid_raw, "user id")
    vocab, ufeat = {}, {}
    for k, f in ((1, "gender"), (2, "age"), (3, "occupation"), (4, "zipcode")):
        idx, vocab[f] = _vocab_index(ucols[k], _melu_vocab(data_dir, f, verify))
        ufeat[f] = idx[u_order]

    mpath = data_file(data_dir, "ml-1m-melu", "movies_extrainfos.dat", verify=verify)
    mrows = _split_rows(mpath, _read_lines(mpath), "::",
                        ("movie id", "title", "year", "rate", "released", "genre", "director", "writer",
                         "actors", "plot", "poster"))
    mcols = list(zip(*mrows))
    mid_raw = _to_numeric(mpath, mcols[0], "movie id", "int")
    m_order = np.argsort(mid_raw, kind="stable")
    item_ids = _unique_sorted(mpath, mid_raw, "movie id")
    year = _to_numeric(mpath, mcols[2], "year", "int")
    ifeat = {"year": year[m_order].astype(np.int32)}
    rate, vocab["rate"] = _vocab_index(mcols[3], _melu_vocab(data_dir, "rate", verify))
    ifeat["rate"] = rate[m_order]
    for k, f in ((5, "genre"), (6, "director"), (8, "actor")):
        lists = [[v.strip() for v in s.split(",")] for s in mcols[k]]
        flat, vocab[f] = _vocab_index([v for x in lists for v in x], _melu_vocab(data_dir, f, verify))
        split = np.split(flat, np.cumsum([len(x) for x in lists])[:-1])
        split = [split[j] for j in m_order]
        if f == "genre":
            multi = np.zeros((len(split), len(vocab[f])), np.int32)
            multi[np.repeat(np.arange(len(split)), [len(x) for x in split]), np.concatenate(split)] = 1
            ifeat[f] = multi
        else:
            ifeat[f] = _padded_lists([list(x) for x in split])
    vocab["title"] = [mcols[1][j] for j in m_order]

    xpath = data_file(data_dir, "ml-1m-melu", f"{state}.json", verify=verify)
    ypath = data_file(data_dir, "ml-1m-melu", f"{state}_y.json", verify=verify)
    xs, ys = _load_json(xpath), _load_json(ypath)
    if not isinstance(xs, dict) or not isinstance(ys, dict):
        raise data_error("expected a JSON object mapping user id -> list", path=xpath if not isinstance(xs, dict)
                         else ypath, fix="restore the original file")
    if set(xs) != set(ys):
        extra = sorted(set(xs) ^ set(ys))[:3]
        raise data_error(f"{xpath.name} and {ypath.name} list different users (e.g. {extra})", path=ypath,
                         fix="restore the original pair of files")
    users_raw, items_raw, ratings, pos = [], [], [], []
    for key in xs:
        mv, rt = xs[key], ys[key]
        if not isinstance(mv, list) or not isinstance(rt, list) or len(mv) != len(rt):
            raise data_error(f"user {key}: {len(mv) if isinstance(mv, list) else '?'} movies but "
                             f"{len(rt) if isinstance(rt, list) else '?'} ratings", path=ypath,
                             fix="restore the original pair of files")
        users_raw += [key] * len(mv)
        items_raw += mv
        ratings += rt
        pos += range(len(mv))
    try:
        u_raw = np.array(users_raw, dtype=np.int64)
        i_raw = np.array(items_raw, dtype=np.int64)
    except (ValueError, TypeError) as exc:
        raise data_error(f"non-numeric user or movie id ({exc})", path=xpath, fix="restore the original file") from exc
    try:
        r = np.array(ratings, dtype=np.float64)
    except (ValueError, TypeError) as exc:
        raise data_error(f"non-numeric rating ({exc})", path=ypath, fix="restore the original file") from exc
    bad = np.flatnonzero(~((r >= 1) & (r <= 5) & (r == np.round(r))))
    if bad.size:
        raise data_error(f"rating {ratings[bad[0]]!r} of user {users_raw[bad[0]]} out of range (expected an "
                         f"integer 1..5)", path=ypath, fix="restore the original file")
    for raw, known, what, p in ((u_raw, user_ids, "user id", xpath), (i_raw, item_ids, "movie id", xpath)):
        pos_k = np.minimum(np.searchsorted(known, raw), len(known) - 1)
        miss = np.flatnonzero(known[pos_k] != raw)
        if miss.size:
            src = "users.dat" if what == "user id" else "movies_extrainfos.dat"
            raise data_error(f"{what} {raw[miss[0]]} does not appear in {src}", path=p,
                             fix=f"the files are inconsistent; restore the original {src}")
    return Interactions(
        user=np.searchsorted(user_ids, u_raw).astype(np.int32), item=np.searchsorted(item_ids, i_raw).astype(np.int32),
        n_users=len(user_ids), n_items=len(item_ids), rating=r.astype(np.float32), timestamp=np.array(pos, np.int64),
        user_ids=user_ids, item_ids=item_ids, user_features=ufeat, item_features=ifeat, vocab=vocab,
        name=f"ml-1m-melu/{state}")


def load_ml1m_melu(data_dir=None, state: str = "user_cold_state", *, n_query: int = 10, min_ratings: int = 13,
                   max_ratings: int = 100, seed: int = 0, verify: bool = True) -> ColdStartTasks:
    """MeLU cold-start tasks: one task per user of ``state`` with ``min_ratings <= n_u <= max_ratings``
    ratings (MeLU's rule); a seeded shuffle of each user's ratings puts ``n_query`` of them in the query set
    and the rest in the support set. See :func:`load_ml1m_melu_interactions` for the features and
    :func:`jaxrec.data.splits.cold_start_tasks` for the split (``n_filtered`` counts users outside the
    bounds)."""
    from .splits import cold_start_tasks

    inter = load_ml1m_melu_interactions(data_dir, state, verify=verify)
    return cold_start_tasks(inter, n_query=n_query, min_ratings=min_ratings, max_ratings=max_ratings, seed=seed)


# ------------------------------------------------------------------------------------------ sequences


def load_sequences(name: str, data_dir=None, *, verify: bool = True) -> Sequences:
    """A 5-core sequence dataset (``Amazon_Beauty``, ``Amazon_Sports_and_Outdoors``,
    ``Amazon_Toys_and_Games``, ``Yelp``): one line per user, ``user_id item_id item_id ...`` in time order.

    Items are re-indexed to ``1..n_items`` by sorted raw id (0 = padding; ``item_ids[k]`` = raw id); users
    keep the file order (``user_ids`` = raw ids). A user listed twice, a line without items or a
    non-integer token raises :class:`DataError`. Repeated items within a sequence are kept (Yelp has some).
    """
    if name not in SEQUENCE_DATASETS:
        raise data_error(f"unknown sequence dataset {name!r}", fix=f"use one of {SEQUENCE_DATASETS}")
    path = data_file(data_dir, name, f"{name}.txt", verify=verify)
    lines = _read_lines(path)
    rows = []
    for k, ln in enumerate(lines):
        toks = ln.split()
        if len(toks) < 2:
            what = "blank line" if not toks else f"user {toks[0]} has no items"
            raise data_error(f"{what} (expected 'user_id item_id item_id ...')", path=path, line=k + 1,
                             fix="the file is malformed; restore the original")
        try:
            rows.append(np.array(toks, dtype=np.int64))
        except ValueError:
            bad = next(t for t in toks if not t.lstrip("-").isdigit())
            raise data_error(f"non-numeric id {bad!r} (expected integer ids)", path=path, line=k + 1,
                             fix="the file is malformed; restore the original") from None
    user_raw = np.array([r[0] for r in rows])
    _unique_sorted(path, user_raw, "user id")
    lengths = np.array([len(r) - 1 for r in rows])
    flat = np.concatenate([r[1:] for r in rows])
    item_ids, dense = np.unique(flat, return_inverse=True)
    dense = (dense + 1).astype(np.int32)
    seqs = np.split(dense, np.cumsum(lengths)[:-1])
    return Sequences(seqs=seqs, n_items=len(item_ids), item_ids=np.concatenate([[-1], item_ids]),
                     user_ids=user_raw, name=name)


def interactions_to_sequences(inter: Interactions) -> Sequences:
    """Each user's items ordered by ``timestamp`` (ties keep input order) as :class:`Sequences` with item
    ids shifted to ``1..n_items``. Users without interactions get empty sequences."""
    if inter.timestamp is None:
        raise data_error("interactions_to_sequences needs timestamps", fix="load a dataset with timestamps")
    order = np.lexsort((np.arange(len(inter)), inter.timestamp, inter.user))
    items = inter.item[order] + 1
    counts = inter.user_degree()
    seqs = np.split(items.astype(np.int32), np.cumsum(counts)[:-1])
    return Sequences(seqs=seqs, n_items=inter.n_items, item_ids=np.concatenate([[-1], inter.item_ids]),
                     user_ids=inter.user_ids, name=inter.name)


# ------------------------------------------------------------------------------------------ tabular


ADULT_COLUMNS = ("age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation",
                 "relationship", "race", "sex", "capital-gain", "capital-loss", "hours-per-week",
                 "native-country", "income")
ADULT_NUMERIC = ("age", "fnlwgt", "education-num", "capital-gain", "capital-loss", "hours-per-week")


def load_adult(data_dir=None, *, verify: bool = True) -> Tabular:
    """UCI Adult: 32,561 rows; ``x_num`` float32[n, 6] (age, fnlwgt, education-num, capital-gain,
    capital-loss, hours-per-week), ``x_cat`` int32[n, 8] (workclass, education, marital-status,
    occupation, relationship, race, sex, native-country; the missing marker "?" is kept as its own
    category), ``y`` = 1 for income ">50K" (a trailing "." as in adult.test is accepted)."""
    path = data_file(data_dir, "adult", "adult.data", verify=verify)
    rows = _split_rows(path, _read_lines(path), ",", ADULT_COLUMNS, strip=True)
    cols = dict(zip(ADULT_COLUMNS, zip(*rows)))
    x_num = np.stack([_to_numeric(path, cols[c], c, "float") for c in ADULT_NUMERIC], axis=1).astype(np.float32)
    cat_names = [c for c in ADULT_COLUMNS[:-1] if c not in ADULT_NUMERIC]
    x_cat, cat_vocab = [], []
    for c in cat_names:
        idx, voc = _vocab_index(cols[c])
        x_cat.append(idx)
        cat_vocab.append(voc)
    labels = [v.rstrip(".") for v in cols["income"]]
    ok = np.array([v in ("<=50K", ">50K") for v in labels])
    _check_range(path, np.array(cols["income"], dtype=object), "income label", ok, "'<=50K' or '>50K'")
    y = np.array([v == ">50K" for v in labels], dtype=np.int32)
    return Tabular(x_num=x_num, x_cat=np.stack(x_cat, axis=1), y=y, num_names=list(ADULT_NUMERIC),
                   cat_names=cat_names, cat_vocab=cat_vocab, label_vocab=["<=50K", ">50K"], name="adult")


def load_adult_test(data_dir=None, cat_vocab: list | None = None, *, verify: bool = True) -> Tabular:
    """UCI Adult's official test file ``adult.test`` (16,281 rows; labels end with a period, ``>50K.``;
    a first line starting with ``|``, the original file's "1x3 Cross validator" note, is skipped) in the
    layout of :func:`load_adult`. ``cat_vocab`` (``load_adult(...).cat_vocab``) indexes the categories
    as in the training file; a category it does not hold raises :class:`DataError` with its line (the
    missing marker ``?`` is a category like any other). Without ``cat_vocab`` each column gets its own
    sorted vocabulary."""
    path = data_file(data_dir, "adult", "adult.test", verify=verify)
    lines = _read_lines(path)
    first = 1
    if lines[0].startswith("|"):
        lines, first = lines[1:], 2
    rows = _split_rows(path, lines, ",", ADULT_COLUMNS, first_line=first, strip=True)
    cols = dict(zip(ADULT_COLUMNS, zip(*rows)))
    x_num = np.stack([_to_numeric(path, cols[c], c, "float", first_line=first) for c in ADULT_NUMERIC],
                     axis=1).astype(np.float32)
    cat_names = [c for c in ADULT_COLUMNS[:-1] if c not in ADULT_NUMERIC]
    x_cat, vocab_out = [], []
    for j, c in enumerate(cat_names):
        if cat_vocab is None:
            idx, voc = _vocab_index(cols[c])
        else:
            voc = list(cat_vocab[j])
            lookup = {v: k for k, v in enumerate(voc)}
            unknown = [i for i, v in enumerate(cols[c]) if v not in lookup]
            if unknown:
                i = unknown[0]
                raise data_error(f"unknown {c} {cols[c][i]!r} (not a category of adult.data; "
                                 f"{len(unknown)} row(s) of adult.test have unknown {c} values)", path=path,
                                 line=first + i, fix="use the original adult.data / adult.test pair")
            idx = np.fromiter((lookup[v] for v in cols[c]), dtype=np.int32, count=len(rows))
        x_cat.append(idx)
        vocab_out.append(voc)
    labels = [v.rstrip(".") for v in cols["income"]]
    ok = np.array([v in ("<=50K", ">50K") for v in labels])
    _check_range(path, np.array(cols["income"], dtype=object), "income label", ok, "'<=50K.' or '>50K.'",
                 first_line=first)
    y = np.array([v == ">50K" for v in labels], dtype=np.int32)
    return Tabular(x_num=x_num, x_cat=np.stack(x_cat, axis=1), y=y, num_names=list(ADULT_NUMERIC),
                   cat_names=cat_names, cat_vocab=vocab_out, label_vocab=["<=50K", ">50K"], name="adult-test")


# ------------------------------------------------------------------------------------------ lastfm


def load_lastfm(data_dir=None, *, verify: bool = True) -> LastFM:
    """Last.fm HetRec 2011 as split by the LightGCN authors: ``data1.txt`` (train) and ``test1.txt`` (test),
    tab-separated ``user artist count``, and ``trustnetwork.txt`` (``user user``).

    Users are indexed over every id in the three files (1,892, the LightGCN count; 12 appear only in the
    trust network), artists over the interaction files (4,489). ``rating`` holds the play count (> 0).
    """
    parts = {}
    for split, fname in (("train", "data1.txt"), ("test", "test1.txt")):
        path = data_file(data_dir, "lastfm", fname, verify=verify)
        rows = _split_rows(path, _read_lines(path), None, ("user", "artist", "count"))
        cols = list(zip(*rows))
        u = _to_numeric(path, cols[0], "user id", "int")
        i = _to_numeric(path, cols[1], "artist id", "int")
        c = _to_numeric(path, cols[2], "play count", "float")
        _check_range(path, c, "play count", c > 0, "> 0")
        parts[split] = (u, i, c)
    tpath = data_file(data_dir, "lastfm", "trustnetwork.txt", verify=verify)
    trows = _split_rows(tpath, _read_lines(tpath), None, ("user", "user"))
    tcols = list(zip(*trows))
    trust_raw = np.stack([_to_numeric(tpath, tcols[0], "user id", "int"),
                          _to_numeric(tpath, tcols[1], "user id", "int")], axis=1)
    user_ids = np.unique(np.concatenate([parts["train"][0], parts["test"][0], trust_raw.ravel()]))
    item_ids = np.unique(np.concatenate([parts["train"][1], parts["test"][1]]))
    out = {}
    for split, (u, i, c) in parts.items():
        out[split] = Interactions(user=np.searchsorted(user_ids, u), item=np.searchsorted(item_ids, i),
                                  n_users=len(user_ids), n_items=len(item_ids), rating=c,
                                  user_ids=user_ids, item_ids=item_ids, name=f"lastfm/{split}")
    trust = np.searchsorted(user_ids, trust_raw).astype(np.int32)
    return LastFM(train=out["train"], test=out["test"], trust=trust)


# ------------------------------------------------------------------------------------------ dispatch


DATASETS = ("ml-100k", "ml-latest-small", "ml-1m-melu", *SEQUENCE_DATASETS, "adult", "lastfm",
            "synthetic", "synthetic-seq", "synthetic-ratings", "synthetic-ctr")


def load_dataset(name: str, data_dir=None, **kwargs):
    """Load dataset ``name`` (one of ``DATASETS``). Real datasets read ``data_dir`` (None = $JAXREC_DATA);
    ``synthetic`` (implicit clusters -> Interactions), ``synthetic-seq`` (-> Sequences) and
    ``synthetic-ratings`` (-> Interactions with ratings and features) and ``synthetic-ctr`` (Meta-Wrapper's
    interest-group CTR split) need no files; ``kwargs`` go to the
    loader or generator (e.g. ``seed``)."""
    if name == "ml-100k":
        return load_ml100k(data_dir, **kwargs)
    if name == "ml-latest-small":
        return load_ml_latest_small(data_dir, **kwargs)
    if name == "ml-1m-melu":
        return load_ml1m_melu(data_dir, **kwargs)
    if name in SEQUENCE_DATASETS:
        return load_sequences(name, data_dir, **kwargs)
    if name == "adult":
        return load_adult(data_dir, **kwargs)
    if name == "lastfm":
        return load_lastfm(data_dir, **kwargs)
    if name == "synthetic":
        return synthetic.implicit_clusters(**kwargs)
    if name == "synthetic-seq":
        return synthetic.sequences(**kwargs)
    if name == "synthetic-ratings":
        return synthetic.ratings_with_features(**kwargs)
    if name == "synthetic-ctr":
        return synthetic.ctr_rows(**kwargs)
    raise data_error(f"unknown dataset {name!r}", fix=f"use one of {DATASETS}")
