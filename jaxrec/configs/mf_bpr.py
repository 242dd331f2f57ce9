"""Config of MF-BPR (:mod:`jaxrec.methods.mf_bpr`)."""
from __future__ import annotations

import dataclasses

from jaxrec.cli import param


@dataclasses.dataclass
class MFBPRConfig:
    dataset: str = "synthetic"
    dim: int = param(64, "embedding size", "positive")
    lr: float = param(5e-3, "Adam learning rate", "rate")
    l2: float = param(1e-3, "L2 weight on the batch embeddings", "nonneg")
    batch_size: int = param(2048, "training pairs per step", "positive")
    epochs: int = param(300, "maximum training epochs", "positive")
    patience: int = param(10, "early-stopping patience (epochs without a better validation NDCG@20)", "positive")
    init_scale: float = param(0.1, "std of the normal initial embeddings", "positive")
    test_frac: float = param(0.2, "test fraction of each user's interactions", "fraction")
    val_frac: float = param(0.1, "validation fraction of the remaining training interactions", "fraction")
    min_rating: float = param(0.0, "keep ratings >= this as interactions (0 = all)", "nonneg")
    small: bool = param(False, "a 200 x 300 synthetic set (--quick)", flag=False)
    ks: tuple = (5, 10, 15, 20)
