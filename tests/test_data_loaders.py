"""Loader tests on every real dataset (counts against the published figures or the raw files), the
SHA256SUMS cache, data-dir resolution and the download helper (network replaced by a local fake)."""
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

import jaxrec.data as D
from jaxrec.data import paths

def _raw_lines(path, encoding="utf-8"):
    return [ln for ln in Path(path).read_text(encoding=encoding).splitlines() if ln.strip()]


def test_ml100k_counts_and_features(data_dir):
    x = D.load_ml100k(data_dir)
    assert (x.n_users, x.n_items, len(x)) == (943, 1682, 100_000)
    assert set(np.unique(x.rating)) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert x.timestamp is not None and x.timestamp.min() > 8e8
    # raw id mapping kept: the first line of u.data is "196 242 3 881250949"
    assert x.user_ids[x.user[0]] == 196 and x.item_ids[x.item[0]] == 242 and x.rating[0] == 3
    assert x.item_features["genre"].shape == (1682, 19)
    # Toy Story (item 1) is Animation, Children's, Comedy
    toy = x.item_features["genre"][np.searchsorted(x.item_ids, 1)]
    assert [x.vocab["genre"][k] for k in np.flatnonzero(toy)] == ["Animation", "Children's", "Comedy"]
    assert x.vocab["genre"][x.item_features["first_genre"][0]] == "Animation"
    u1 = np.searchsorted(x.user_ids, 1)  # "1|24|M|technician|85711"
    assert x.user_features["age"][u1] == 24
    assert x.vocab["gender"][x.user_features["gender"][u1]] == "M"
    assert x.vocab["occupation"][x.user_features["occupation"][u1]] == "technician"


def test_ml_latest_small_counts(data_dir):
    x = D.load_ml_latest_small(data_dir)
    assert (x.n_users, x.n_items, len(x)) == (610, 9742, 100_836)
    assert x.rating.min() == 0.5 and x.rating.max() == 5.0
    assert int((x.item_degree() == 0).sum()) == 9742 - len(np.unique(x.item))
    compacted = D.k_core(x, k=1)
    assert compacted.n_items == len(np.unique(x.item)) and len(compacted) == len(x)


@pytest.mark.parametrize("name,counts", [
    ("Amazon_Beauty", (22_363, 12_101, 198_502)),
    ("Amazon_Sports_and_Outdoors", (35_598, 18_357, 296_337)),
    ("Yelp", (30_431, 20_033, 316_354)),
    ("Amazon_Toys_and_Games", None),
])
def test_sequence_counts(data_dir, name, counts):
    s = D.load_sequences(name, data_dir)
    if counts is None:  # no published figure given: count the file independently
        lines = _raw_lines(data_dir / name / f"{name}.txt")
        toks = [ln.split() for ln in lines]
        counts = (len(lines), len({t for r in toks for t in r[1:]}), sum(len(r) - 1 for r in toks))
    assert (s.n_users, s.n_items, s.n_actions) == counts
    flat = np.concatenate(s.seqs)
    assert flat.min() == 1 and flat.max() == s.n_items  # dense 1..n_items, 0 free for padding
    # order and raw ids preserved for the first line
    first = _raw_lines(data_dir / name / f"{name}.txt")[0].split()
    assert s.user_ids[0] == int(first[0])
    assert list(s.item_ids[s.seqs[0]]) == [int(t) for t in first[1:]]


def test_adult(data_dir):
    t = D.load_adult(data_dir)
    assert len(t) == 32_561 and t.x_num.shape == (32_561, 6) and t.x_cat.shape == (32_561, 8)
    lines = _raw_lines(data_dir / "adult" / "adult.data")
    assert int(t.y.sum()) == sum(ln.rstrip().endswith(">50K") for ln in lines)
    # row 0: "39, State-gov, 77516, Bachelors, 13, ..."
    assert t.x_num[0, 0] == 39 and t.x_num[0, 1] == 77516
    assert t.cat_vocab[0][t.x_cat[0, 0]] == "State-gov"
    assert "?" in t.cat_vocab[t.cat_names.index("workclass")]


def test_lastfm(data_dir):
    lf = D.load_lastfm(data_dir)
    tr = np.loadtxt(data_dir / "lastfm" / "data1.txt")
    te = np.loadtxt(data_dir / "lastfm" / "test1.txt")
    tn = np.loadtxt(data_dir / "lastfm" / "trustnetwork.txt", dtype=np.int64)
    assert len(lf.train) == len(tr) and len(lf.test) == len(te) and lf.trust.shape == tn.shape
    assert lf.train.n_users == len(np.unique(np.r_[tr[:, 0], te[:, 0], tn.ravel()])) == 1892
    assert lf.train.n_items == len(np.unique(np.r_[tr[:, 1], te[:, 1]])) == 4489
    np.testing.assert_array_equal(lf.train.user_ids[lf.train.user], tr[:, 0])
    np.testing.assert_array_equal(lf.test.item_ids[lf.test.item], te[:, 1])
    np.testing.assert_allclose(lf.train.rating, tr[:, 2], rtol=1e-6)
    np.testing.assert_array_equal(lf.train.user_ids[lf.trust], tn)


def test_ml1m_melu(data_dir):
    root = data_dir / "ml-1m-melu"
    for state in ("user_cold_state", "item_cold_state", "user_and_item_cold_state"):
        xs = json.loads((root / f"{state}.json").read_text())
        ys = json.loads((root / f"{state}_y.json").read_text())
        inter = D.load_ml1m_melu_interactions(data_dir, state)
        assert len(inter) == sum(len(v) for v in xs.values())
        assert inter.n_users == len(_raw_lines(root / "users.dat"))
        assert inter.n_items == len(_raw_lines(root / "movies_extrainfos.dat"))
        assert np.array_equal(np.sort(inter.rating), np.sort(np.concatenate([ys[k] for k in xs]).astype(np.float32)))
    tasks = D.load_ml1m_melu(data_dir, "user_cold_state", seed=0)
    xs = json.loads((root / "user_cold_state.json").read_text())
    n_ok = sum(13 <= len(v) <= 100 for v in xs.values())
    assert len(tasks) == n_ok and tasks.n_filtered == len(xs) - n_ok
    assert tasks.query_mask.all() and tasks.query_item.shape == (n_ok, 10)
    for t in range(0, len(tasks), 97):  # support + query = the user's ratings
        raw_user = str(tasks.user_ids[tasks.task_user[t]])
        got = np.concatenate([tasks.support_item[t][tasks.support_mask[t]], tasks.query_item[t]])
        assert sorted(tasks.item_ids[got]) == sorted(int(m) for m in xs[raw_user])
    f = tasks.item_features
    assert f["genre"].shape[0] == tasks.n_items and f["director"].min() >= -1 and f["actor"].ndim == 2
    assert "N/A" in tasks.vocab["genre"]  # values missing from m_genre.txt are appended, not dropped


def test_load_dataset_dispatch_and_cache(data_dir, monkeypatch):
    paths.clear_verification_cache()
    calls = []
    real = paths.sha256_file
    monkeypatch.setattr(paths, "sha256_file", lambda p, *a: calls.append(Path(p).name) or real(p, *a))
    a = D.load_dataset("Amazon_Beauty", data_dir)
    assert calls == ["Amazon_Beauty.txt"]
    b = D.load_dataset("Amazon_Beauty", str(data_dir))
    assert calls == ["Amazon_Beauty.txt"]  # verified once per process
    assert a.n_actions == b.n_actions
    assert isinstance(D.load_dataset("synthetic", n_users=50, n_items=60, mean_per_user=10), D.Interactions)


def test_resolve_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXREC_DATA", str(tmp_path))
    assert D.resolve_data_dir(None) == tmp_path
    other = tmp_path / "x"
    other.mkdir()
    assert D.resolve_data_dir(str(other)) == other  # the flag wins over the env var
    monkeypatch.delenv("JAXREC_DATA")
    with pytest.raises(D.DataError, match="--data-dir.*JAXREC_DATA"):
        D.resolve_data_dir(None)
    with pytest.raises(D.DataError, match="does not exist"):
        D.resolve_data_dir(str(tmp_path / "nope"))


def _zip_of(files: dict) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_download_verifies_pinned_checksums(data_dir, tmp_path, monkeypatch):
    src = data_dir / "ml-100k"
    members = {f"ml-100k/{m}": (src / m).read_bytes() for m in D.DOWNLOADS["ml-100k"].members.values()}
    monkeypatch.setattr(paths, "_fetch", lambda url, timeout=60.0: _zip_of(members))
    out = D.download("ml-100k", tmp_path)
    assert D.load_ml100k(tmp_path, verify=False).n_users == 943 and out == tmp_path / "ml-100k"
    # a corrupted archive member is rejected and nothing is written
    members["ml-100k/u.data"] = members["ml-100k/u.data"].replace(b"\t5\t", b"\t4\t", 1)
    with pytest.raises(D.DataError, match="u.data has SHA-256 .* expected the pinned"):
        D.download("ml-100k", tmp_path / "fresh")
    assert not (tmp_path / "fresh" / "ml-100k").exists()


def test_download_offline_message(tmp_path, monkeypatch):
    def offline(url, timeout=60.0):
        raise OSError("network is unreachable")

    monkeypatch.setattr(paths, "_fetch", offline)
    with pytest.raises(D.DataError, match=r"could not download .*adult.data.*put UCI Adult .* into .*adult"):
        D.download("adult", tmp_path)
    with pytest.raises(D.DataError, match="no public download is registered for dataset 'Yelp'"):
        D.download("Yelp", tmp_path)
