"""The "Hypergradients" README section runs as written, and NaN/inf hypergradients fail loudly."""
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from jax.experimental import checkify

import jaxrec.bilevel as bl

README = Path(__file__).resolve().parents[1] / "README.md"


def _section_text():
    """The README's "## Hypergradients" section, up to the next level-2 heading."""
    text = README.read_text()
    start = text.index("## Hypergradients")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def test_readme_hypergradient_examples_run():
    """Execute every ```python block of README.md's Hypergradients section in order, in one namespace."""
    blocks = re.findall(r"```python\n(.*?)```", _section_text(), flags=re.S)
    assert len(blocks) >= 6, "expected one example per mode in the Hypergradients section"
    ns = {"__name__": "readme_example"}
    for i, code in enumerate(blocks):
        exec(compile(code, f"README.md Hypergradients [block {i}]", "exec"), ns)
    # the examples exercise every mode
    text = "\n".join(blocks)
    for name in ("bl.unrolled", "bl.unroll(", "bl.one_step", "bl.implicit", "bl.argmin", "bl.adapt",
                 "bl.maml_objective", "NonFiniteError"):
        assert name in text, name


def _inner(theta, lam, batch):
    return 0.5 * jnp.sum((theta - batch) ** 2) + 0.5 * jnp.sum(lam * theta ** 2)


def _outer(theta, lam, batch):
    return jnp.sum(jnp.log(theta))


def test_check_finite_outside_and_inside_jit():
    good = {"a": jnp.ones(3), "b": (jnp.zeros(2),)}
    assert bl.check_finite(good, "x") is good
    bad = {"a": jnp.array([1.0, jnp.nan, jnp.inf]), "b": (jnp.zeros(2),)}
    with pytest.raises(bl.NonFiniteError, match=r"my grad is not finite: \['a'\]: 2/3 non-finite \(NaN/inf\)"):
        bl.check_finite(bad, "my grad")
    assert not bool(bl.all_finite(bad)) and bool(bl.all_finite(good))
    assert not bool(jax.jit(bl.all_finite)(bad))

    @jax.jit
    def f(x):
        return bl.check_finite(x * 2.0, "jitted grad")

    f(jnp.ones(2)).block_until_ready()
    with pytest.raises(Exception, match="jitted grad is not finite"):
        f(jnp.array([1.0, jnp.nan])).block_until_ready()

    err, _ = checkify.checkify(lambda x: bl.checkify_finite(x, "ck grad"))(jnp.array([jnp.inf]))
    with pytest.raises(Exception, match="ck grad contains NaN or inf"):
        err.throw()
    err, _ = checkify.checkify(lambda x: bl.checkify_finite(x, "ck grad"))(jnp.ones(1))
    err.throw()                           # no error for finite input


@pytest.mark.parametrize("mode", ["unrolled", "one_step", "implicit", "argmin"])
def test_constructors_with_check_raise_on_nan(mode):
    lam, batch = jnp.full(2, 0.1), jnp.array([1.0, 2.0])
    make = {
        "unrolled": lambda: bl.unrolled(_inner, _outer, steps=2, lr=0.1, check=True),
        "one_step": lambda: bl.one_step(_inner, _outer, lr=0.1, check=True),
        "implicit": lambda: bl.implicit(_inner, _outer, maxiter=2, check=True),
        "argmin": lambda: bl.argmin_hypergrad(_inner, _outer, bl.newton_solver(_inner, maxiter=2), check=True),
    }[mode]
    hg = make()
    value, d = hg(jnp.array([1.0, 2.0]), lam, batch, batch)       # finite: passes through
    assert bool(bl.all_finite(d))
    with pytest.raises(bl.NonFiniteError, match=r"hypergradient is not finite: .*\['d_lam'\]: [12]/2 non-finite"):
        hg(jnp.array([1.0, 2.0]), lam.at[0].set(jnp.nan), batch, batch)
