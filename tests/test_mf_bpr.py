"""End-to-end tests for MF-BPR (jaxrec.models.mf, jaxrec.methods.mf_bpr, experiments.mf_bpr) and most-popular."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

from experiments import mf_bpr as exp
from jaxrec import metrics
from jaxrec import method as protocol
from jaxrec.methods import mf_bpr, popular
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


def test_bpr_objective_matches_hand_computation():
    params = {"user": jnp.array([[1.0, 0.0], [0.5, 0.5]]), "item": jnp.array([[1.0, 1.0], [0.0, 2.0], [1.0, -1.0]])}
    batch = (jnp.array([0, 1, 0]), jnp.array([0, 1, 2]), jnp.array([1, 2, 1]), jnp.array([1.0, 1.0, 0.0]))
    loss, bpr = mf_bpr.bpr_objective(params, batch, l2=0.1)
    # pair 1: s_ui = 1, s_uj = 0 ; pair 2: s_ui = 1, s_uj = 0 ; pair 3 is padding (w = 0)
    want_bpr = np.log1p(np.exp(-1.0))
    reg = 0.5 * ((1 + 2 + 4) + (0.5 + 4 + 2)) / 2
    assert float(bpr) == pytest.approx(want_bpr, rel=1e-6)
    assert float(loss) == pytest.approx(want_bpr + 0.1 * reg, rel=1e-6)


def test_mf_bpr_learns_and_beats_popular_on_synthetic():
    cfg = mf_bpr.MFBPRConfig(dim=16, lr=1e-2, l2=1e-3, epochs=15, patience=5, batch_size=512, small=True)
    data = mf_bpr.load(cfg, "synthetic", None, seed=0)
    res = protocol.train(mf_bpr.method(cfg, data), seed=0, epochs=cfg.epochs, metric="ndcg@20",
                         patience=cfg.patience, log=None)
    losses = [h["train"]["loss"] for h in res.history]
    assert losses[-1] < 0.5 * losses[0]
    pop = mf_bpr.most_popular(data)
    assert res.test["recall@20"] > 1.2 * pop["test"]["recall@20"]
    assert res.test["ndcg@20"] > 1.15 * pop["test"]["ndcg@20"]
    # the returned state is the best-validation one
    assert res.val["ndcg@20"] == pytest.approx(max(h["val"]["ndcg@20"] for h in res.history), abs=1e-6)


def test_cli_quick_grid_writes_results(tmp_path, capsys):
    exp.main(["--quick", "--seeds", "1", "--out", str(tmp_path), "--lr", "0.01", "0.001"])
    out = capsys.readouterr().out
    assert "| MF-BPR |" in out and "| MostPop |" in out and "recall@20" in out
    d = tmp_path / "mf_bpr" / "synthetic"
    runs = sorted(p.name for p in d.glob("mf_*_seed0.json"))
    assert len(runs) == 2  # one run per grid point; the selected one is re-used for seed 0
    assert (d / "popular_seed0.json").exists() and (d / "table_main.md").exists() and (d / "table_main.png").exists()
    recs = [json.loads((d / r).read_text()) for r in runs]
    assert sorted(r["config"]["lr"] for r in recs) == [0.001, 0.01]
    assert all(r["config"]["epochs"] == 5 and "recall@20" in r["metrics"]["test"] for r in recs)
    assert "Grid on seed 0" in (d / "table_main.md").read_text()


@pytest.mark.realdata
def test_mf_bpr_beats_popular_on_ml100k(data_dir):
    cfg = mf_bpr.MFBPRConfig(dataset="ml-100k", dim=32, lr=5e-3, l2=1e-3, epochs=8, patience=8, ks=(20,))
    data = mf_bpr.load(cfg, "ml-100k", data_dir, seed=0)
    assert data["n_users"] == 943 and data["n_items"] == 1682
    assert data["train"].nnz + data["val"].nnz + data["test"].nnz == 100_000
    res = protocol.train(mf_bpr.method(cfg, data), seed=0, epochs=cfg.epochs, metric="ndcg@20", log=None)
    pop = mf_bpr.most_popular(data, ks=(20,))["test"]
    assert res.test["recall@20"] > 1.2 * pop["recall@20"] and res.test["ndcg@20"] > 1.2 * pop["ndcg@20"]
