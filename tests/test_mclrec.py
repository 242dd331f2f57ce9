"""MCLRec / CL4SRec: augmentations, NT-Xent and R on hand cases, stage isolation (the method's own
bl.alternating parts), the epoch batches, a short run of the Method through jaxrec.method.train learns."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec import augment as A
from jaxrec import bilevel as bl
from jaxrec import method as protocol
from jaxrec.data import load_sequences, synthetic
from jaxrec.methods import mclrec as M

L = 12


def _batch(seed=0, b=400, L=L, n_items=1000, min_len=0):
    """Left-padded rows with distinct items per row (so positions can be traced), lengths 0..L."""
    rng = np.random.default_rng(seed)
    lens = rng.integers(min_len, L + 1, size=b)
    lens[:L + 1 - min_len] = np.arange(min_len, L + 1)  # every length present
    items = np.stack([rng.choice(np.arange(1, n_items + 1), L, replace=False) for _ in range(b)])
    seq = np.where(np.arange(L)[None] >= L - lens[:, None], items, 0).astype(np.int32)
    return seq, lens


def _real(row):
    nz = np.flatnonzero(row)
    return row[nz[0]:] if len(nz) else row[:0]


# ------------------------------------------------------------------------------------------ augmentations
def test_crop_keeps_a_left_padded_contiguous_window():
    seq, lens = _batch(0)
    out = np.asarray(jax.jit(A.crop)(jax.random.PRNGKey(1), jnp.asarray(seq)))
    for row, o, n in zip(seq, out, lens):
        c = n if n <= 1 else n // 2
        assert (o != 0).sum() == c
        assert (o[:L - c] == 0).all()                          # padding only in front
        real, kept = _real(row).tolist(), o[L - c:].tolist()
        starts = [i for i in range(len(real) - c + 1) if real[i:i + c] == kept]
        assert starts, (row, o)                                # a contiguous window of the original
    # the window start is uniform over all n - c + 1 offsets (n = 12, c = 6 -> 7 offsets)
    row = np.arange(1, 13, dtype=np.int32)[None].repeat(7000, 0)
    first = np.asarray(A.crop(jax.random.PRNGKey(2), jnp.asarray(row)))[:, L - 6]
    freq = np.bincount(first - 1, minlength=7) / len(first)
    assert freq.shape == (7,) and np.abs(freq - 1 / 7).max() < 0.02


def test_mask_zeroes_half_of_the_real_positions():
    seq, lens = _batch(1)
    out = np.asarray(jax.jit(A.mask)(jax.random.PRNGKey(3), jnp.asarray(seq)))
    for row, o, n in zip(seq, out, lens):
        real = np.arange(L) >= L - n
        assert (o[~real] == 0).all()
        changed = o != row
        assert changed.sum() == n // 2 and (o[changed] == 0).all() and real[changed].all()
    # every real position is equally likely to be masked
    row = np.arange(1, 11, dtype=np.int32)[None].repeat(5000, 0)
    hit = np.asarray(A.mask(jax.random.PRNGKey(4), jnp.asarray(row))) == 0
    assert np.abs(hit.mean(0) - 0.5).max() < 0.03


def test_reorder_shuffles_one_window_only():
    seq, lens = _batch(2)
    out = np.asarray(jax.jit(A.reorder)(jax.random.PRNGKey(5), jnp.asarray(seq)))
    n_changed = 0
    for row, o, n in zip(seq, out, lens):
        r = (4 * n) // 5
        assert sorted(o.tolist()) == sorted(row.tolist())       # same multiset, padding stays 0
        assert (o[:L - n] == 0).all()
        diff = np.flatnonzero(o != row)
        if len(diff):
            assert diff[-1] - diff[0] < r                        # all changes inside one window of r
            n_changed += 1
        if n <= 1:
            assert (o == row).all()
    assert n_changed > len(seq) // 2


def test_two_views_use_two_different_operators():
    seq, lens = _batch(3, b=3000, min_len=2)
    v1, v2, (o1, o2) = jax.jit(functools.partial(A.two_views, return_ops=True))(
        jax.random.PRNGKey(6), jnp.asarray(seq))
    o1, o2, v1 = np.asarray(o1), np.asarray(o2), np.asarray(v1)
    assert (o1 != o2).all()
    pairs = np.bincount(o1 * 3 + o2, minlength=9).reshape(3, 3) / len(o1)
    assert np.abs(pairs[~np.eye(3, dtype=bool)] - 1 / 6).max() < 0.03
    # the operator recorded is the one applied: item counts n // 2 (crop), n - n // 2 (mask), n (reorder)
    n1 = (v1 != 0).sum(1)
    expect = np.choose(o1, [lens // 2, lens - lens // 2, lens])
    np.testing.assert_array_equal(n1, expect)


def test_length_one_is_left_alone():
    seq = np.zeros((50, L), np.int32)
    seq[:, -1] = np.arange(1, 51)
    v1, v2 = jax.jit(A.two_views)(jax.random.PRNGKey(7), jnp.asarray(seq))
    np.testing.assert_array_equal(v1, seq)
    np.testing.assert_array_equal(v2, seq)


# ------------------------------------------------------------------------------------------ losses
def _nt_xent_loops(a, b, t):
    """Direct definition: for each of the 2B anchors, -log(exp(pos) / sum over the 2B-1 others)."""
    u = np.concatenate([a, b])
    n = len(a)
    total = 0.0
    for i in range(2 * n):
        p = i + n if i < n else i - n
        others = [np.dot(u[i], u[j]) / t for j in range(2 * n) if j != i]
        total += -np.dot(u[i], u[p]) / t + math.log(sum(math.exp(x) for x in others))
    return total / (2 * n)


def test_nt_xent_matches_definition_and_hand_case():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    for t in (1.0, 0.5):
        np.testing.assert_allclose(M.nt_xent(jnp.asarray(a), jnp.asarray(b), t), _nt_xent_loops(a, b, t),
                                   rtol=1e-5)
    # hand case, B = 2, orthogonal unit views, identical pairs: each anchor sees exp(1) (positive), exp(0)
    # (the other sequence's two views) and exp(1) for ... no: others are {pos: 1, neg: 0, neg: 0}
    e = np.eye(2)
    expected = -1 + math.log(math.e + 2)
    np.testing.assert_allclose(M.nt_xent(jnp.asarray(e), jnp.asarray(e)), expected, rtol=1e-6)
    # zero embeddings: uniform over 2B - 1 candidates
    np.testing.assert_allclose(M.nt_xent(jnp.zeros((4, 3)), jnp.zeros((4, 3))), math.log(7), rtol=1e-6)
    np.testing.assert_allclose(M.nt_xent(jnp.asarray(a), jnp.asarray(b)), M.nt_xent(jnp.asarray(b), jnp.asarray(a)),
                               rtol=1e-6)


def test_regularizer_hand_cases():
    eye = jnp.eye(2)
    # S = [[2, 1], [0, 1]]: s+ = (2, 1), s- = (1, 0); min s+ = max s- = 1 -> o_min = o_max = 1
    # R = mean(relu((2, 1) - 1)) + mean(relu(1 - (1, 0))) = 0.5 + 0.5
    np.testing.assert_allclose(M.contrastive_regularizer(eye, jnp.array([[2.0, 0.0], [1.0, 1.0]])), 1.0, rtol=1e-6)
    # S = diag(3, 2): s+ = (3, 2), s- = (0, 0): o_min = 0, o_max = 2 -> R = mean(3, 2) + mean(2, 2) = 4.5
    np.testing.assert_allclose(M.contrastive_regularizer(eye, jnp.array([[3.0, 0.0], [0.0, 2.0]])), 4.5, rtol=1e-6)
    # positives below negatives: S = [[0, 5], [4, -1]]: min s+ = -1, max s- = 5 -> o_min = -1, o_max = 5
    # R = mean(relu((0, -1) + 1)) + mean(relu(5 - (5, 4))) = 0.5 + 0.5
    np.testing.assert_allclose(M.contrastive_regularizer(eye, jnp.array([[0.0, 4.0], [5.0, -1.0]])), 1.0, rtol=1e-6)
    with pytest.raises(ValueError):
        M.contrastive_regularizer(jnp.ones((1, 2)), jnp.ones((1, 2)))


def _reg_per_row_loops(a, b):
    """The authors' per-row R written as loops over the 2B x 2B matrix of u = [a; b]."""
    u = np.concatenate([a, b]); n2 = len(u); n = n2 // 2
    s = u @ u.T
    r_pos, r_neg = [], []
    for i in range(n2):
        p = (i + n) % n2
        negs = [s[i, j] for j in range(n2) if j not in (i, p)]
        o_min, o_max = min(s[i, p], max(negs)), max(s[i, p], max(negs))
        r_pos.append(max(s[i, p] - o_min, 0.0))
        r_neg += [max(o_max - v, 0.0) for v in negs]
    return np.mean(r_pos) + np.mean(r_neg)


def test_regularizer_per_row_hand_case():
    # a = I, b = [[2, 0], [1, 1]] -> u = [a; b], S = u u^T = [[1,0,2,1],[0,1,0,1],[2,0,4,2],[1,1,2,2]]
    # row 0: s+ = S02 = 2, s- = (S01, S03) = (0, 1): o_min 1, o_max 2 -> pos 1, neg (2, 1)
    # row 1: s+ = S13 = 1, s- = (0, 0):             o_min 0, o_max 1 -> pos 1, neg (1, 1)
    # row 2: s+ = S20 = 2, s- = (S21, S23) = (0, 2): o_min 2, o_max 2 -> pos 0, neg (2, 0)
    # row 3: s+ = S31 = 1, s- = (S30, S32) = (1, 2): o_min 1, o_max 2 -> pos 0, neg (1, 0)
    # R = mean(1, 1, 0, 0) + (2 + 1 + 1 + 1 + 2 + 0 + 1 + 0) / 8 = 0.5 + 1.0 (the global R of this case is 1.0)
    a, b = jnp.eye(2), jnp.array([[2.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(M.contrastive_regularizer(a, b, per_row=True), 1.5, rtol=1e-6)
    np.testing.assert_allclose(M.contrastive_regularizer(a, b), 1.0, rtol=1e-6)
    rng = np.random.default_rng(4)
    for n in (2, 3, 7):
        x, y = rng.normal(size=(n, 5)), rng.normal(size=(n, 5))
        np.testing.assert_allclose(M.contrastive_regularizer(jnp.asarray(x), jnp.asarray(y), per_row=True),
                                   _reg_per_row_loops(x, y), rtol=1e-5)


def test_augmenter_output_is_l2_normalised_and_views_stay_raw():
    aug = M.Augmenter((3, 2), 2, normalize=True)
    params = aug.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)))["params"]
    # last layer: kernel 0, bias (3, 4) -> w(h) = (3, 4) for every h -> z = (0.6, 0.8)
    params = dict(params, dense_out={"kernel": jnp.zeros((2, 2)), "bias": jnp.array([3.0, 4.0])})
    h = jnp.array([[1.0, -2.0], [0.5, 7.0]])
    np.testing.assert_allclose(aug.apply({"params": params}, h), [[0.6, 0.8], [0.6, 0.8]], rtol=1e-6)
    raw = M.Augmenter((3, 2), 2, normalize=False).apply({"params": params}, h)
    np.testing.assert_allclose(raw, [[3.0, 4.0], [3.0, 4.0]], rtol=1e-6)
    # through the model: every z row has norm 1, and L_cl2 / R use the raw views h with the normalised z
    cfg = M.preset("mclrec", **TINY)
    assert cfg.normalize_aug and cfg.reg_per_row
    model = M.build(cfg, 60)
    assert model.augmenter.normalize
    state = M.init_state(model, jax.random.PRNGKey(1))
    h1, h2 = (jnp.asarray(np.random.default_rng(i).normal(size=(8, TINY["hidden"])) * 3.0) for i in (0, 1))
    p1, p2 = state.lam["aug1"], state.lam["aug2"]
    z1, z2 = model.augmenter.apply({"params": p1}, h1), model.augmenter.apply({"params": p2}, h2)
    np.testing.assert_allclose(jnp.linalg.norm(z1, axis=1), 1.0, rtol=1e-5)
    cl2, reg = M.meta_terms(model, state.lam, h1, h2)
    np.testing.assert_allclose(cl2, M.nt_xent(z1, z2) + M.nt_xent(h1, z2) + M.nt_xent(h2, z1), rtol=1e-5)
    r = functools.partial(M.contrastive_regularizer, per_row=True)
    np.testing.assert_allclose(reg, r(h1, z2) + r(h2, z1) + r(z1, z2), rtol=1e-5)


def test_reproduction_presets_follow_the_authors_code():
    from jaxrec.configs import mclrec as C
    from jaxrec.experiment import config_hash

    mc = C.preset("mclrec")
    assert mc.repeat_stage1 and mc.normalize_aug and mc.reg_per_row and not mc.joint   # stage 1 / 2 / 1 again
    mj = C.preset("mclrec_j")
    assert mj.joint and mj.normalize_aug and mj.reg_per_row
    assert not C.preset("mclrec", ablation="no_reg").use_reg and C.preset("mclrec", ablation="no_reg").repeat_stage1
    assert C.LAMBDA_GRID == (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)
    # the library defaults stay the stored runs' behaviour and their cache keys (RESULTS.md's reduced table)
    d = C.MCLRecConfig()
    assert not (d.repeat_stage1 or d.normalize_aug or d.reg_per_row)
    assert config_hash(C.preset("mclrec", epochs=1, **C.STORED_1EPOCH)) == "a415ceba"
    assert config_hash(C.preset("sasrec", epochs=1)) == "96b738d6"


def test_losses_float64():
    with jax.enable_x64(True):
        a = jnp.asarray(np.random.default_rng(1).normal(size=(4, 3)))
        assert a.dtype == jnp.float64
        assert M.nt_xent(a, a[::-1]).dtype == jnp.float64
        assert M.contrastive_regularizer(a, a[::-1]).dtype == jnp.float64
        np.testing.assert_allclose(M.nt_xent(a, 2 * a), _nt_xent_loops(np.asarray(a), 2 * np.asarray(a), 1.0),
                                   rtol=1e-12)


# ------------------------------------------------------------------------------------------ stages
# One configuration for the stage tests and the short run, so M.build / make_step / make_eval caches
# share their compilations across tests.
TINY = dict(max_len=8, hidden=16, ff=32, n_blocks=1, batch_size=64, dropout=0.1, attn_dropout=0.1, lr=5e-3,
            epochs=3, patience=5)


@functools.lru_cache(maxsize=None)
def _data():
    s = synthetic.sequences(n_users=300, n_items=60, n_clusters=4, mean_len=10, min_len=4, max_len=14,
                            p_follow=0.8, seed=0)
    return M.prepare_data(s, max_len=8)


@functools.lru_cache(maxsize=None)
def _setup(name="mclrec", **kw):
    """Model, initial state and one batch; the same shapes as the short training run (shared compile)."""
    data = _data()
    model = M.build(M.preset(name, **{**TINY, **kw}), data["n_items"])
    state = M.init_state(model, jax.random.PRNGKey(0))
    batch = {"seq": jnp.asarray(data["train_seq"][:64]), "target": jnp.asarray(data["train_target"][:64])}
    return model, state, batch


def _same(a, b):
    return all(bool(jnp.array_equal(x, y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@functools.lru_cache(maxsize=None)
def _stages(model):
    """Stage 1 / stage 2 of the method, jitted: ``parts.inner`` / ``parts.outer`` of its AlternatingStep."""
    parts = M.make_parts(model)
    stage1 = jax.jit(lambda st, b, v, k: parts.inner(st, {**b, "views": v, "key": k}))
    stage2 = jax.jit(lambda st, v, k: parts.outer(st, None, {"views": v, "key": k}))
    return stage1, stage2


def test_stage2_does_not_touch_theta_and_stage1_not_phi():
    model, state, batch = _setup()
    assert isinstance(state, bl.BilevelState) and set(state.lam) == {"aug1", "aug2"}
    stage1, stage2 = _stages(model)
    views = A.two_views(jax.random.PRNGKey(1), batch["seq"])
    s1, _, _ = stage1(state, batch, views, jax.random.PRNGKey(2))
    assert _same(s1.lam, state.lam) and _same(s1.outer_opt, state.outer_opt)
    assert not _same(s1.theta, state.theta)
    s2, lp = stage2(s1, views, jax.random.PRNGKey(3))
    assert _same(s2.theta, s1.theta) and _same(s2.inner_opt, s1.inner_opt)
    assert not _same(s2.lam, s1.lam) and np.isfinite(float(lp))
    assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves((s2.theta, s2.lam)))
    # the freeze is not vacuous: L0 does depend on phi (beta > 0)
    l0 = jax.jit(lambda ph: M.losses_stage1(model, state.theta, ph, batch, views, jax.random.PRNGKey(2))[0])
    assert float(l0(state.lam)) != float(l0(jax.tree.map(lambda x: 1.5 * x, state.lam)))
    # the full jitted step of the mclrec preset is exactly stage 1, stage 2 (at the NEW theta) and stage 1
    # again (repeat_stage1, the authors' trainer), all on the same views
    assert model.config.repeat_stage1
    key = jax.random.PRNGKey(9)
    k_aug, k1, k2, k3 = jax.random.split(key, 4)
    v = A.two_views(k_aug, batch["seq"])
    ref, _ = stage2(stage1(state, batch, v, k1)[0], v, k2)
    ref = stage1(ref, batch, v, k3)[0]
    out, aux = M.make_step(model)(state, batch, key)
    for x, y in zip(jax.tree.leaves((ref.theta, ref.lam)), jax.tree.leaves((out.theta, out.lam))):
        np.testing.assert_allclose(x, y, rtol=2e-5, atol=1e-6)
    assert int(out.step) == 1 and set(aux) == {"loss", "l_rec", "l_cl1", "l_cl2", "reg", "phi_loss"}


def test_stage2_gradient_is_that_of_the_phi_loss_at_the_new_theta():
    """Stage 2's Adam step is driven by grad_phi (L_cl2 + 0.1 R) of the views encoded with stage 1's theta
    (first Adam step: update = -lr * sign(g) where g != 0)."""
    model, state, batch = _setup()
    stage1, stage2 = _stages(model)
    views = A.two_views(jax.random.PRNGKey(1), batch["seq"])
    s1 = stage1(state, batch, views, jax.random.PRNGKey(2))[0]
    s2, lp = stage2(s1, views, jax.random.PRNGKey(3))
    h = jax.jit(lambda th, x, k: M.encode_train(model, th, x, k))(s1.theta, jnp.concatenate(views),
                                                                    jax.random.PRNGKey(3))

    def phi_loss(phi):
        return M.meta_objective(model, *M.meta_terms(model, phi, h[:64], h[64:]))

    value, g = jax.jit(jax.value_and_grad(phi_loss))(s1.lam)
    np.testing.assert_allclose(lp, value, rtol=1e-5)
    step = jax.tree.map(lambda a, b: a - b, s2.lam, s1.lam)
    for d, gg in zip(jax.tree.leaves(step), jax.tree.leaves(g)):
        big = np.abs(np.asarray(gg)) > 1e-3
        np.testing.assert_allclose(np.asarray(d)[big], -TINY["lr"] * np.sign(np.asarray(gg))[big], rtol=1e-3)


def test_joint_and_configurations():
    model, state, batch = _setup("mclrec_j")
    out, aux = M.make_step(model)(state, batch, jax.random.PRNGKey(1))
    assert not _same(out.theta, state.theta) and not _same(out.lam, state.lam)
    views = A.two_views(jax.random.PRNGKey(1), batch["seq"])
    # SASRec: no augmenters, no contrastive terms; CL4SRec: L_rec + 0.1 L_cl1
    m_s, st_s, _ = _setup("sasrec")
    assert st_s.lam == {} and not m_s.config.uses_views
    _, aux_s = jax.jit(lambda th: M.losses_stage1(m_s, th, {}, batch, None, jax.random.PRNGKey(1)))(st_s.theta)
    assert float(aux_s["l_cl1"]) == 0 and float(aux_s["l_cl2"]) == 0
    np.testing.assert_allclose(aux_s["loss"], aux_s["l_rec"])
    m_c, st_c, _ = _setup("cl4srec")
    _, aux_c = jax.jit(lambda th: M.losses_stage1(m_c, th, {}, batch, views, jax.random.PRNGKey(1)))(st_c.theta)
    assert float(aux_c["l_cl1"]) > 0 and float(aux_c["l_cl2"]) == 0
    np.testing.assert_allclose(aux_c["loss"], aux_c["l_rec"] + 0.1 * aux_c["l_cl1"], rtol=1e-5)
    # shared augmenters: one parameter set
    m_sh = M.build(M.preset("mclrec", ablation="shared", **TINY), 60)
    assert set(jax.eval_shape(lambda k: M.init_state(m_sh, k), jax.random.PRNGKey(0)).lam) == {"aug"}
    with pytest.raises(ValueError, match="unknown model"):
        M.preset("gru4rec")
    with pytest.raises(ValueError, match="only applies"):
        M.preset("sasrec", ablation="no_reg")
    with pytest.raises(ValueError, match="not divisible"):
        M.build(M.preset("mclrec", hidden=15, n_heads=2), 60)


def test_prepare_data_counts():
    s = synthetic.sequences(n_users=50, n_items=30, mean_len=8, min_len=3, max_len=20, seed=1)
    d = M.prepare_data(s, max_len=8)
    lens = np.array([len(x) for x in s.seqs])
    assert len(d["train_target"]) == int(np.maximum(lens - 3, 0).sum())
    assert d["valid_seq"].shape == (50, 8) and d["test_seq"].shape == (50, 8)
    for u in (0, 7):
        np.testing.assert_array_equal(_real(d["test_seq"][u]), s.seqs[u][:-1][-8:])
        np.testing.assert_array_equal(_real(d["valid_seq"][u]), s.seqs[u][:-2][-8:])
        assert d["test_target"][u] == s.seqs[u][-1] and d["valid_target"][u] == s.seqs[u][-2]


def test_epoch_batches_are_a_function_of_seed_and_epoch():
    data = _data()
    b = M.epoch_batches(data, 0, 1, 64)
    n = len(data["train_target"])
    assert b["seq"].shape == (n // 64, 64, 8) and b["key"].shape == (n // 64, 2)
    assert _same(b, M.epoch_batches(data, 0, 1, 64)) and not _same(b, M.epoch_batches(data, 0, 2, 64))
    assert M.epoch_batches(data, 0, 1, 64, max_batches=3)["seq"].shape[0] == 3
    ids = np.asarray(b["target"]).ravel()  # each instance at most once per epoch
    assert len(ids) == (n // 64) * 64
    np.testing.assert_array_equal(b["key"][2], jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(0), 1), 2))


def test_ragged_flag_hand_case():
    """``long_rows(m B) = round(0.25 m B)``; a batch of 8 rows with k rows longer than 2 fits every encode
    call (m = 1, 2, 3 stacked copies) iff m k <= 2 m, i.e. k <= 2; off when ``ragged_width = 0``."""
    cfg = M.preset("mclrec", **{**TINY, "ragged_width": 2, "ragged_long_frac": 0.25})
    seq = np.zeros((1, 8, 8), np.int32)
    seq[0, :, -2:] = 5                               # every row has 2 items
    seq[0, :2, -3] = 6                               # 2 rows of 3 items
    assert M.ragged_flag(cfg, seq).value
    seq[0, 2, -3] = 6                                # a third long row
    assert not M.ragged_flag(cfg, seq).value
    assert M.ragged_flag(M.preset("mclrec", **{**TINY, "ragged_width": 0}), seq) is None
    assert M.ragged_flag(M.preset("mclrec", **{**TINY, "ragged_width": 8}), seq) is None  # not narrower than L
    assert [M.long_rows(cfg, n) for n in (8, 16, 24, 2)] == [2, 4, 6, 1]


def _conds(jaxpr) -> int:
    """How many ``cond`` equations a jaxpr holds, nested ones included."""
    n = 0
    for eq in jaxpr.eqns:
        n += eq.primitive.name == "cond"
        for p in eq.params.values():
            for sub in (p if isinstance(p, (tuple, list)) else (p,)):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    n += _conds(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    n += _conds(sub)
    return n


def test_host_checked_ragged_step_equals_the_cond_step():
    """With the epoch's ``ragged`` flag stage 1's losses equal those the device-side cond gives, and the
    preset's three-pass step traces without the encoder's conds (one cond left: the loop's skip of stage 2
    on its second trip). A batch of the longest rows (8 items: crops of 4 and masked views of at least 4
    items are longer than 3) is flagged as not fitting; the method's batches carry the flag."""
    data = _data()
    seqs = np.asarray(data["train_seq"])
    ext = (seqs != 0).sum(-1)
    pick = np.argsort(ext, kind="stable")[:64]  # the shortest rows: they fit
    b = {"seq": jnp.asarray(seqs[pick]), "target": jnp.asarray(data["train_target"][pick])}
    model, state, _ = _setup(ragged_width=3, ragged_long_frac=0.75)
    flag = M.ragged_flag(model.config, seqs[pick][None])
    assert flag.value and not M.ragged_flag(model.config, seqs[np.argsort(-ext)[:64]][None]).value
    views = A.two_views(jax.random.PRNGKey(1), b["seq"])
    l0 = jax.jit(lambda bb: M.losses_stage1(model, state.theta, state.lam, bb, views, jax.random.PRNGKey(2))[1])
    ref, out = l0(b), l0(dict(b, ragged=flag))  # stage 1's terms (the gradients: test_sasrec's ragged tests)
    assert np.isfinite(float(out["loss"])) and float(out["l_cl2"]) > 0
    for k in ref:
        np.testing.assert_allclose(out[k], ref[k], rtol=2e-5, atol=1e-6)
    trace = functools.partial(jax.make_jaxpr(M.make_step(model, jit=False)), state)
    assert _conds(trace(dict(b, ragged=flag), jax.random.PRNGKey(3)).jaxpr) == 1
    assert _conds(trace(b, jax.random.PRNGKey(3)).jaxpr) == 1 + 3  # + stage 1 twice, stage 2 once
    b = M.epoch_batches(data, 0, 1, 64, config=model.config)
    assert isinstance(b["ragged"], protocol.Static) and "ragged" not in M.epoch_batches(data, 0, 1, 64)


def test_short_run_improves_validation_ndcg():
    data = _data()
    model, state, _ = _setup()
    before = M.evaluate(model, state.theta, data["valid_seq"], data["valid_target"], block=512)
    cfg = M.preset("mclrec", **TINY)
    res = protocol.train(M.method(cfg, data), seed=0, epochs=cfg.epochs, metric="ndcg@10", patience=cfg.patience,
                         log=None)
    assert M.build(cfg, data["n_items"]) is model  # compiled parts reused
    assert res.val["ndcg@10"] > before["ndcg@10"] + 0.1, (before, res.val)
    assert res.test["hit@10"] > 0.3 and res.epochs_run == 3


def test_real_beauty_protocol(data_dir):
    s = load_sequences("Amazon_Beauty", data_dir)
    d = M.prepare_data(s, max_len=50)
    assert d["n_items"] == 12101 and len(d["valid_target"]) == 22363
    assert len(d["train_target"]) == 198502 - 3 * 22363
    assert d["train_seq"].shape == (131413, 50)


def test_curves_table_runs_every_model_for_the_same_epochs_and_picks_lam_on_validation(tmp_path):
    """``--table curves``: SASRec, CL4SRec (every lam of the grid) and MCLRec each run for exactly ``--epochs``
    epochs (patience = epochs: no early stop), CL4SRec's row is the lam with the best validation NDCG@10, and
    the per-epoch plot is written. (4 epochs: the synthetic preset's patience is 3.) The training itself is replaced by records with known histories."""
    from experiments import mclrec as exp
    from jaxrec import cli, experiment

    inv = cli.parse(exp.SPEC, ["--table", "curves", "--epochs", "4", "--lam", "0.1", "0.3", "0.2", "--out", str(tmp_path)])
    runner = experiment.Runner(inv)
    seen = []
    val = {("sasrec", 0.0): 0.02, ("cl4srec", 0.1): 0.03, ("cl4srec", 0.3): 0.05, ("cl4srec", 0.2): 0.04,
           ("mclrec", 0.0): 0.01}

    def fake_run(config, seed, label=None, fresh=False):
        seen.append((label, config.lam, config.epochs, config.patience, config.beta, config.repeat_stage1))
        v = val[(label, config.lam)]
        hist = [{"epoch": e, "val": {"ndcg@10": v * (e + 1) / 4}} for e in range(4)]
        return {"metrics": {"val": {"ndcg@10": v}, "test": {c: v + 1e-3 for c in exp.COLUMNS}},
                "extra": {"best_epoch": 3, "history": hist}}

    runner.run = fake_run
    text = runner.main()
    assert {s[0] for s in seen} == {"sasrec", "cl4srec", "mclrec"}
    assert all(s[2] == 4 and s[3] == 4 for s in seen), seen  # the same epochs, never stopped early
    assert {s[1] for s in seen if s[0] == "cl4srec"} == {0.1, 0.2, 0.3}
    assert all(s[4] == 0.05 and s[5] for s in seen if s[0] == "mclrec")  # the reproduction preset
    row = next(line for line in text.splitlines() if line.startswith("| CL4SRec |"))
    assert f"{0.05 + 1e-3:.4f}" in row  # lam = 0.3, the best on validation
    assert "lam=0.3: 0.0500" in text
    assert "| CL4SRec lam=0.3 | 0.0125 | 0.0250 | 0.0375 | 0.0500 |" in text  # the chosen lam's curve, per epoch
    assert (tmp_path / "mclrec" / "synthetic" / "curves_4ep.png").stat().st_size > 0


def test_step_benchmark_counts_every_evaluation_block_in_its_flops():
    """``benchmarks/mclrec_step.py``'s evaluation FLOPs are summed over the blocks ``evaluate`` dispatches: at
    least the score matmul's ``2 * padded users * d * n_items`` (a hand count), and the fraction of the
    matmul rate is that count over the measured time."""
    from benchmarks import mclrec_step as B

    n_users, n_items, max_len = 1500, 20000, 2  # two blocks of 1024 (the second padded); scores dominate
    ev = B.time_eval(n_users, n_items, max_len, repeats=1, rng=np.random.default_rng(0))
    d = M.preset("mclrec").hidden
    assert ev["blocks"] == 2 and ev["n_users"] == n_users
    assert ev["gflop"] * 1e9 >= 2 * 2048 * d * n_items
    assert ev["fraction"] == pytest.approx(ev["gflop"] / ev["median_s"] / ev["matmul_gflops"])
