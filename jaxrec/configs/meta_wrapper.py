"""Config of Meta-Wrapper and its CTR baselines (:mod:`jaxrec.methods.meta_wrapper`); JAX-free.

The fields up to ``track_train_loss`` are those of the stored result files. ``detach`` (issue 33) changed
the default training form of M2 / M4 and the data of M1, so it is in every run's key: the runs stored before
it (the coupled form, M1 on D_in only) have keys no current config produces and are never read back as
runs of the new form. ``optimizer`` / ``lr_decay`` came with it; their defaults (Adam, constant rate) are
the stored runs' and enter the key only when changed (``key_if_changed``). ``model`` / ``variant`` are set
by the experiment's model presets (``--model NAME``), not by flags.
"""
from __future__ import annotations

import dataclasses

from jaxrec.cli import param

VARIANTS = ("plain", "M1", "M2", "M3", "M4")
OPTIMIZERS = ("adam", "sgd")
MODELS = ("base", "wdl", "pnn", "deepfm", "din")  # = jaxrec.models.ctr.MODELS (kept JAX-free here)


@dataclasses.dataclass
class MWConfig:
    """``variant`` one of :data:`VARIANTS`; ``model`` one of :data:`MODELS` (``M1``-``M4`` need ``"din"``).
    ``mu`` weighs the outer term, ``beta`` is the inner rate and ``n_inner`` the number N of unrolled steps.
    ``l2`` is added to every gradient as ``2 * l2 * params``. ``detach`` (Algorithm 1 line 1, Eq. 12): the
    outer term reaches phi only, theta trains on ``L_in`` alone (M2, M4; M1 / M3 / plain are the same either
    way). ``optimizer`` updates theta and phi (``lr`` times ``lr_decay`` per epoch). Training keeps the epoch
    with the best validation AUC (``patience`` epochs without improvement stop early; 0 = never)."""

    model: str = param("din", "CTR model", choices=MODELS, flag=False)
    variant: str = param("M4", "training scheme", choices=VARIANTS, flag=False)
    emb_dim: int = param(16, "embedding size per feature", "positive")
    hidden: tuple = param((80, 40), "predictor MLP widths", flag=False)
    att_hidden: tuple = param((80, 40), "attention-unit MLP widths", flag=False)
    dropout: float = param(0.0, "dropout on the predictor's hidden layers (plain variant only)", "fraction")
    l2: float = param(0.0, "L2 weight: 2 * l2 * params added to every gradient", "nonneg")
    lr: float = param(1e-3, "initial learning rate of the optimizer (theta and phi)", "rate")
    batch_size: int = param(128, "rows per D_in (and D_out) batch", "positive")
    epochs: int = param(10, "training epochs", "positive")
    mu: float = param(0.4, "weight of the outer (out-of-bag) term", "nonneg")
    beta: float = param(1e-2, "inner (unrolled) step size", "positive")
    n_inner: int = param(1, "number N of unrolled inner steps (M4; M3 uses 1)", "positive")
    in_frac: float = param(0.8, "fraction of the training set in D_in each epoch (rest: D_out)", "fraction")
    eval_batch: int = param(4096, "rows per evaluation block", "positive")
    patience: int = param(0, "early-stopping patience in epochs (0 = never stop early)", "nonneg")
    track_train_loss: bool = param(True, "record the training-set and test AUC / loss after every epoch",
                                   flag=False)
    # issue 33: in every key (detach changed the default form; see the module docstring)
    detach: bool = param(True, "detached form (the paper's Algorithm 1 / Eq. 12): the outer term L_out(U(theta), "
                         "phi) updates phi only and theta trains on L_in alone; --no-detach: the outer term's "
                         "gradient also reaches theta through the unroll's start (M2, M4; the pre-issue-33 runs)")
    optimizer: str = param("adam", "optimizer of theta and phi: adam, or sgd (the paper's mini-batch SGD)",
                           choices=OPTIMIZERS, key_if_changed=True)
    lr_decay: float = param(1.0, "learning-rate factor per epoch (exponential decay, staircase at each epoch's "
                            "end; 1 = constant)", "unit", key_if_changed=True)

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}")
        if self.variant != "plain" and self.model != "din":
            raise ValueError(f"variant {self.variant} needs the attentive selector: use model='din'")
        if self.variant in ("M3", "M4") and self.n_inner < 1:
            raise ValueError("n_inner must be >= 1 for M3/M4")
        if self.variant != "plain" and self.dropout > 0:
            raise ValueError(f"dropout is applied by the 'plain' variant only; {self.variant} would ignore "
                             f"dropout={self.dropout}: use variant='plain' or dropout=0")
        if self.variant != "plain" and not 0 < self.in_frac < 1:
            raise ValueError(f"in_frac must lie in (0, 1) for {self.variant}, got {self.in_frac}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"lr_decay must lie in (0, 1], got {self.lr_decay}")
        self.hidden = tuple(self.hidden)
        self.att_hidden = tuple(self.att_hidden)
