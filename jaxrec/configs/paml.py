"""Config of the PAML family (:mod:`jaxrec.methods.paml`): MeLU, Meta-SGD, transfer learning, PAML, AT-PAML,
REG-PAML as settings of one method; JAX-free."""
from __future__ import annotations

import dataclasses

from jaxrec.cli import param

VARIANTS = ("melu", "meta_sgd", "transfer", "paml", "at_paml", "reg_paml")


def widths(s: str) -> tuple:
    """``"320,192"`` -> ``(320, 192)``."""
    try:
        out = tuple(int(x) for x in str(s).split(",") if x.strip())
    except ValueError:
        raise ValueError(f"widths must be comma-separated integers, got {s!r}") from None
    if not out or min(out) < 1:
        raise ValueError(f"widths must be comma-separated integers >= 1, got {s!r}")
    return out


@dataclasses.dataclass
class PAMLConfig:
    """``name`` picks the family member (see :mod:`jaxrec.methods.paml`); the experiment's presets set the
    paper's outer rate of each (PAML 5e-6, AT-PAML / REG-PAML 5e-5)."""

    name: str = param("reg_paml", "family member (set by the experiment's --methods)", choices=VARIANTS, flag=False)
    dataset: str = "synthetic"
    emb_dim: int = param(32, "embedding size per user / item field", "positive")
    hidden: str = param("320,192", "decision MLP hidden widths (comma-separated)")
    rate_hidden: str = param("64,32", "PAML rate network hidden widths (comma-separated)")
    rate_scale: float = param(1e-3, "PAML rate = rate_scale * sigmoid(...)", "positive")
    inner_steps: int = param(1, "inner adaptation steps on the support set (paper: 1; 5 as an option)", "positive")
    inner_lr: float = param(1e-5, "fixed inner rate (MeLU, transfer fine-tuning) and Meta-SGD's initial rates", "positive")
    first_order: bool = param(False, "stop the gradient through the inner gradients (first-order MAML)")
    outer_lr: float = param(5e-5, "outer Adam learning rate", "rate")
    batch_size: int = param(32, "users per meta-batch", "positive")
    epochs: int = param(20, "training epochs", "positive")
    patience: int = param(0, "early-stopping patience in epochs (0 = never stop; the best validation epoch is kept)", "nonneg")
    gamma: float = param(1e-3, "REG-PAML weight of |grad L_support|^2 * |alpha(h)|", "nonneg")
    memory_size: int = param(10000, "AT-PAML memory slots (LRU eviction)", "positive")
    k_train: int = param(20, "AT-PAML neighbours read in training", "positive")
    k_test: int = param(5, "AT-PAML neighbours read at validation / test time", "positive")
    delta: float = param(2.0, "AT-PAML kernel s_k = exp(-delta |h_i - h_k|^2)", "positive")
    memory_normalize: bool = param(True, "AT-PAML: keys and queries are L2-normalised h (else exp(.) underflows)")
    warmup_epochs: int = param(1, "AT-PAML epochs that write but do not read the memory", "nonneg")
    warmup_lr: float = param(5e-6, "AT-PAML outer rate in the warm-up epochs (text: 5e-4)", "rate")
    cold_frac: float = param(0.8, "fraction of users (fewest ratings) kept as cold-start users", "unit")
    min_ratings: int = param(2, "drop cold users with fewer ratings", "positive")
    support_frac: float = param(0.8, "support fraction of each user's ratings", "fraction")
    eval_batch: int = param(512, "users per evaluation block", "positive")
    small: bool = param(False, "a small synthetic set and model (--quick)", flag=False)

    def __post_init__(self):
        if self.name not in VARIANTS:
            raise ValueError(f"name must be one of {VARIANTS}, got {self.name!r}")
        widths(self.hidden)
        widths(self.rate_hidden)
        if self.min_ratings < 2:
            raise ValueError(f"min_ratings must be >= 2 (a support and a query item), got {self.min_ratings}")
