"""LightGCN propagation and the blockwise cosine neighbour search, checked against dense numpy references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

from jaxrec.models import lightgcn
from jaxrec.neighbors import cosine_neighbors


def _dense_norm_adj(user, item, n_users, n_items):
    """Reference D^-1/2 A D^-1/2 built densely, the textbook way."""
    n = n_users + n_items
    a = np.zeros((n, n))
    for u, i in zip(user, item):
        a[u, n_users + i] = 1.0
        a[n_users + i, u] = 1.0
    d = a.sum(1)
    inv = np.where(d > 0, 1.0 / np.sqrt(np.where(d > 0, d, 1.0)), 0.0)
    return inv[:, None] * a * inv[None, :]


HAND_U = np.array([0, 0, 1, 2, 2, 2, 0])  # last pair duplicates (0, 0): counted once
HAND_I = np.array([0, 1, 1, 1, 2, 3, 0])


def test_hand_graph_weights():
    # user 0 has items {0, 1} (degree 2), item 1 has users {0, 1, 2} (degree 3): weight 1/sqrt(6)
    g = lightgcn.build_graph(HAND_U, HAND_I, 3, 5)
    assert g.rows.shape == (12,)  # 6 unique interactions, both directions
    w = {(int(r), int(c)): float(v) for r, c, v in zip(g.rows, g.cols, g.weights)}
    assert w[(0, 3 + 1)] == pytest.approx(1 / np.sqrt(6), rel=1e-6)
    assert w[(3 + 1, 0)] == pytest.approx(1 / np.sqrt(6), rel=1e-6)
    assert w[(1, 3 + 1)] == pytest.approx(1 / np.sqrt(3), rel=1e-6)  # user 1 degree 1
    assert (3 + 4) not in {r for r, _ in w}  # item 4 has no interaction: no edge


@pytest.mark.parametrize("backend", ["segment", "bcoo", "dense"])
def test_propagation_matches_dense(backend):
    rng = np.random.default_rng(0)
    nu, ni, d = 7, 9, 4
    u = rng.integers(0, nu, 30)
    i = rng.integers(0, ni, 30)
    with jax.enable_x64(True):
        g = lightgcn.build_graph(u, i, nu, ni, backend=backend)
        params = lightgcn.init_params(jax.random.PRNGKey(1), nu, ni, d, scale=1.0)
        eu, ei = lightgcn.representations(params, g, n_layers=3)
        a = _dense_norm_adj(u, i, nu, ni)
        e0 = np.concatenate([np.asarray(params["user"]), np.asarray(params["item"])])
        ref = (e0 + a @ e0 + a @ a @ e0 + a @ a @ a @ e0) / 4
        np.testing.assert_allclose(np.asarray(eu), ref[:nu], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(np.asarray(ei), ref[nu:], rtol=1e-10, atol=1e-12)
        s = lightgcn.score_users(params, g, jnp.arange(nu))
        assert s.shape == (nu, ni)
        np.testing.assert_allclose(np.asarray(s), ref[:nu] @ ref[nu:].T, rtol=1e-9, atol=1e-12)
        pair = lightgcn.score(params, g, jnp.array([2, 3]), jnp.array([5, 0]))
        np.testing.assert_allclose(np.asarray(pair), [ref[2] @ ref[nu + 5], ref[3] @ ref[nu]], rtol=1e-9)


def test_backends_have_equal_gradients():
    rng = np.random.default_rng(3)
    u, i = rng.integers(0, 11, 60), rng.integers(0, 13, 60)
    with jax.enable_x64(True):
        params = lightgcn.init_params(jax.random.PRNGKey(0), 11, 13, 3)
        grads, hvps = [], []
        v = jax.tree.map(jnp.ones_like, params)
        for backend in lightgcn.BACKENDS:
            g = lightgcn.build_graph(u, i, 11, 13, backend=backend)
            f = lambda p, g=g: jnp.sum(jnp.sin(lightgcn.score_users(p, g, jnp.arange(11))))
            grads.append(jax.grad(f)(params))
            hvps.append(jax.jvp(jax.grad(f), (params,), (v,))[1])  # forward-over-reverse (IG's default)
        for k in ("user", "item"):
            for other in range(1, len(grads)):
                np.testing.assert_allclose(grads[0][k], grads[other][k], rtol=1e-10, atol=1e-12)
                np.testing.assert_allclose(hvps[0][k], hvps[other][k], rtol=1e-10, atol=1e-12)
        # zero layers = matrix factorisation on the raw embeddings
        g = lightgcn.build_graph(u, i, 11, 13)
        eu, ei = lightgcn.representations(params, g, n_layers=0)
        np.testing.assert_array_equal(eu, params["user"])


def test_build_graph_rejects_bad_ids():
    with pytest.raises(ValueError, match="out of range"):
        lightgcn.build_graph(np.array([0, 3]), np.array([0, 0]), 3, 2)
    with pytest.raises(ValueError, match="backend"):
        lightgcn.build_graph(np.array([0]), np.array([0]), 1, 1, backend="csr")


def test_dense_backend_refuses_large_graphs_and_switches_both_ways(monkeypatch):
    u, i = np.array([0, 1, 2, 2]), np.array([0, 3, 1, 4])
    g = lightgcn.build_graph(u, i, 3, 5)
    d = g.with_backend("dense")
    assert d.block.shape == (3, 5) and d.backend == "dense"
    np.testing.assert_allclose(np.asarray(d.block)[2, 1], 1 / np.sqrt(2 * 1), rtol=1e-6)  # user 2 deg 2, item 1 deg 1
    back = d.with_backend("segment")
    assert back.block is None and back.backend == "segment"
    monkeypatch.setattr(lightgcn, "DENSE_MAX_ENTRIES", 14)
    with pytest.raises(ValueError, match="3 x 5 matrix.*use backend='segment'"):
        lightgcn.build_graph(u, i, 3, 5, backend="dense")
    with pytest.raises(ValueError, match="DENSE_MAX_ENTRIES"):
        g.with_backend("dense")


# ---------------------------------------------------------------------------------- neighbour search


def _brute_force(m, tau, max_n):
    x = m.toarray().astype(np.float64)
    norm = np.linalg.norm(x, axis=1)
    out = []
    for a in range(x.shape[0]):
        cands = []
        for b in range(x.shape[0]):
            if a == b or norm[a] == 0 or norm[b] == 0:
                continue
            c = x[a] @ x[b] / (norm[a] * norm[b])
            if c >= tau - 1e-6:
                cands.append((-c, b))
        cands.sort()
        out.append([b for _, b in cands[:max_n]])
    return out


def test_neighbors_hand_case():
    # rows: a = {0,1}, b = {0,1}, c = {0}, d = {2}, e = {} ; cos(a,b)=1, cos(a,c)=1/sqrt2, cos(.,d)=0
    r = sp.csr_matrix(np.array([[1, 1, 0], [1, 1, 0], [1, 0, 0], [0, 0, 1], [0, 0, 0]], dtype=np.float32))
    nb = cosine_neighbors(r, tau=0.5, max_neighbors=3)
    assert nb.as_sets() == [{1, 2}, {0, 2}, {0, 1}, set(), set()]
    assert list(nb.index[0]) == [1, 2, -1]  # ordered by similarity, padded with -1
    np.testing.assert_allclose(nb.sim[0, :2], [1.0, 1 / np.sqrt(2)], rtol=1e-6)
    assert list(nb.count) == [2, 2, 2, 0, 0]
    nb = cosine_neighbors(r, tau=0.8, max_neighbors=3)
    assert nb.as_sets() == [{1}, {0}, set(), set(), set()]
    nb = cosine_neighbors(r, tau=0.5, max_neighbors=1)  # truncation keeps the most similar
    assert nb.as_sets() == [{1}, {0}, {0}, set(), set()]
    nb = cosine_neighbors(r, tau=0.0, max_neighbors=4)  # tau 0: every non-empty other row
    assert nb.as_sets()[3] == {0, 1, 2}
    with pytest.raises(ValueError):
        cosine_neighbors(r, tau=1.5, max_neighbors=2)


@pytest.mark.parametrize("block", [1, 7, 1000])
def test_neighbors_match_brute_force_any_block(block):
    rng = np.random.default_rng(block)
    m = sp.random(40, 25, density=0.15, random_state=np.random.RandomState(block), format="csr")
    m.data[:] = 1.0
    for tau, max_n in [(0.1, 5), (0.3, 40), (0.5, 3)]:
        nb = cosine_neighbors(m, tau=tau, max_neighbors=max_n, block_size=block)
        ref = _brute_force(m, tau, max_n)
        x = m.toarray() / np.maximum(np.linalg.norm(m.toarray(), axis=1, keepdims=True), 1e-30)
        for a in range(40):
            got = nb.index[a, : nb.count[a]]
            assert len(got) == len(ref[a]), (tau, max_n, a)
            # same similarity profile (ties may be ordered differently in float32) ...
            np.testing.assert_allclose(x[a] @ x[got].T, x[a] @ x[ref[a]].T, atol=1e-5)
            np.testing.assert_allclose(nb.sim[a, : nb.count[a]], x[a] @ x[got].T, atol=1e-5)
            # ... and the exact same set whenever nothing was truncated
            if len(ref[a]) < max_n:
                assert set(got.tolist()) == set(ref[a])
            assert a not in got.tolist()
        assert nb.index.shape == (40, max_n)


@pytest.mark.realdata
def test_neighbors_on_ml100k_blockwise_equals_dense(data_dir):
    """On the real ml-100k matrix the blockwise search gives the dense answer for sampled users and items."""
    from jaxrec.data import load_ml100k, to_csr

    r = to_csr(load_ml100k(data_dir))
    for m, rows in ((r, [0, 5, 100, 941]), (r.T.tocsr(), [0, 49, 1000, 1681])):
        nb = cosine_neighbors(m, tau=0.3, max_neighbors=20, block_size=128)
        x = m.toarray().astype(np.float64)
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)
        for a in rows:
            c = x @ x[a]
            c[a] = -np.inf
            c[np.linalg.norm(x, axis=1) == 0] = -np.inf
            expect = np.sort(c[c >= 0.3 - 1e-6])[::-1][:20]
            got = nb.sim[a, : nb.count[a]]
            np.testing.assert_allclose(got, expect, atol=1e-5)
            np.testing.assert_allclose(c[nb.index[a, : nb.count[a]]], got, atol=1e-5)
