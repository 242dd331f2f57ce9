"""Every malformed-input case raises one DataError naming the file, the line and the fix."""
import hashlib
import json
import re
import shutil

import numpy as np
import pytest
import scipy.sparse as sp

import jaxrec.data as D
from jaxrec.data import paths

ML100K_USER = "1|24|M|technician|85711\n2|53|F|other|94043\n"
ML100K_ITEM = ("1|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
               "2|GoldenEye (1995)|01-Jan-1995||http://x|0|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0|1|0|0\n")
ML100K_DATA = "1\t1\t5\t874965758\n1\t2\t3\t876893171\n2\t1\t4\t878542960\n"


def write_ml100k(root, data=ML100K_DATA, user=ML100K_USER, item=ML100K_ITEM):
    d = root / "ml-100k"
    d.mkdir(parents=True, exist_ok=True)
    (d / "u.data").write_text(data)
    (d / "u.user").write_text(user)
    (d / "u.item").write_text(item, encoding="latin-1")
    return root


def err(fn, *args, **kw) -> str:
    with pytest.raises(D.DataError) as info:
        fn(*args, **kw)
    return str(info.value)


def test_small_valid_file_loads(tmp_path):
    x = D.load_ml100k(write_ml100k(tmp_path))
    assert (x.n_users, x.n_items, len(x)) == (2, 2, 3)


def test_missing_file(tmp_path):
    (tmp_path / "ml-100k").mkdir()
    msg = err(D.load_ml100k, tmp_path)
    assert str(tmp_path / "ml-100k" / "u.user") in msg
    assert "missing file" in msg and "download('ml-100k'" in msg and "Put the MovieLens 100K files" in msg


def test_wrong_column_count(tmp_path):
    write_ml100k(tmp_path, data="1\t1\t5\t874965758\n1\t2\t3\n")
    msg = err(D.load_ml100k, tmp_path)
    assert re.search(r"u\.data:2: wrong column count: expected 4 tab-separated columns .* found 3", msg)


def test_non_numeric_id(tmp_path):
    write_ml100k(tmp_path, data="1\t1\t5\t874965758\n1\t2\t3\t876893171\nx7\t1\t4\t878542960\n")
    assert re.search(r"u\.data:3: non-numeric user id 'x7'", err(D.load_ml100k, tmp_path))


def test_rating_out_of_range(tmp_path):
    write_ml100k(tmp_path, data="1\t1\t5\t874965758\n1\t2\t6\t876893171\n")
    assert re.search(r"u\.data:2: rating 6 out of range \(expected an integer 1\.\.5\)", err(D.load_ml100k, tmp_path))


def test_blank_line_in_the_middle(tmp_path):
    write_ml100k(tmp_path, data="1\t1\t5\t874965758\n\n1\t2\t3\t876893171\n")
    assert re.search(r"u\.data:2: blank line", err(D.load_ml100k, tmp_path))


def test_unknown_id(tmp_path):
    write_ml100k(tmp_path, data="1\t1\t5\t874965758\n1\t3\t3\t876893171\n")
    assert re.search(r"u\.data:2: item id 3 does not appear in u\.item", err(D.load_ml100k, tmp_path))


def test_duplicate_catalogue_id(tmp_path):
    write_ml100k(tmp_path, user=ML100K_USER + "2|30|M|other|11111\n")
    assert re.search(r"u\.user:3: duplicate user id 2", err(D.load_ml100k, tmp_path))


def test_checksum_mismatch(tmp_path):
    write_ml100k(tmp_path)
    good = hashlib.sha256((tmp_path / "ml-100k" / "u.user").read_bytes()).hexdigest()
    wrong = "0" * 64
    (tmp_path / "SHA256SUMS").write_text(f"{good}  ./ml-100k/u.user\n{wrong}  ./ml-100k/u.data\n")
    paths.clear_verification_cache()
    msg = err(D.load_ml100k, tmp_path)
    assert "u.data" in msg and "checksum mismatch" in msg and wrong in msg and "restore the original" in msg
    D.load_ml100k(tmp_path, verify=False)  # opt-out works


def test_checksum_detects_change_after_cache(tmp_path):
    write_ml100k(tmp_path)
    digest = hashlib.sha256(ML100K_DATA.encode()).hexdigest()
    (tmp_path / "SHA256SUMS").write_text(f"{digest}  ./ml-100k/u.data\n")
    paths.clear_verification_cache()
    D.load_ml100k(tmp_path)
    (tmp_path / "ml-100k" / "u.data").write_text(ML100K_DATA.replace("\t5\t", "\t4\t") + "2\t2\t1\t1\n")
    assert "checksum mismatch" in err(D.load_ml100k, tmp_path)  # the cache is keyed by size and mtime


def test_malformed_sha256sums(tmp_path):
    write_ml100k(tmp_path)
    (tmp_path / "SHA256SUMS").write_text("abc ./ml-100k/u.data\n")
    paths.clear_verification_cache()
    assert re.search(r"SHA256SUMS:1: malformed checksum line", err(D.load_ml100k, tmp_path))


def test_invalid_encoding(tmp_path):
    write_ml100k(tmp_path)
    (tmp_path / "ml-100k" / "u.data").write_bytes(ML100K_DATA.encode() + b"1\t\xff\t3\t1\n")
    assert re.search(r"u\.data:4: bytes that are not valid utf-8", err(D.load_ml100k, tmp_path))


def _write_seq(root, name, text):
    (root / name).mkdir(parents=True, exist_ok=True)
    (root / name / f"{name}.txt").write_text(text)


def test_sequence_errors(tmp_path):
    _write_seq(tmp_path, "Amazon_Beauty", "1 1 2 3\n2\n")
    assert re.search(r"Amazon_Beauty\.txt:2: user 2 has no items", err(D.load_sequences, "Amazon_Beauty", tmp_path))
    _write_seq(tmp_path, "Amazon_Beauty", "1 1 2 3\n2 4 five\n")
    assert re.search(r"Amazon_Beauty\.txt:2: non-numeric id 'five'", err(D.load_sequences, "Amazon_Beauty", tmp_path))
    _write_seq(tmp_path, "Amazon_Beauty", "1 1 2 3\n2 4 5\n1 7 8\n")
    assert re.search(r"Amazon_Beauty\.txt:3: duplicate user id 1", err(D.load_sequences, "Amazon_Beauty", tmp_path))
    assert "unknown sequence dataset 'Beauty'" in err(D.load_sequences, "Beauty", tmp_path)


def test_ml_latest_small_errors(tmp_path):
    d = tmp_path / "ml-latest-small"
    d.mkdir()
    (d / "movies.csv").write_text('movieId,title,genres\n1,"Toy Story, The (1995)",Comedy\n2,Heat (1995),Action\n')
    (d / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,9\n1,2,5.5,9\n")
    assert re.search(r"ratings\.csv:3: rating 5\.5 out of range", err(D.load_ml_latest_small, tmp_path))
    (d / "ratings.csv").write_text("user,movie,rating,timestamp\n1,1,4.0,9\n")
    assert re.search(r"ratings\.csv:1: unexpected header", err(D.load_ml_latest_small, tmp_path))
    (d / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,9\n1,1.5,4.0,9\n")
    assert re.search(r"ratings\.csv:3: non-numeric movieId '1\.5'", err(D.load_ml_latest_small, tmp_path))


def test_adult_errors(tmp_path):
    (tmp_path / "adult").mkdir()
    good = "39, State-gov, 77516, Bachelors, 13, Never-married, Adm-clerical, Not-in-family, White, Male, 2174, 0, 40, United-States, <=50K"
    (tmp_path / "adult" / "adult.data").write_text(good + "\n" + good.replace("<=50K", "maybe") + "\n\n")
    assert re.search(r"adult\.data:2: income label 'maybe' out of range", err(D.load_adult, tmp_path))
    (tmp_path / "adult" / "adult.data").write_text(good + "\n" + good.replace(", 40,", ", forty,") + "\n")
    assert re.search(r"adult\.data:2: non-numeric hours-per-week 'forty'", err(D.load_adult, tmp_path))


def test_lastfm_errors(tmp_path):
    d = tmp_path / "lastfm"
    d.mkdir()
    (d / "data1.txt").write_text("1\t2\t10\n1\t3\t0\n")
    (d / "test1.txt").write_text("1\t4\t5\n")
    (d / "trustnetwork.txt").write_text("1\t2\n")
    assert re.search(r"data1\.txt:2: play count 0\.0 out of range \(expected > 0\)", err(D.load_lastfm, tmp_path))


def test_melu_json_errors(tmp_path, data_dir):
    src = data_dir / "ml-1m-melu"
    dst = tmp_path / "ml-1m-melu"
    shutil.copytree(src, dst)
    (dst / "user_cold_state_y.json").write_text('{"1": [4,\n 9]')
    assert re.search(r"user_cold_state_y\.json:2: invalid JSON", err(D.load_ml1m_melu, tmp_path, verify=False))
    xs = {"1": ["1", "2"]}
    (dst / "user_cold_state.json").write_text(json.dumps(xs))
    (dst / "user_cold_state_y.json").write_text(json.dumps({"1": [4, 7]}))
    assert "rating 7 of user 1 out of range" in err(D.load_ml1m_melu, tmp_path, verify=False)
    (dst / "user_cold_state_y.json").write_text(json.dumps({"1": [4]}))
    assert "user 1: 2 movies but 1 ratings" in err(D.load_ml1m_melu, tmp_path, verify=False)


def test_empty_split_and_other_runtime_errors():
    one_each = D.Interactions(user=np.arange(5), item=np.arange(5), n_users=5, n_items=6, name="tiny")
    assert "tiny gives an empty test split" in err(D.ratio_split, one_each)
    assert "user 1 has 2" in err(D.leave_one_out, [[1, 2, 3], [1, 2]])
    csr = sp.csr_matrix(np.array([[1, 0], [1, 1]], np.float32))
    assert "user 1 has interacted with all 2 items" in err(D.sample_negatives, 0, [0, 1], csr)
    assert "empty arrays" in err(lambda: next(D.batch_iterator({"u": np.zeros(0)}, 4, 0)))
    assert "unknown dataset 'nope'" in err(D.load_dataset, "nope")
    assert "removed every interaction" in err(D.k_core, one_each, k=2)
