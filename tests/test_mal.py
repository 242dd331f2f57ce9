"""MAL: auxiliary InfoNCE losses on hand cases, auxiliary sampling, the inner/outer losses, the SOG / unrolled /
IG hypergradients against finite differences on a tiny float64 instance, and a short run that lowers the
meta loss."""
import argparse
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

import optax

from experiments import mal as exp
from jaxrec import method as protocol
from jaxrec.methods import mal
from jaxrec.neighbors import cosine_neighbors


# ------------------------------------------------------------------------------------ InfoNCE hand cases


def test_info_nce_hand_case():
    a = jnp.array([[1.0, 0.0]])
    p = jnp.array([[1.0, 0.0]])
    n = jnp.array([[[0.0, 1.0], [-1.0, 0.0]]])  # s+ = 1, s- = (0, -1)
    both = jnp.array([[True, True]])
    e = np.e
    assert float(mal.info_nce(a, p, n, both)[0]) == pytest.approx(np.log(e + 1 + 1 / e) - 1, rel=1e-6)
    first = jnp.array([[True, False]])  # the masked candidate (a neighbour) leaves the denominator
    assert float(mal.info_nce(a, p, n, first)[0]) == pytest.approx(np.log(e + 1) - 1, rel=1e-6)
    # literal form of the issue: negatives only in the denominator
    assert float(mal.info_nce(a, p, n, both, include_positive=False)[0]) == pytest.approx(
        np.log(1 + 1 / e) - 1, rel=1e-6)
    # temperature divides every agreement
    assert float(mal.info_nce(a, p, n, both, temperature=0.5)[0]) == pytest.approx(
        np.log(e ** 2 + 1 + e ** -2) - 2, rel=1e-6)
    # no valid negative: standard form gives log(exp s+) - s+ = 0, the literal form is defined as 0
    none = jnp.array([[False, False]])
    assert float(mal.info_nce(a, p, n, none)[0]) == pytest.approx(0.0, abs=1e-7)
    assert float(mal.info_nce(a, p, n, none, include_positive=False)[0]) == 0.0


def test_info_nce_is_batched_rowwise():
    rng = np.random.default_rng(0)
    a, p = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    n = rng.normal(size=(5, 4, 3))
    m = rng.random((5, 4)) > 0.3
    got = np.asarray(mal.info_nce(jnp.asarray(a), jnp.asarray(p), jnp.asarray(n), jnp.asarray(m)))
    for b in range(5):
        logits = [a[b] @ p[b]] + [a[b] @ n[b, k] for k in range(4) if m[b, k]]
        assert got[b] == pytest.approx(np.log(np.sum(np.exp(logits))) - a[b] @ p[b], rel=1e-5)
    # shared candidates [K, d] give the same as broadcasting them to every row
    shared = jnp.asarray(n[0])
    np.testing.assert_allclose(mal.info_nce(jnp.asarray(a), jnp.asarray(p), shared, jnp.asarray(m)),
                               mal.info_nce(jnp.asarray(a), jnp.asarray(p), jnp.broadcast_to(shared, (5, 4, 3)),
                                            jnp.asarray(m)), rtol=1e-6)


# --------------------------------------------------------------------------------------- aux sampling


@pytest.mark.parametrize("shared", [False, True])
def test_sample_aux_respects_neighbourhoods(shared):
    r = sp.csr_matrix(np.array([[1, 1, 0, 0], [1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0],
                                [0, 0, 1, 0]], dtype=np.float32))
    nb = cosine_neighbors(r, tau=0.5, max_neighbors=3)  # N = {1,2}, {0,2}, {0,1}, {5}, {}, {3}
    sets = nb.as_sets()
    anchors = jnp.asarray(np.repeat(np.arange(6), 200), dtype=jnp.int32)
    k = 5 if shared else 8  # shared candidates are distinct, so at most n_entities of them
    s = mal.sample_aux(jax.random.PRNGKey(0), anchors, jnp.asarray(nb.index), jnp.asarray(nb.count), 6, k,
                       shared=shared)
    pos, neg, mask, has = (np.asarray(s[k]) for k in ("pos", "neg", "mask", "has"))
    assert mask.shape == (1200, k)
    if shared:
        assert neg.shape == (k,) and len(set(neg.tolist())) == k
        neg = np.broadcast_to(neg, (1200, k))
    assert neg.shape == (1200, k)
    for b, a in enumerate(np.asarray(anchors)):
        assert has[b] == bool(sets[a])
        if sets[a]:
            assert pos[b] in sets[a]
        for v, ok in zip(neg[b], mask[b]):
            assert ok == (v != a and v not in sets[a])
    # every neighbour is drawn (uniform over N_a): anchor 0 has two, each should appear ~100 times of 200
    counts = np.bincount(pos[:200], minlength=6)
    assert counts[1] > 60 and counts[2] > 60


# a hand case where the top-M list (M = 1) is smaller than the neighbour set: N_0 = {1, 2, 6}, N_6 = {0, 1, 2, 5}
_R7 = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 1, 0], [1, 1, 1, 0]],
               dtype=np.float32)


def test_threshold_pairs_hand_case_and_no_neighbor_share():
    from jaxrec.neighbors import no_neighbor_share, threshold_pairs

    r = sp.csr_matrix(_R7)
    pairs = threshold_pairs(r, 0.5, block_size=3).toarray()
    sets = [set(np.flatnonzero(row).tolist()) for row in pairs]
    assert sets == [{1, 2, 6}, {0, 2, 6}, {0, 1, 6}, {5}, set(), {3, 6}, {0, 1, 2, 5}]  # cos 1/sqrt(2), 1/sqrt(3), ...
    assert pairs[4].sum() == 0 and not pairs[np.arange(7), np.arange(7)].any()  # empty row; never itself
    rng = np.random.default_rng(0)
    big = sp.csr_matrix((rng.random((80, 30)) < 0.12).astype(np.float32))
    share = no_neighbor_share(big, (0.1, 0.3, 0.5), block_size=16)
    for tau in (0.1, 0.3, 0.5):  # the untruncated set's rows are the top-M lists when M is large enough
        nb = cosine_neighbors(big, tau, max_neighbors=80, block_size=16)
        full = threshold_pairs(big, tau, block_size=7)
        assert [set(full[a].indices.tolist()) for a in range(80)] == nb.as_sets()
        assert share[tau]["no_neighbor"] == pytest.approx(np.mean(nb.count == 0), abs=1e-12)
        assert share[tau]["mean_size"] == pytest.approx(nb.count.mean(), abs=1e-12)


@pytest.mark.parametrize("shared", [True, False])
def test_threshold_negatives_exclude_every_entity_above_tau(shared):
    """``negatives="threshold"`` (Eq. 5): no candidate with cos >= tau is a valid negative, although the top-M
    list (M = 1) holds only the single most similar entity; the positives still come from that list."""
    from jaxrec.neighbors import pair_keys, threshold_pairs

    r = sp.csr_matrix(_R7)
    cfg = mal.MALConfig(tau=0.5, max_neighbors=1, negatives="threshold")
    nb = mal.build_neighbors(r, cfg)["user"]
    keys = mal.build_exclusions(r, cfg)["user"]
    np.testing.assert_array_equal(keys, pair_keys(threshold_pairs(r, 0.5)))
    above = _R7 @ _R7.T / np.maximum(np.linalg.norm(_R7, axis=1), 1e-9)[:, None] \
        / np.maximum(np.linalg.norm(_R7, axis=1), 1e-9)[None, :] >= 0.5 - 1e-6  # dense, by hand (7 x 7)
    anchors = jnp.asarray(np.repeat(np.arange(7), 60), jnp.int32)
    k = 7 if shared else 10
    for excl in (jnp.asarray(keys), None):
        s = mal.sample_aux(jax.random.PRNGKey(1), anchors, jnp.asarray(nb.index), jnp.asarray(nb.count), 7, k,
                           shared, excl)
        neg, mask, pos = np.asarray(s["neg"]), np.asarray(s["mask"]), np.asarray(s["pos"])
        neg = np.broadcast_to(neg, mask.shape) if shared else neg
        a = np.asarray(anchors)[:, None]
        bad = mask & above[a, neg]  # a valid negative at cos >= tau (or the anchor itself: cos 1)
        if excl is not None:
            assert not bad.any()
            np.testing.assert_array_equal(mask, (neg != a) & ~above[a, neg])  # and every other candidate is valid
            assert set(pos[np.asarray(anchors) == 0].tolist()) == {1}  # the top-1 list supplies the positive
        else:
            assert bad.any()  # "topm" (stored runs): entities 2 and 6 can be negatives of 0


def test_meta_split_is_disjoint_from_train_and_validation(tiny_split):
    """``meta_frac=0.1``: D_meta is ~10% of each user's training interactions, disjoint from Theta's training
    data, validation and test; together with train it is the old training part; validation excludes it;
    the meta batches come from it only. ``meta_frac=0`` is the stored runs' data (D_meta = validation)."""
    old, new = mal.prepare(tiny_split), mal.prepare(tiny_split, meta_frac=0.1, seed=3)
    pairs = lambda m: set(zip(*sp.coo_matrix(m).nonzero()))
    tr, me, va, te = (pairs(new[k]) for k in ("train", "meta", "val", "test"))
    assert me and not (me & tr) and not (me & va) and not (me & te)
    assert me | tr == pairs(old["train"]) and va == pairs(old["val"]) and te == pairs(old["test"])
    deg = old["train"].getnnz(axis=1)
    np.testing.assert_array_equal(new["meta"].getnnz(axis=1), np.minimum(np.floor(0.1 * deg + 0.5), deg - 1))
    assert pairs(new["val_exclude"]) == tr | me and pairs(new["seen"]) == tr | me | va
    tb, mb = mal.epoch_batches(mal.MALConfig(batch_size=256, meta_batch_size=128, meta_frac=0.1), new, 0, 0)
    meta_pairs = set(zip(np.asarray(mb["user"]).ravel().tolist(), np.asarray(mb["pos"]).ravel().tolist()))
    train_pairs = set(zip(np.asarray(tb["user"]).ravel().tolist(), np.asarray(tb["pos"]).ravel().tolist()))
    assert meta_pairs <= me and train_pairs <= tr
    assert pairs(old["meta"]) == pairs(old["val"]) and pairs(old["val_exclude"]) == pairs(old["train"])
    # the runner's data hook: the split depends on meta_frac
    assert "meta_frac" in mal.DATA_FIELDS


def test_new_fields_keep_the_stored_runs_keys():
    """``meta_frac`` / ``negatives`` at their defaults leave a stored run's cache key as it was; changed, they
    enter it."""
    import json
    from pathlib import Path

    from jaxrec.experiment import config_hash

    def config(path):
        return mal.MALConfig(**{k: tuple(v) if isinstance(v, list) else v
                                for k, v in json.loads(path.read_text())["config"].items()})

    # a run stored before the new fields (old protocol: both at their defaults), not a --grid paper rerun
    stored = sorted((Path(__file__).parents[1] / "results" / "mal" / "ml-100k").glob("MF-MAL_*_seed0.json"))
    path, cfg = next((p, c) for p, c in ((p, config(p)) for p in stored) if (c.meta_frac, c.negatives) == (0.0, "topm"))
    assert path.name == f"MF-MAL_{config_hash(cfg)}_seed0.json"
    keys = {config_hash(dataclasses.replace(cfg, **kw)) for kw in ({}, {"meta_frac": 0.1}, {"negatives": "threshold"})}
    assert len(keys) == 3


def test_paper_grids_equal_budgets_and_protocol():
    """``--grid paper``: the paper's five taus and MAL's meta lr grid; every fixed-weight variant gets as many
    points (three weights); every row runs with D_meta held out and threshold negatives; the table's own
    fields are refused as flags."""
    meta, fixed = exp.aux_grid("paper", "sog"), exp.aux_grid("paper", "fixed")
    assert len(meta) == len(fixed) == 15
    assert sorted({p["tau"] for p in meta}) == sorted({p["tau"] for p in fixed}) == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert sorted({p["meta_lr"] for p in meta}) == [1e-4, 1e-3, 1e-2]
    assert len({p["weight_init"] for p in fixed}) >= 2
    assert exp.aux_grid("full", "fixed") == exp.aux_grid("full", "sog") == exp.AUX_GRID["full"]  # stored tables
    ns = argparse.Namespace(bases=None, grid="paper", lrs=None, l2s=None, variants=None, aux=None,
                            **{k: None for k in (*exp.TABLE_OWNED, *exp.PAPER_OWNED)})
    runner = argparse.Namespace(args=ns, grid=[{}], base=mal.MALConfig())
    exp._args(runner, "ablation")
    assert runner.base.meta_frac == 0.1 and runner.base.negatives == "threshold"
    ns.meta_lr = 1e-3
    with pytest.raises(ValueError, match="meta-lr"):
        exp._args(runner, "ablation")


@pytest.mark.parametrize("grid,seeds,quick,reduced", [("paper", 5, False, False), ("full", 5, False, False),
                                                      ("reduced", 5, False, True), ("paper", 3, False, True),
                                                      ("paper", 5, True, True)])
def test_table_note_flags_only_a_reduced_protocol(grid, seeds, quick, reduced):
    """The table note says REDUCED PROTOCOL for fewer than 5 seeds, the reduced grid or --quick, never for the
    paper's grid at 5 seeds."""
    runner = argparse.Namespace(seed_list=list(range(seeds)), dataset="ml-100k", args=argparse.Namespace(quick=quick))
    text = exp.note(runner, grid, exp.BASE_GRID[grid]["lr"], exp.BASE_GRID[grid]["l2"])
    assert ("REDUCED PROTOCOL" in text) == reduced


def test_cli_neighbors_table(tmp_path, capsys):
    exp.main(["--table", "neighbors", "--out", str(tmp_path)])
    text = (tmp_path / "mal" / "synthetic" / "table_neighbors.md").read_text()
    assert [r.split("|")[1].strip() for r in text.splitlines() if r.startswith("| 0.")] == \
        ["0.1", "0.2", "0.3", "0.4", "0.5"]


# ---------------------------------------------------------------------------------- tiny bilevel problem


def _tiny(dtype=jnp.float64, seed=0, aux=("user", "item"), base="mf", l2=1e-2):
    """Tiny fixed instance: 4 users, 5 items, d = 2, hand-made auxiliary samples."""
    cfg = mal.MALConfig(base=base, aux=aux, dim=2, l2=l2, alpha=0.3, n_layers=2)
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    theta = {"user": 0.5 * jax.random.normal(k1, (4, 2), dtype), "item": 0.5 * jax.random.normal(k2, (5, 2), dtype)}
    lam = {"user": jax.random.normal(k3, (4,), dtype), "item": jnp.linspace(-1.0, 1.0, 5, dtype=dtype)}
    i32 = lambda x: jnp.asarray(x, jnp.int32)
    batch = {
        "user": i32([0, 1, 2, 0, 3, 1]), "pos": i32([0, 1, 2, 3, 4, 0]), "neg": i32([2, 3, 4, 1, 0, 4]),
        "user_aux_pos": i32([1, 0, 3, 2, 2, 0]), "user_aux_neg": i32([[2, 3], [3, 2], [0, 1], [3, 1], [0, 1], [2, 3]]),
        "user_aux_mask": jnp.array([[True, True], [True, False], [True, True], [False, True], [True, True],
                                    [True, True]]),
        "user_aux_has": jnp.array([True, True, True, True, False, True]),
        "item_aux_pos": i32([1, 0, 3, 2, 3, 1]), "item_aux_neg": i32([[2, 4], [3, 4], [0, 1], [4, 0], [1, 2], [3, 4]]),
        "item_aux_mask": jnp.ones((6, 2), bool), "item_aux_has": jnp.array([True, True, True, True, True, False]),
    }
    meta = {"user": i32([0, 1, 2, 3, 2]), "pos": i32([4, 2, 0, 1, 3]), "neg": i32([1, 0, 3, 2, 4])}
    if base == "lightgcn":
        from jaxrec.models import lightgcn
        graph = lightgcn.build_graph(np.array([0, 1, 2, 0, 3, 1]), np.array([0, 1, 2, 3, 4, 0]), 4, 5, dtype=dtype)
    else:
        graph = None
    return cfg, theta, lam, batch, meta, graph


def _fd_grad(f, lam, eps=1e-6):
    """Central finite differences of scalar f over every coordinate of the lam pytree (numpy float64)."""
    out = {}
    f = jax.jit(f)
    for k, lp, lm in _perturbations(lam, eps):
        out.setdefault(k, []).append((float(f(lp)) - float(f(lm))) / (2 * eps))
    return {k: np.array(v) for k, v in out.items()}


def _perturbations(lam, eps):
    """Yield (key, lam + eps e_j, lam - eps e_j) for every coordinate; built in numpy (no eager jax ops,
    which would compile once per index)."""
    base = {k: np.asarray(v) for k, v in lam.items()}
    for k in base:
        for j in range(base[k].shape[0]):
            e = np.zeros_like(base[k])
            e[j] = eps
            yield k, {**lam, k: jnp.asarray(base[k] + e)}, {**lam, k: jnp.asarray(base[k] - e)}


def test_inner_loss_hand_case():
    with jax.enable_x64(True):
        cfg, theta, lam, batch, meta, _ = _tiny()
        inner, outer = (jax.jit(f) for f in mal.make_losses(cfg))
        P, Q = np.asarray(theta["user"]), np.asarray(theta["item"])
        u, i, j = (np.asarray(batch[k]) for k in ("user", "pos", "neg"))
        bpr = np.log1p(np.exp(-(np.sum(P[u] * Q[i], 1) - np.sum(P[u] * Q[j], 1))))
        reg = 0.5 * (np.sum(P[u] ** 2, 1) + np.sum(Q[i] ** 2, 1) + np.sum(Q[j] ** 2, 1))

        def nce(E, anchors, t):
            out = np.zeros(len(anchors))
            for b, a in enumerate(anchors):
                if not batch[f"{t}_aux_has"][b]:
                    continue
                sp_ = E[a] @ E[int(batch[f"{t}_aux_pos"][b])]
                sn = [E[a] @ E[int(v)] for v, ok in zip(batch[f"{t}_aux_neg"][b], batch[f"{t}_aux_mask"][b]) if ok]
                out[b] = np.log(np.exp(sp_) + np.sum(np.exp(sn))) - sp_
            return out

        sig = lambda x: 1 / (1 + np.exp(-np.asarray(x)))
        expect = np.mean(bpr + sig(lam["user"])[u] * nce(P, u, "user") + sig(lam["item"])[i] * nce(Q, i, "item")
                         + cfg.l2 * reg)
        assert float(inner(theta, lam, batch)) == pytest.approx(expect, rel=1e-10)
        meta_expect = np.mean(np.log1p(np.exp(-(np.sum(P[meta["user"]] * Q[meta["pos"]], 1)
                                                 - np.sum(P[meta["user"]] * Q[meta["neg"]], 1)))))
        assert float(outer(theta, lam, meta)) == pytest.approx(meta_expect, rel=1e-10)
        # no auxiliary task: plain BPR + L2, lam is ignored
        inner0 = jax.jit(mal.make_losses(dataclasses.replace(cfg, aux=()))[0])
        assert float(inner0(theta, lam, batch)) == pytest.approx(np.mean(bpr + cfg.l2 * reg), rel=1e-10)


@pytest.mark.parametrize("base", ["mf", "lightgcn"])
def test_sog_hypergradient_matches_finite_differences(base):
    with jax.enable_x64(True):
        cfg, theta, lam, batch, meta, graph = _tiny(base=base)
        inner, outer = mal.make_losses(cfg, graph)
        hg = jax.jit(mal.make_hypergrad(cfg, inner, outer))
        val, d_lam = hg(theta, lam, batch, meta)

        def F(l):  # the one-step proxy written out independently
            g = jax.grad(inner)(theta, l, batch)
            return outer(jax.tree.map(lambda t, gg: t - cfg.alpha * gg, theta, g), l, meta)

        assert float(val) == pytest.approx(float(jax.jit(F)(lam)), rel=1e-12)
        fd = _fd_grad(F, lam)
        for k in ("user", "item"):
            np.testing.assert_allclose(np.asarray(d_lam[k]), fd[k], rtol=1e-5, atol=1e-9)
        assert np.abs(fd["user"]).max() > 1e-4  # the meta gradient is not trivially zero
        # user 3's only example has no neighbour: its weight cannot matter (exactly zero hypergradient)
        assert float(d_lam["user"][3]) == 0.0


@pytest.mark.parametrize("mode", ["sog", "ig"])
def test_lightgcn_backends_give_the_same_mal_update(mode):
    """``make_update`` with LightGCN's dense and BCOO propagation equals the edge-list one (float64): the graph
    back end is an implementation detail, not part of the model (so it is not in a run's cache key)."""
    with jax.enable_x64(True):
        cfg, theta, lam, batch, meta, graph = _tiny(base="lightgcn")
        cfg = dataclasses.replace(cfg, mode=mode)
        state = mal.init_state(jax.random.PRNGKey(0), cfg, 4, 5, dtype=jnp.float64)._replace(theta=theta, lam=lam)
        outs = {b: jax.jit(mal.make_update(cfg, graph.with_backend(b)).update)(state, batch, meta)
                for b in ("segment", "bcoo", "dense")}
        for b in ("bcoo", "dense"):
            for part in ("theta", "lam"):
                for k in ("user", "item"):
                    np.testing.assert_allclose(getattr(outs[b][0], part)[k], getattr(outs["segment"][0], part)[k],
                                               rtol=1e-9, atol=1e-12)
        assert not np.allclose(outs["dense"][0].lam["user"], lam["user"])  # Lambda did move


def test_unrolled_hypergradient_matches_finite_differences():
    with jax.enable_x64(True):
        cfg, theta, lam, batch, meta, _ = _tiny(seed=1)
        cfg = dataclasses.replace(cfg, unroll_steps=3, alpha=0.2)
        inner, outer = mal.make_losses(cfg)
        _, d_lam = jax.jit(mal.make_hypergrad(cfg, inner, outer))(theta, lam, batch, meta)

        def F(l):
            t = theta
            for _ in range(3):
                t = jax.tree.map(lambda a, g: a - 0.2 * g, t, jax.grad(inner)(t, l, batch))
            return outer(t, l, meta)

        fd = _fd_grad(F, lam)
        for k in ("user", "item"):
            np.testing.assert_allclose(np.asarray(d_lam[k]), fd[k], rtol=1e-5, atol=1e-9)


def test_ig_hypergradient_matches_finite_differences_of_proximal_argmin():
    """IG at the exact proximal solution theta*(lam) = argmin L_in + gamma/2 |theta - theta_0|^2 equals the
    finite-difference derivative of lam -> L_pri(theta*(lam)) (with enough CG steps)."""
    from jax.flatten_util import ravel_pytree

    with jax.enable_x64(True):
        cfg, theta0, lam, batch, meta, _ = _tiny(seed=2)
        gamma = 0.5
        inner, outer = mal.make_losses(cfg)
        flat0, unravel = ravel_pytree(theta0)

        def prox(x, l):
            return inner(unravel(x), l, batch) + 0.5 * gamma * jnp.sum((x - flat0) ** 2)

        g_fn, h_fn = jax.jit(jax.grad(prox)), jax.jit(jax.hessian(prox))
        newton = jax.jit(lambda x, l: x - jnp.linalg.solve(h_fn(x, l), g_fn(x, l)))

        def solve(l, x, iters):  # Newton to machine precision
            for _ in range(iters):
                x = newton(x, l)
            return x

        x_star = solve(lam, flat0, 30)
        assert float(jnp.linalg.norm(g_fn(x_star, lam))) < 1e-12
        assert float(jnp.linalg.eigvalsh(h_fn(x_star, lam)).min()) > 0  # strongly convex: IFT applies
        outer_j = jax.jit(lambda x, l: outer(unravel(x), l, meta))
        fd, eps = {}, 1e-5
        for k, lp, lm in _perturbations(lam, eps):  # each perturbed problem re-solved from x_star
            fd.setdefault(k, []).append(
                (float(outer_j(solve(lp, x_star, 6), lp)) - float(outer_j(solve(lm, x_star, 6), lm))) / (2 * eps))
        fd = {k: np.array(v) for k, v in fd.items()}
        n_params = flat0.shape[0]
        cfg_ig = dataclasses.replace(cfg, mode="ig", gamma=gamma, cg_steps=n_params)
        _, d_lam = jax.jit(mal.make_hypergrad(cfg_ig, inner, outer))(unravel(x_star), lam, batch, meta)
        for k in ("user", "item"):
            np.testing.assert_allclose(np.asarray(d_lam[k]), fd[k], rtol=1e-4, atol=1e-8)
        assert np.abs(fd["item"]).max() > 1e-5
        # the paper's k = 2 CG steps is an approximation of the same quantity: same direction
        cfg2 = dataclasses.replace(cfg_ig, cg_steps=2)
        _, d2 = jax.jit(mal.make_hypergrad(cfg2, inner, outer))(unravel(x_star), lam, batch, meta)
        v1 = np.concatenate([np.asarray(d2[k]) for k in ("user", "item")])
        v2 = np.concatenate([fd[k] for k in ("user", "item")])
        assert v1 @ v2 / (np.linalg.norm(v1) * np.linalg.norm(v2)) > 0.9


# ------------------------------------------------------------------------------------------ short runs


def test_meta_steps_on_lambda_lower_the_meta_loss():
    """With Theta fixed, gradient steps along the SOG hypergradient lower L_pri(Theta~(Lambda)) on D_meta."""
    with jax.enable_x64(True):
        cfg, theta, lam, batch, meta, _ = _tiny(seed=3)
        cfg = dataclasses.replace(cfg, alpha=1.0)
        inner, outer = mal.make_losses(cfg)
        hg = jax.jit(mal.make_hypergrad(cfg, inner, outer))
        values = []
        for _ in range(30):
            v, d = hg(theta, lam, batch, meta)
            values.append(float(v))
            lam = jax.tree.map(lambda l, g: l - 5.0 * g, lam, d)
        assert values[-1] < values[0] - 1e-4
        assert all(b <= a + 1e-12 for a, b in zip(values, values[1:]))  # small steps: monotone


def test_update_is_theta_step_then_lambda_step_at_the_new_theta():
    """One ``make_update`` = an Adam step on Theta with grad L_in, then an Adam step on Lambda with the SOG
    hypergradient at the NEW Theta and the old Lambda (the algorithm box), written out here with optax."""
    with jax.enable_x64(True):
        cfg, theta, lam, batch, meta, _ = _tiny(seed=4)
        cfg = dataclasses.replace(cfg, lr=0.05, meta_lr=0.1)
        state = mal.init_state(jax.random.PRNGKey(0), cfg, 4, 5, dtype=jnp.float64)._replace(theta=theta, lam=lam)
        new, aux = jax.jit(mal.make_update(cfg).update)(state, batch, meta)
        inner, outer = mal.make_losses(cfg)
        g = jax.grad(inner)(theta, lam, batch)
        upd, _ = optax.adam(cfg.lr).update(g, optax.adam(cfg.lr).init(theta), theta)
        theta1 = optax.apply_updates(theta, upd)
        v, d_lam = mal.make_hypergrad(cfg, inner, outer)(theta1, lam, batch, meta)
        tx = optax.adam(cfg.meta_lr, eps=cfg.meta_eps)
        upd, _ = tx.update(d_lam, tx.init(lam), lam)
        lam1 = optax.apply_updates(lam, upd)
        for k in ("user", "item"):
            np.testing.assert_allclose(new.theta[k], theta1[k], rtol=1e-6)  # jit vs eager Adam
            np.testing.assert_allclose(new.lam[k], lam1[k], rtol=1e-6)
        assert float(aux["outer"]) == pytest.approx(float(v), rel=1e-9) and int(new.step) == 1
        # the meta step lowers the meta loss at the next proxy point (the sign of the outer update)
        assert float(mal.make_hypergrad(cfg, inner, outer)(theta1, new.lam, batch, meta)[0]) < float(v)
        fixed, _ = jax.jit(mal.make_update(dataclasses.replace(cfg, mode="fixed")).update)(state, batch, meta)
        np.testing.assert_array_equal(fixed.lam["user"], lam["user"])  # mode "fixed": Lambda stays


def _adam(g, m, v, t, lr, eps, b1=0.9, b2=0.999):
    """One Adam step written out in numpy: ``(update, m, v)`` for step number ``t`` (1-based)."""
    m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g ** 2
    return -lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps), m, v


@pytest.mark.parametrize("eps", [1e-20, 1e-3])
def test_lambda_step_is_hand_written_adam_on_the_hypergradient_at_the_post_step_theta(eps):
    """Two steps of the method's own update against a hand-written Adam on Theta (grad L_in) then on Lambda
    with the one-step hypergradient taken at the NEW Theta (written out with jax.grad of
    ``L_pri(Theta' - alpha grad L_in(Theta', Lambda))``). The second step's Adam moments make the lambda step
    depend on the hypergradient's size, not only its sign (the first step is ``lr * sign`` at eps ~ 0), so
    taking the hypergradient at the pre-step Theta, or a flipped sign, is caught; the test checks that both
    would give a different Lambda here."""
    with jax.enable_x64(True):
        cfg, theta, lam, batch, meta, _ = _tiny(seed=5)
        cfg = dataclasses.replace(cfg, lr=0.05, meta_lr=0.1, meta_eps=eps)
        inner, outer = mal.make_losses(cfg)
        step = jax.jit(mal.make_update(cfg).update)
        state = mal.init_state(jax.random.PRNGKey(0), cfg, 4, 5, dtype=jnp.float64)._replace(theta=theta, lam=lam)
        batch2 = {**batch, "user": batch["user"][::-1], "pos": batch["pos"][::-1]}  # a second, different batch
        np_ = lambda tree: {k: np.asarray(v, np.float64) for k, v in tree.items()}

        @jax.jit
        def hg(th, la, b):  # d/dLambda L_pri(Theta~), Theta~ = Theta - alpha grad_Theta L_in, by hand
            def f(l):
                g = jax.grad(inner)(th, l, b)
                return outer({k: th[k] - cfg.alpha * g[k] for k in th}, l, meta)
            return jax.grad(f)(la)

        grad_in = jax.jit(jax.grad(inner))
        hypergrad = lambda th, la, b: np_(hg(th, {k: jnp.asarray(v) for k, v in la.items()}, b))

        th, la = np_(theta), np_(lam)
        mt = {k: np.zeros_like(v) for k, v in th.items()}
        vt = {k: np.zeros_like(v) for k, v in th.items()}
        ml = {k: np.zeros_like(v) for k, v in la.items()}
        vl = {k: np.zeros_like(v) for k, v in la.items()}
        alt = {"pre": dict(la), "flip": dict(la)}
        for t, b in ((1, batch), (2, batch2)):
            state, _ = step(state, b, meta)
            g = np_(grad_in({k: jnp.asarray(v) for k, v in th.items()}, {k: jnp.asarray(v) for k, v in la.items()}, b))
            d_pre = hypergrad({k: jnp.asarray(v) for k, v in th.items()}, la, b)  # the wrong place (for the check)
            for k in th:
                u, mt[k], vt[k] = _adam(g[k], mt[k], vt[k], t, cfg.lr, 1e-8)
                th[k] = th[k] + u
            d = hypergrad({k: jnp.asarray(v) for k, v in th.items()}, la, b)
            for k in la:
                u, ml_k, vl_k = _adam(d[k], ml[k], vl[k], t, cfg.meta_lr, eps)
                alt["pre"][k] = la[k] + _adam(d_pre[k], ml[k], vl[k], t, cfg.meta_lr, eps)[0]
                alt["flip"][k] = la[k] + _adam(-d[k], ml[k], vl[k], t, cfg.meta_lr, eps)[0]
                la[k], ml[k], vl[k] = la[k] + u, ml_k, vl_k
            for k in ("user", "item"):
                np.testing.assert_allclose(state.theta[k], th[k], rtol=1e-9, atol=1e-12)
                np.testing.assert_allclose(state.lam[k], la[k], rtol=1e-9, atol=1e-12)
        # the test can tell the bugs apart from the algorithm: after step 2 both give another Lambda
        for bug in ("pre", "flip"):
            gap = max(np.abs(alt[bug][k] - la[k]).max() for k in la)
            assert gap > 1e-4, bug


@pytest.fixture(scope="module")
def tiny_split():
    from jaxrec.data import ratio_split, synthetic

    inter = synthetic.implicit_clusters(n_users=120, n_items=150, n_clusters=4, mean_per_user=20.0, seed=0)
    return ratio_split(inter, test_frac=0.2, val_frac=0.1, seed=0)


def test_short_mal_run_learns(tiny_split):
    cfg = mal.MALConfig(dim=16, lr=1e-2, batch_size=256, meta_batch_size=128, epochs=9, eval_every=3,
                        patience=10, meta_lr=5e-2, alpha=1e-1, tau=0.2, n_aux_neg=32)
    data = mal.prepare(tiny_split)
    res = protocol.train(mal.method(cfg, data), seed=0, epochs=cfg.epochs, metric="recall@20",
                         eval_every=cfg.eval_every, patience=cfg.patience, log=None)
    meta = [h["train"]["meta"] for h in res.history]
    assert meta[-1] < meta[0] - 0.05  # the meta (primary) loss on D_meta goes down
    lam_u = mal.artifacts(cfg, data, res.state)["lam"]["user"]
    assert lam_u.shape == (120,) and np.all((lam_u > 0) & (lam_u < 1))
    assert lam_u.std() > 1e-2  # per-entity weights moved away from the common init (meta-learning is active)
    # better than ranking by chance: random top-20 of ~130 unseen items has recall ~ 20/130
    assert res.test["recall@20"] > 2 * 20 / 150
    assert res.summary["neighbor_time_s"] >= 0 and res.summary["mean_neighbors"]["user"] > 0


def test_config_validation():
    with pytest.raises(ValueError, match="base"):
        mal.MALConfig(base="ncf")
    with pytest.raises(ValueError, match="aux"):
        mal.MALConfig(aux=("social",))
    assert mal.MALConfig(aux=()).name == "MF"
    assert mal.MALConfig(base="lightgcn").name == "LightGCN-MAL"
    assert mal.MALConfig(aux=("user",), mode="fixed").name == "MF+U"
    assert mal.MALConfig(aux=("item",), mode="sog").name == "MF+I+M"


# ------------------------------------------------------------------------------------------- the CLI


def _table(root, name):
    return (root / "mal" / "synthetic" / f"table_{name}.md").read_text()


def _rows(text):
    return [r.split("|")[1].strip() for r in text.splitlines() if r.startswith("| MF")]


def test_cli_base_grid_override(tmp_path, capsys):
    """``--lrs`` / ``--l2s`` replace an axis of the base grid, and the tuning runs are those configurations."""
    import json

    exp.main(["--table", "main", "--quick", "--out", str(tmp_path), "--lrs", "2e-2", "--l2s", "3e-2"])
    table = _table(tmp_path, "main")
    assert "lr [0.02] x L2 [0.03]" in table and "chosen: base lr=0.02 l2=0.03" in table
    base_runs = [json.loads(p.read_text())["config"] for p in (tmp_path / "mal" / "synthetic").glob("MF_*.json")]
    assert {(c["lr"], c["l2"]) for c in base_runs} == {(2e-2, 3e-2)}


def test_cli_reverse_shares_cached_runs(tmp_path, capsys):
    """``--reverse`` walks grids and seeds backwards but builds the same table: after a forward run into the
    same ``--out`` it trains nothing and picks the same configurations."""
    args = ["--table", "main", "--quick", "--seeds", "2", "--out", str(tmp_path)]
    exp.main(args)
    first = _table(tmp_path, "main")
    capsys.readouterr()
    exp.main(args + ["--reverse"])
    out = capsys.readouterr().out
    # 2 + 2 tuning runs read from their files, then seed 1 of each model; seed 0 is the tuning run, from memory
    assert "compiling" not in out and out.count("[cached]") == 2 + 2 + 1 + 1
    assert _rows(first) == _rows(_table(tmp_path, "main"))
    assert first.split("Command:")[0] == _table(tmp_path, "main").split("Command:")[0]
    assert not list((tmp_path / "mal" / "synthetic").glob("*.running"))


def test_cli_ablation_variants_and_reverse(tmp_path, capsys):
    """``--variants`` runs only the named rows (plus the base), in the table's order whatever the order given
    or walked (``--reverse``), to a file of its own; a forward re-run trains nothing."""
    args = ["--table", "ablation", "--quick", "--seeds", "1", "--out", str(tmp_path), "--variants", "MAL,U+I"]
    exp.main(args + ["--reverse"])
    out = capsys.readouterr().out
    trained = [line.split(" seed ")[0] for line in out.splitlines() if " seed 0: val " in line]
    assert trained[0] == "MF" and trained[-1].startswith("MF+U+I")  # MF-MAL was tuned before MF+U+I
    table = _table(tmp_path, "ablation_U+I_MAL")
    assert _rows(table) == ["MF", "MF+U+I", "MF-MAL"]
    assert not (tmp_path / "mal" / "synthetic" / "table_ablation.md").exists()  # the full table is left alone
    exp.main(args)
    assert "compiling" not in capsys.readouterr().out


def _exit(argv, capsys):
    with pytest.raises(SystemExit) as e:
        exp.main(argv)
    return e.value.code, capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--aux", "user,itme"], ["--variants", "U+J"], ["--bases", "ncf"],
                                  ["--tau", "1.5"], ["--lr", "-1"], ["--base", "ncf"], ["--mode", "maml"],
                                  ["--batch-size", "0"], ["--table", "timing"]])
def test_cli_refuses_nonsense_before_any_work(argv, capsys):
    code, err = _exit(argv + ["--quick", "--no-save"], capsys)
    assert code == 2 and err.count("\n") == 1 and "error" in err


@pytest.mark.parametrize("argv", [["--table", "main", "--tau", "0.1"], ["--table", "main", "--aux", "user"],
                                  ["--lrs", "1e-3"], ["--table", "main", "--variants", "MAL"]])
def test_cli_refuses_flags_a_table_would_ignore(argv, capsys):
    code, err = _exit(argv + ["--quick", "--no-save"], capsys)
    assert code == 1 and err.count("\n") == 1


def test_subset_parser():
    parse = exp.subset(("user", "item"), "auxiliary task", True)
    assert parse("item, user") == ("user", "item") and parse("none") == () and parse("item") == ("item",)
    with pytest.raises(argparse.ArgumentTypeError, match="users"):
        parse("users")
    with pytest.raises(argparse.ArgumentTypeError):
        exp.subset(tuple(exp.ABLATION_VARIANTS), "variant", False)(",")
