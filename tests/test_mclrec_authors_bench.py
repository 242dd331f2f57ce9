"""The side-by-side benchmark's summary (benchmarks/mclrec_authors.py) on a hand case: window means per
side and the per-batch time ratio ours / theirs. Needs no torch (the torch side is a separate process)."""
import math

import pytest

from benchmarks.mclrec_authors import summarise, to_markdown


def _theirs(i):
    st = {"l_rec": 9.0 + i, "l_cl2": 40.0, "reg": 30.0, "loss": 11.0 + i, "cl2_terms": [18.0, 16.0, 6.0 + i],
          "r_terms": [15.0, 14.0, 1.0]}
    return {"wall_s": 4.0, "stages": {"step1": dict(st), "step2": {"loss": 44.0 - i, "l_cl2": 40.0, "reg": 30.0},
                                      "step3": dict(st)}}


def _ours(i):
    return {"wall_s": 1.0 + (i == 2), "aux": {"loss": 10.0 + i, "l_rec": 9.5 + i, "l_cl1": 0.0, "l_cl2": 30.0,
                                              "reg": 20.0, "phi_loss": 32.0 - i}}


def test_summary_window_means_and_ratio():
    ours, theirs = [_ours(i) for i in range(5)], [_theirs(i) for i in range(5)]
    s = summarise(ours, theirs, window=2)
    assert s["windows"] == ((1, 2), (4, 5))
    rows = {r["label"]: r for r in s["rows"]}
    assert rows["stage 3 L_rec"]["theirs_first"] == pytest.approx(9.5)      # batches 1, 2: 9, 10
    assert rows["stage 3 L_rec"]["ours_last"] == pytest.approx(13.0)        # batches 4, 5: 12.5, 13.5
    assert rows["stage 2 loss (L_cl2 + 0.1 R)"]["ours_first"] == pytest.approx(31.5)
    assert rows["stage 2 loss (L_cl2 + 0.1 R)"]["theirs_last"] == pytest.approx(40.5)
    assert rows["stage 3 L_con(z1, z2)"]["theirs_last"] == pytest.approx(9.5)
    assert math.isnan(rows["stage 1 L_rec"]["ours_first"])                  # ours logs the last stage 1 only
    assert s["ratio"]["per_batch"] == pytest.approx([0.25, 0.25, 0.5, 0.25, 0.25])
    assert (s["ratio"]["median"], s["ratio"]["min"], s["ratio"]["max"]) == pytest.approx((0.25, 0.25, 0.5))
    md = to_markdown(s, {"batches": 5, "cores": "0", "threads": 1, "ragged_width": 0, "ours_median_s": 1.0,
                         "theirs_median_s": 4.0, "load_before": [1.0], "load_after": [2.0], "compile_s": 3.0,
                         "ours_setup_s": 1.0, "theirs_setup_s": 2.0})
    assert "| stage 3 L_rec | 9.5000 | 10.0000 | 12.5000 | 13.0000 |" in md
    assert "median 0.250, min 0.250, max 0.500" in md


def test_summary_uses_the_batches_both_sides_ran():
    s = summarise([_ours(i) for i in range(3)], [_theirs(i) for i in range(2)], window=10)
    assert s["windows"] == ((1, 2), (1, 2)) and len(s["ratio"]["per_batch"]) == 2
    with pytest.raises(ValueError):
        summarise([], [_theirs(0)])
