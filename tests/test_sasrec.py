"""SASRec encoder: architecture, causality, padding/trimming invariance, dropout, dtype."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.models import sasrec as S

N_ITEMS = 30


@functools.lru_cache(maxsize=None)
def _model(max_len=10, hidden=16):
    cfg = S.SASRecConfig(n_items=N_ITEMS, max_len=max_len, hidden=hidden, n_heads=2, ff=4 * hidden)
    m = S.SASRec(cfg)
    params = jax.jit(m.init)(jax.random.PRNGKey(0), jnp.zeros((1, max_len), jnp.int32))["params"]
    return m, params


def _enc(m):
    return jax.jit(lambda p, s: S.encode(m, p, s))


def _seq_out(m):
    return jax.jit(lambda p, s: m.apply({"params": p}, s, method=S.SASRec.sequence_output))


def _batch(rng, b, L, n_items=N_ITEMS):
    lens = rng.integers(1, L + 1, size=b)
    seq = rng.integers(1, n_items + 1, size=(b, L))
    return np.where(np.arange(L)[None] >= L - lens[:, None], seq, 0).astype(np.int32), lens


def test_parameter_count_matches_architecture():
    d, L, ff, n = 64, 50, 256, 12101
    m = S.SASRec(S.SASRecConfig(n_items=n))
    shapes = jax.eval_shape(m.init, jax.random.PRNGKey(0), jnp.zeros((1, L), jnp.int32))["params"]
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
    per_block = 4 * (d * d + d) + (d * ff + ff) + (ff * d + d) + 2 * 2 * d
    expected = (n + 1) * d + L * d + 2 * d + 2 * per_block
    assert count == expected
    assert S.item_embeddings(shapes).shape == (n + 1, d)
    _, params = _model(hidden=64)
    emb = np.asarray(S.item_embeddings(params))
    assert abs(emb.std() - 0.02) < 0.002  # normal(0, 0.02) init
    assert abs(np.asarray(params["block_0"]["ff_in"]["kernel"]).std() - 0.02) < 0.002


def test_causal_output_depends_only_on_past():
    m, p = _model()
    rng = np.random.default_rng(0)
    a, _ = _batch(rng, 4, 10)
    a[:, :] = rng.integers(1, N_ITEMS + 1, size=a.shape)  # full rows
    b = a.copy()
    b[:, 7:] = rng.integers(1, N_ITEMS + 1, size=(4, 3))  # change the future of position 6
    f = _seq_out(m)
    ha, hb = f(p, jnp.asarray(a)), f(p, jnp.asarray(b))
    np.testing.assert_allclose(ha[:, :7], hb[:, :7], rtol=1e-5, atol=1e-6)
    assert not np.allclose(ha[:, 7:], hb[:, 7:])


def test_trimming_leading_padding_is_exact():
    m, p = _model()
    rng = np.random.default_rng(1)
    seq, lens = _batch(rng, 8, 10)
    seq[:, :4] = 0  # every row has at most 6 items
    enc = jax.jit(lambda p, s: S.encode(m, p, s))
    full = enc(p, jnp.asarray(seq))
    trimmed = S.trim_batch(seq, buckets=(6, 10))
    assert trimmed.shape == (8, 6)
    np.testing.assert_allclose(enc(p, jnp.asarray(trimmed)), full, rtol=1e-5, atol=1e-6)
    # but the items themselves matter: a different history gives a different representation
    seq2 = seq.copy()
    seq2[:, -2] = seq2[:, -2] % N_ITEMS + 1
    assert not np.allclose(enc(p, jnp.asarray(seq2)), full)


def test_padding_keys_are_ignored():
    """Without attention to padding keys, the item embedding of id 0 cannot matter."""
    m, p = _model()
    rng = np.random.default_rng(2)
    seq, _ = _batch(rng, 6, 10)
    seq[:, 0] = 0
    enc = _enc(m)
    h = enc(p, jnp.asarray(seq))
    p2 = jax.tree.map(lambda x: x, p)
    p2["item_emb"]["embedding"] = p["item_emb"]["embedding"].at[0].set(5.0)
    # outputs of padding query rows change, but the output at the last (real) position does not
    np.testing.assert_allclose(enc(p2, jnp.asarray(seq)), h, rtol=1e-5, atol=1e-6)
    p3 = jax.tree.map(lambda x: x, p)
    p3["item_emb"]["embedding"] = p["item_emb"]["embedding"].at[seq[0, -1]].set(5.0)
    assert not np.allclose(enc(p3, jnp.asarray(seq))[0], h[0])


def test_score_all_is_h_times_real_item_table():
    m, p = _model()
    seq, _ = _batch(np.random.default_rng(3), 5, 10)
    scores = jax.jit(lambda p, s: S.score_all(m, p, s))(p, jnp.asarray(seq))
    assert scores.shape == (5, N_ITEMS)
    h = np.asarray(_enc(m)(p, jnp.asarray(seq)))
    E = np.asarray(S.item_embeddings(p))
    np.testing.assert_allclose(scores, h @ E[1:].T, rtol=1e-5, atol=1e-6)


def test_last_position_path_equals_full_sequence_output():
    """``SASRec.__call__`` runs the last block on position L-1 only; its value and gradient equal those of the
    full ``sequence_output(...)[:, -1]`` (dropout off), and a train-mode call at rate 0 equals them too."""
    m, p = _model()
    seq = jnp.asarray(_batch(np.random.default_rng(5), 6, 10)[0])
    full = lambda p, s: m.apply({"params": p}, s, method=S.SASRec.sequence_output)[:, -1]  # noqa: E731
    np.testing.assert_allclose(_enc(m)(p, seq), jax.jit(full)(p, seq), rtol=1e-5, atol=1e-6)
    g_last = jax.jit(jax.grad(lambda p, s: jnp.sum(jnp.sin(S.encode(m, p, s)))))(p, seq)
    g_full = jax.jit(jax.grad(lambda p, s: jnp.sum(jnp.sin(full(p, s)))))(p, seq)
    for a, b in zip(jax.tree.leaves(g_last), jax.tree.leaves(g_full)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
    cfg0 = S.SASRecConfig(n_items=N_ITEMS, max_len=10, hidden=16, n_heads=2, ff=64, dropout=0.0, attn_dropout=0.0)
    m0 = S.SASRec(cfg0)
    t0 = jax.jit(lambda p, s, k: S.encode(m0, p, s, k, train=True))(p, seq, jax.random.PRNGKey(1))
    np.testing.assert_allclose(t0, _enc(m)(p, seq), rtol=1e-5, atol=1e-6)


def test_dropout_train_vs_eval():
    m, p = _model()
    seq = jnp.asarray(_batch(np.random.default_rng(4), 5, 10)[0])
    enc = _enc(m)
    e1, e2 = enc(p, seq), enc(p, seq)
    np.testing.assert_array_equal(e1, e2)
    tr = jax.jit(lambda p, s, k: S.encode(m, p, s, k, train=True))
    t1, t2 = tr(p, seq, jax.random.PRNGKey(1)), tr(p, seq, jax.random.PRNGKey(2))
    assert not np.allclose(t1, t2) and not np.allclose(t1, e1)
    with pytest.raises(ValueError, match="PRNG key"):
        S.encode(m, p, seq, train=True)


@pytest.mark.parametrize("rate", [0.5, 0.2])
def test_keep_mask_statistics(rate):
    m = np.asarray(S.keep_mask(jax.random.PRNGKey(0), (200, 500), rate))
    keep = 1 - S.quantised_rate(rate)
    assert abs(m.mean() - keep) < 0.005
    # neighbouring elements (often from the same random word) are independent
    a, b = m[:, :-1].ravel().astype(float), m[:, 1:].ravel().astype(float)
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.01
    # inverted dropout keeps the mean
    x = jnp.ones((200, 500))
    y = S.Dropout(rate).apply({}, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(3)})
    assert abs(float(y.mean()) - 1.0) < 0.02


def test_too_long_input_is_rejected():
    m, p = _model(max_len=10)
    with pytest.raises(ValueError, match="max_len"):
        S.encode(m, p, jnp.ones((2, 12), jnp.int32))


def test_float64():
    with jax.enable_x64(True):
        cfg = S.SASRecConfig(n_items=N_ITEMS, max_len=6, hidden=8, n_heads=2, ff=16)
        m = S.SASRec(cfg, param_dtype=jnp.float64)
        p = jax.jit(m.init)(jax.random.PRNGKey(0), jnp.zeros((1, 6), jnp.int32))["params"]
        s = jax.jit(lambda p, x: S.score_all(m, p, x))(p, jnp.ones((2, 6), jnp.int32))
        assert s.dtype == jnp.float64


def test_ragged_encoding_is_exact_on_both_paths():
    m, p = _model()
    rng = np.random.default_rng(5)
    seq, _ = _batch(rng, 16, 10)
    seq[:, :6] = np.where(np.arange(16)[:, None] < 3, seq[:, :6], 0)  # 3 long rows, 13 rows of <= 4 items
    seq[:3, 0] = 7
    rag = jax.jit(lambda p, s: S.encode_ragged(m, p, s, short_width=4, long_rows=4))
    full = _enc(m)(p, jnp.asarray(seq))
    np.testing.assert_allclose(rag(p, jnp.asarray(seq)), full, rtol=1e-5, atol=1e-6)      # split path
    seq2 = seq.copy()
    seq2[3:8, 0] = 9                                                                      # 8 long rows
    np.testing.assert_allclose(rag(p, jnp.asarray(seq2)), _enc(m)(p, jnp.asarray(seq2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(S.extents(jnp.asarray(seq))[:4], [10, 10, 10, 4])


def test_host_checked_ragged_paths_are_exact_and_loud():
    """``fits=True`` runs the split without a cond (values and gradients equal the full width); given a
    batch that does not fit, it returns NaN rows instead of truncating; ``fits=False`` is the full width."""
    m, p = _model()
    rng = np.random.default_rng(6)
    seq, _ = _batch(rng, 16, 10)
    seq[:, :6] = np.where(np.arange(16)[:, None] < 3, seq[:, :6], 0)  # 3 long rows, 13 rows of <= 4 items
    seq[:3, 0] = 7
    ext = np.asarray(S.extents(jnp.asarray(seq)))
    assert bool(S.ragged_fits(ext, 4, 4)) and not bool(S.ragged_fits(ext, 4, 2))
    full = _enc(m)(p, jnp.asarray(seq))

    def f(fits, lr=4):
        return jax.jit(lambda p, s: S.encode_ragged(m, p, s, short_width=4, long_rows=lr, fits=fits))

    np.testing.assert_allclose(f(True)(p, jnp.asarray(seq)), full, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(f(False)(p, jnp.asarray(seq)), full, rtol=1e-5, atol=1e-6)
    assert np.isnan(np.asarray(f(True, lr=2)(p, jnp.asarray(seq)))).all()        # 3 long rows > 2: loud
    w = jnp.asarray(rng.normal(size=full.shape))
    g_rag = jax.jit(jax.grad(lambda p: jnp.sum(w * S.encode_ragged(m, p, jnp.asarray(seq), short_width=4,
                                                                   long_rows=4, fits=True))))(p)
    g_full = jax.jit(jax.grad(lambda p: jnp.sum(w * S.encode(m, p, jnp.asarray(seq)))))(p)
    for a, b in zip(jax.tree.leaves(g_rag), jax.tree.leaves(g_full)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_last_block_benchmark_runs_and_refuses_bad_sizes():
    import benchmarks.sasrec_last_block as BL

    med = BL.main(["--batch-size", "4", "--max-len", "6", "--n-items", "20", "--rounds", "1"])
    assert set(med) == {"full", "last"} and all(v["both"] > 0 and v["fwd"] > 0 for v in med.values())
    with pytest.raises(SystemExit):
        BL.main(["--rounds", "0"])
