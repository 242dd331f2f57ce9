"""Config of SIF (:mod:`jaxrec.methods.sif`): the NASP search of interaction functions and the fixed-IFC
baselines. JAX-free, so ``--help`` answers before JAX loads."""
from __future__ import annotations

import dataclasses

from jaxrec.cli import param

OPS = ("plus", "multiply", "max", "min", "concat")  # = jaxrec.models.ifc.OPS (checked in the tests)
FIXED = ("mf", "plus", "max", "min", "deepwide", "ncf", "conv", "outer")  # = jaxrec.models.ifc.FIXED


@dataclasses.dataclass
class SIFConfig:
    dataset: str = "synthetic"
    model: str = param("search", "search: the NASP search (the run's summary holds the selected operation, alpha "
                       "and p, q); ifc: train one fixed interaction function (--ifc)", choices=("search", "ifc"))
    ifc: str = param("mf", "the fixed interaction function of --model ifc; 'searched' = --op with the searched p, q",
                     choices=FIXED + ("searched",))
    op: str = param("multiply", "the operation of --ifc searched", choices=OPS)
    pq: tuple = ()  # the searched p, q (jaxrec.models.ifc.pq_flat) for --ifc searched; set by the experiment
    no_auto: bool = param(False, "SIF(no-auto): the architecture step on the training batch")
    second_order: bool = param(False, "the one-step unrolled architecture gradient (bl.one_step) instead of first order")
    project_pq: bool = param(True, "keep the rows of p's and q's weights in the unit ball (off = the official code)")
    dim: int = param(8, "embedding size k", "positive")
    lr: float = param(0.05, "Adagrad learning rate of U, V, w", "rate")
    arch_lr: float = param(3e-4, "Adam learning rate of alpha, p, q (the search)", "rate")
    l2: float = param(1e-5, "lambda: weight of |U_batch|_F + |V_batch|_F in the loss", "nonneg")
    clip: float = param(5.0, "global-norm gradient clip of U, V, w", "positive")
    batch_size: int = param(512, "ratings per mini-batch (training and validation)", "positive")
    epochs: int = param(100, "epochs (the search runs all of them; a fixed IFC stops early)", "positive")
    patience: int = param(10, "early-stopping patience in epochs of validation RMSE (0 = never stop)", "nonneg")
    init_scale: float = param(1.0, "std of the normal initial embeddings (PyTorch's nn.Embedding: 1)", "positive")
    alpha_noise: float = param(1e-3, "alpha starts at 0.5 plus this std of normal noise", "nonneg")
    train_frac: float = param(0.5, "training fraction of the global random split", "fraction")
    val_frac: float = param(0.25, "validation fraction of the global random split (the rest is test)", "fraction")
    synth_op: str = param("multiply", "the operation that generates the synthetic ratings", choices=OPS)
    small: bool = param(False, "a smaller synthetic set (--quick)", flag=False)


def check(config: SIFConfig) -> str | None:
    """Whole-config check for the CLI: one message or None."""
    if config.train_frac + config.val_frac >= 1:
        return f"--train-frac + --val-frac must be < 1, got {config.train_frac} + {config.val_frac}"
    if config.train_frac <= 0:
        return "--train-frac must be > 0"
    return None
