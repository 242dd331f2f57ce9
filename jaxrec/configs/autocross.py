"""Config of AutoCross (:mod:`jaxrec.methods.autocross`)."""
from __future__ import annotations

import dataclasses

from jaxrec.cli import param

MODELS = ("lr", "wd", "deep", "deepfm")


@dataclasses.dataclass
class AutoCrossConfig:
    dataset: str = "synthetic"
    model: str = param("lr", "model on the feature set: lr, wd (Wide&Deep: the set as the wide part), deep "
                             "(the deep part alone), deepfm", choices=MODELS)
    crosses: bool = param(True, "search crosses (AutoCross) and add them to the feature set (--no-crosses: "
                                "the preprocessed fields alone)")
    lr: float = param(1e-2, "Adam learning rate of the final model", "rate")
    l2: float = param(1e-6, "L2 weight (2*l2*theta added to the gradient) of the final model", "nonneg")
    batch_size: int = param(512, "training rows per step of the final model and of the full-LR refits", "positive")
    epochs: int = param(30, "maximum training epochs of the final model", "positive")
    patience: int = param(3, "early-stopping patience (epochs without a better validation AUC)", "positive")
    emb_dim: int = param(8, "embedding size of the deep models", "positive")
    hidden: tuple = (64, 32)
    bins: tuple = (10, 100, 1000)
    keep_frac: float = param(0.5, "fraction of the discretised numeric features kept by field-wise LR", "unit")
    max_crosses: int = param(10, "maximum number of accepted crosses", "positive")
    min_gain: float = param(1e-4, "stop when an accepted cross gains less validation AUC than this", "nonneg")
    search_lr: float = param(5.0, "gradient-descent step of the field-wise LRs (mean log loss of a block)", "rate")
    refit_lr: float = param(1e-2, "Adam learning rate of the warm-started full-LR refits", "rate")
    refit_epochs: int = param(2, "epochs of each full-LR refit after an accepted cross", "positive")
    val_frac: float = param(0.2, "validation fraction of adult.data (stratified, seeded)", "fraction")
    n_rows: int = param(12000, "rows of the synthetic set (train + validation + test)", "positive")
