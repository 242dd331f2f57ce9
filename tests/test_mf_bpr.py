"""End-to-end tests for MF-BPR (jaxrec.models.mf, experiments.mf_bpr) and the most-popular baseline."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

from jaxrec import metrics
from jaxrec.methods import popular
from jaxrec.models import mf


def test_mf_scores_are_inner_products():
    params = mf.init(jax.random.PRNGKey(0), 5, 7, dim=3)
    assert params["user"].shape == (5, 3) and params["item"].shape == (7, 3)
    u = jnp.array([0, 4])
    full = np.asarray(mf.score_all(params, u))
    P, Q = np.asarray(params["user"]), np.asarray(params["item"])
    np.testing.assert_allclose(full, P[[0, 4]] @ Q.T, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mf.score(params, u, jnp.array([1, 6])), full[[0, 1], [1, 6]], rtol=1e-5)
    np.testing.assert_allclose(mf.score(params, u, jnp.array([[1, 2], [3, 6]])), full[:, [[1, 2], [3, 6]]][[0, 1], [0, 1]],
                               rtol=1e-5)


def test_popular_ranks_by_training_count():
    train = sp.csr_matrix(np.array([[1, 1, 0, 0], [0, 1, 0, 1], [0, 1, 0, 1], [1, 0, 0, 0]], dtype=np.float32))
    pop = popular.fit(train)
    np.testing.assert_array_equal(np.asarray(pop), [2, 3, 0, 2])
    # user 3 has item 0; test item 2 (never popular) vs item 1 (most popular)
    test = sp.csr_matrix(([1.0], ([3], [1])), shape=(4, 4))
    m = metrics.evaluate_topk(popular.score_fn(pop), [3], train, test, ks=(1,))
    assert m["hit@1"] == 1.0


def _small_split(seed=0):
    from jaxrec.data import ratio_split, synthetic, to_csr

    inter = synthetic.implicit_clusters(n_users=200, n_items=300, n_clusters=5, mean_per_user=30, seed=seed)
    sp_ = ratio_split(inter, 0.2, 0.1, seed=seed)
    shape = (inter.n_users, inter.n_items)
    train, val, test = (to_csr(x, *shape) for x in sp_)
    return {"train": train, "val": val, "test": test, "train_val": ((train + val) > 0).astype(np.float32).tocsr(),
            "n_users": inter.n_users, "n_items": inter.n_items}


def test_mf_bpr_learns_and_beats_popular_on_synthetic():
    from experiments.mf_bpr import Config, eval_test, train_mf

    data = _small_split()
    cfg = Config(dim=16, lr=1e-2, l2=1e-3, epochs=15, patience=5, batch_size=512)
    params, hist = train_mf(cfg, data, seed=0, log=None)
    losses = [h["train"]["loss"] for h in hist]
    assert losses[-1] < 0.5 * losses[0]
    mf_m = eval_test(lambda u: mf.score_all(params, u), data)
    pop_m = eval_test(popular.score_fn(popular.fit(data["train"])), data)
    assert mf_m["recall@20"] > 1.2 * pop_m["recall@20"]
    assert mf_m["ndcg@20"] > 1.15 * pop_m["ndcg@20"]
    # the returned params are the best-validation ones
    val = metrics.evaluate_topk(lambda u: mf.score_all(params, u), None, data["train"], data["val"], ks=(20,))
    assert val["ndcg@20"] == pytest.approx(hist.best_metrics["ndcg@20"], abs=1e-6)
    assert val["ndcg@20"] == pytest.approx(max(h["val"]["ndcg@20"] for h in hist), abs=1e-6)


def test_cli_quick_writes_results(tmp_path, capsys):
    from experiments import mf_bpr

    mf_bpr.main(["--quick", "--seeds", "1", "--out", str(tmp_path), "--lr", "0.01", "0.001"])
    out = capsys.readouterr().out
    assert "| MF-BPR |" in out and "| MostPop |" in out and "recall@20" in out
    d = tmp_path / "mf_bpr" / "synthetic"
    names = sorted(p.name for p in d.glob("*.json"))
    assert names == ["grid.json", "mf_seed0.json", "popular_seed0.json"]
    rec = json.loads((d / "mf_seed0.json").read_text())
    assert rec["seed"] == 0 and rec["config"]["epochs"] == 5 and "recall@20" in rec["metrics"]["test"]
    grid = json.loads((d / "grid.json").read_text())
    assert len(grid["extra"]["grid"]) == 2 and grid["metrics"]["selected_lr"] in (0.01, 0.001)


@pytest.mark.realdata
def test_mf_bpr_beats_popular_on_ml100k(data_dir):
    from experiments.mf_bpr import Config, eval_test, load_split, train_mf

    cfg = Config(dataset="ml-100k", dim=32, lr=5e-3, l2=1e-3, epochs=8, patience=8)
    data = load_split(cfg, data_dir, seed=0)
    assert data["n_users"] == 943 and data["n_items"] == 1682
    assert data["train"].nnz + data["val"].nnz + data["test"].nnz == 100_000
    params, _ = train_mf(cfg, data, seed=0, log=None)
    mf_m = eval_test(lambda u: mf.score_all(params, u), data, ks=(20,))
    pop_m = eval_test(popular.score_fn(popular.fit(data["train"])), data, ks=(20,))
    assert mf_m["recall@20"] > 1.2 * pop_m["recall@20"] and mf_m["ndcg@20"] > 1.2 * pop_m["ndcg@20"]
