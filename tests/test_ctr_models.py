"""CTR models: padding is masked everywhere, DIN with a constant selector is Base, dtype agnosticism,
the FM / PNN cross terms, and that each baseline learns the synthetic interest signal."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.models.ctr import (
    MODELS,
    CTRModelConfig,
    cast_params,
    ctr_logits,
    embed_batch,
    init_params,
    interest_weights,
    merge_params,
    split_params,
)


def _batch(rng, n_items=20, n_cats=4, B=6, T=5, pad=(0, 2, 4, 1, 3, 5)):
    hist = rng.integers(1, n_items + 1, size=(B, T))
    for b, p in enumerate(pad):
        hist[b, :p] = 0
    target = rng.integers(1, n_items + 1, size=B)
    cat_of = np.concatenate([[0], rng.integers(1, max(n_cats, 1) + 1, size=n_items)])
    batch = {"hist": hist, "target": target, "label": rng.integers(0, 2, size=B).astype(np.float32)}
    if n_cats:
        batch["hist_cat"], batch["target_cat"] = cat_of[hist], cat_of[target]
    return {k: jnp.asarray(v) for k, v in batch.items()}


def _cfg(n_cats=4):
    return CTRModelConfig(n_items=20, n_cats=n_cats, emb_dim=4, hidden=(8, 6), att_hidden=(8, 6))


@pytest.mark.parametrize("kind", MODELS)
def test_padding_is_ignored(kind):
    """Padded positions (id 0) change nothing: neither the padding rows' embeddings, nor extra padding
    columns, nor the selector's score there (which is exactly 0)."""
    cfg = _cfg()
    params = init_params(cfg, kind, jax.random.PRNGKey(0))
    batch = _batch(np.random.default_rng(0))
    logits = jax.jit(lambda p, b: ctr_logits(p, b, cfg, kind))
    ref = logits(params, batch)
    # perturb the padding rows of both tables
    p2 = jax.tree_util.tree_map(lambda x: x, params)
    p2["emb"] = {k: {"embedding": v["embedding"].at[0].set(5.0)} for k, v in params["emb"].items()}
    np.testing.assert_allclose(logits(p2, batch), ref, rtol=1e-5, atol=1e-6)
    # three more padding columns on the left
    wide = dict(batch)
    for k in ("hist", "hist_cat"):
        wide[k] = jnp.concatenate([jnp.zeros((batch[k].shape[0], 3), batch[k].dtype), batch[k]], axis=1)
    np.testing.assert_allclose(logits(params, wide), ref, rtol=1e-5, atol=1e-6)
    # the logits do depend on the real history items
    changed = dict(batch, hist=batch["hist"].at[0, -1].set(batch["hist"][0, -1] % 20 + 1))
    assert not np.allclose(logits(params, changed)[0], ref[0])


def test_selector_scores_zero_on_padding():
    cfg = _cfg()
    params = init_params(cfg, "din", jax.random.PRNGKey(1))
    batch = _batch(np.random.default_rng(1))
    h, t, mask = embed_batch(cfg, params["emb"], batch)
    s = interest_weights(cfg, params["sel"], h, t, mask)
    assert s.shape == batch["hist"].shape
    assert np.all(np.asarray(s)[~np.asarray(mask)] == 0)
    assert np.all(np.asarray(s)[np.asarray(mask)] != 0)


def test_din_with_unit_selector_is_base():
    """DIN pools sum_t s[t] e_t; with s == 1 on real positions it must equal Base's masked sum pooling."""
    cfg = _cfg()
    p = init_params(cfg, "din", jax.random.PRNGKey(2))
    sel = jax.tree_util.tree_map(lambda x: x, p["sel"])
    last = sorted(sel["MLP_0"].keys())[-1]  # the output Dense layer
    sel["MLP_0"][last] = {"kernel": jnp.zeros_like(sel["MLP_0"][last]["kernel"]),
                          "bias": jnp.ones_like(sel["MLP_0"][last]["bias"])}
    theta, _ = split_params(p)
    batch = _batch(np.random.default_rng(2))
    din = ctr_logits(merge_params(theta, sel), batch, cfg, "din")
    base = ctr_logits(theta, batch, cfg, "base")
    np.testing.assert_allclose(din, base, rtol=1e-5, atol=1e-6)
    assert not np.allclose(ctr_logits(p, batch, cfg, "din"), base)


def test_split_merge_roundtrip():
    p = init_params(_cfg(), "din", jax.random.PRNGKey(3))
    theta, phi = split_params(p)
    assert set(theta) == {"emb", "mlp"} and phi is p["sel"]
    assert jax.tree_util.tree_structure(merge_params(theta, phi)) == jax.tree_util.tree_structure(p)
    assert split_params(init_params(_cfg(), "base", jax.random.PRNGKey(3)))[1] == {}


@pytest.mark.parametrize("kind", MODELS)
def test_float64_and_no_categories(kind):
    cfg = _cfg(n_cats=0)
    batch = _batch(np.random.default_rng(4), n_cats=0)
    with jax.enable_x64(True):
        p = cast_params(init_params(cfg, kind, jax.random.PRNGKey(4)), jnp.float64)
        out = jax.jit(lambda p, b: ctr_logits(p, b, cfg, kind))(p, batch)
        assert out.dtype == jnp.float64 and out.shape == (6,) and np.all(np.isfinite(out))


def test_deepfm_second_order_is_pairwise_field_products():
    """DeepFM logit - its deep part - first-order part == sum_{i<j} <f_i, f_j> over the 4 fields."""
    cfg = _cfg()
    p = init_params(cfg, "deepfm", jax.random.PRNGKey(5))
    batch = _batch(np.random.default_rng(5))
    # zero the deep output layer -> deep part is its bias only (zero-initialised)
    last = sorted(p["mlp"].keys())[-1]
    p["mlp"][last] = jax.tree_util.tree_map(jnp.zeros_like, p["mlp"][last])
    p["fm"] = {k: jnp.zeros_like(v) for k, v in p["fm"].items()}
    ie = np.asarray(p["emb"]["item"]["embedding"])
    ce = np.asarray(p["emb"]["cat"]["embedding"])
    hist, hc = np.asarray(batch["hist"]), np.asarray(batch["hist_cat"])
    expect = []
    for b in range(hist.shape[0]):
        m = hist[b] > 0
        f = [ie[hist[b][m]].sum(0), ce[hc[b][m]].sum(0), ie[batch["target"][b]], ce[batch["target_cat"][b]]]
        expect.append(sum(f[i] @ f[j] for i in range(4) for j in range(i + 1, 4)))
    np.testing.assert_allclose(ctr_logits(p, batch, cfg, "deepfm"), expect, rtol=1e-4, atol=1e-5)


def test_dropout_needs_key_and_is_train_only():
    cfg = CTRModelConfig(n_items=20, n_cats=4, emb_dim=4, hidden=(8, 6), dropout=0.5)
    p = init_params(cfg, "base", jax.random.PRNGKey(6))
    batch = _batch(np.random.default_rng(6))
    a = ctr_logits(p, batch, cfg, "base")
    np.testing.assert_allclose(a, ctr_logits(p, batch, cfg, "base"))
    with pytest.raises(ValueError, match="PRNG key"):
        ctr_logits(p, batch, cfg, "base", train=True)
    b = ctr_logits(p, batch, cfg, "base", train=True, key=jax.random.PRNGKey(0))
    assert not np.allclose(a, b)


def test_baselines_learn_interest_signal():
    """On the synthetic set the category carries the signal (Bayes AUC ~0.66 w.r.t. noisy labels, 1.0 w.r.t.
    the noise-free ones); a few epochs of each model must rank the noise-free test labels well above chance."""
    from jaxrec import method as protocol
    from jaxrec.data.ctr import synthetic_interest_groups
    from jaxrec.methods.meta_wrapper import MWConfig, method, model_config, predict
    from jaxrec.metrics import auc

    split = synthetic_interest_groups(seed=0, n_users=30, n_items=2000)
    for kind in ("pnn",):
        cfg = MWConfig(model=kind, variant="plain", epochs=3, batch_size=64, lr=1e-2, emb_dim=8,
                       track_train_loss=False, eval_batch=256)
        res = protocol.train(method(cfg, split), seed=0, epochs=cfg.epochs, metric="auc", log=None)
        mcfg = model_config(cfg, split.train.n_items, split.train.n_cats)
        pred = jax.jit(lambda p, b: ctr_logits(p, b, mcfg, kind))  # noqa: B023
        scores = predict(pred, merge_params(res.state.theta, res.state.lam), split.test.arrays(), cfg.eval_batch)
        assert float(auc(jnp.asarray(split.test.true_label), jnp.asarray(scores))) > 0.8, kind
