"""Config of lambda-Opt (:mod:`jaxrec.methods.lambda_opt`)."""
from __future__ import annotations

import dataclasses

from jaxrec.cli import param

GRANULARITIES = ("global", "d", "du", "di", "dui", "fix")


@dataclasses.dataclass
class LambdaOptConfig:
    dataset: str = "synthetic"
    granularity: str = param("dui", "lambda shape: global | d | du | di | dui (learned by lambda-Opt), or fix "
                             "(MF-lambda-Fix: one global lambda = --lam, not learned)", choices=GRANULARITIES)
    lam: float = param(0.0, "the fixed global lambda of MF-lambda-Fix (granularity fix); the learned lambdas "
                       "start at 0", "nonneg")
    dim: int = param(128, "embedding size", "positive")
    lr: float = param(1e-3, "Adam learning rate of the MF parameters", "rate")
    lam_lr: float = param(1e-3, "AMSGrad learning rate of Lambda", "rate")
    clip: float = param(100.0, "gradient-norm clip of the MF update (and of the simulated one)", "positive")
    lam_clip: float = param(100.0, "gradient-norm clip of the Lambda update", "positive")
    batch_size: int = param(1024, "training triples per step (and validation triples per Lambda step)", "positive")
    epochs: int = param(60, "maximum training epochs", "positive")
    eval_every: int = param(5, "epochs between validation evaluations", "positive")
    patience: int = param(4, "early stopping: evaluations without a better validation HR@100", "positive")
    init_scale: float = param(0.1, "std of the normal initial embeddings", "positive")
    core: int = param(20, "k-core filter of users and items before the split (MovieLens: 20; 5-core sets keep 5)",
                      "positive")
    test_frac: float = param(0.2, "latest fraction of each user's interactions to test", "fraction")
    val_frac: float = param(0.25, "latest fraction of the rest to validation", "fraction")
    small: bool = param(False, "a 300 x 400 synthetic set (--quick)", flag=False)
    ks: tuple = (50, 100)
