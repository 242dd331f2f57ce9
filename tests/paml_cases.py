"""Tiny PAML-family configurations and one-batch setups shared by tests/test_paml*.py (not a test module)."""
import jax

from jaxrec.methods import paml

TINY = dict(small=True, emb_dim=3, hidden="4", rate_hidden="3,2", rate_scale=0.5, inner_lr=0.1, batch_size=4,
            memory_size=16, k_train=3, k_test=2, eval_batch=64)


def tiny_data():
    """The synthetic cold-start tasks at the tiny configuration (the data do not depend on the model fields)."""
    return paml.load(paml.PAMLConfig(**TINY), "synthetic", None, 0)


def setup(name, data, **kw):
    """``(config, method, initial state, first batch)`` of family member ``name`` at ``TINY`` updated by ``kw``."""
    cfg = paml.PAMLConfig(name=name, **{**TINY, **kw})
    m = paml.method(cfg, data)
    state = jax.jit(m.init)(jax.random.PRNGKey(0))  # one compilation instead of many eager ops
    batch = jax.tree_util.tree_map(lambda x: x[0], m.batches(0, 0))
    return cfg, m, state, batch
