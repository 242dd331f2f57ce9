"""Config of MAL (:mod:`jaxrec.methods.mal`); JAX-free, so ``python -m experiments.mal --help`` is instant.

The fields, their order and defaults are those the stored result files under ``results/mal/`` were hashed
with (:func:`jaxrec.experiment.config_hash`); ``graph_backend`` is left out of the hash (``key=False``):
every LightGCN back end computes the same model. ``meta_frac`` and ``negatives`` (issue 33) came later: their
defaults are the stored runs' behaviour and they enter the hash only when changed (``key_if_changed``), so
every stored run keeps its key; the paper protocol (``--grid paper`` in ``experiments.mal``) sets them.
"""
from __future__ import annotations

import dataclasses

from jaxrec.cli import param

BACKENDS = ("segment", "bcoo", "dense")  # jaxrec.models.lightgcn.BACKENDS (not imported: it loads JAX)
NEGATIVES = ("topm", "threshold")


@dataclasses.dataclass
class MALConfig:
    """Hyper-parameters of a MAL (or plain base-model) run.

    ``aux=()`` gives the plain base model (MF or LightGCN with BPR); ``mode`` then is irrelevant.
    """

    base: str = param("mf", "base model", choices=("mf", "lightgcn"))
    mode: str = param("sog", "Lambda's hypergradient: one-step (sog), implicit (ig) or fixed Lambda",
                      choices=("sog", "ig", "fixed"))
    aux: tuple = ("user", "item")  # auxiliary tasks, a subset of ("user", "item"); flag --aux (experiments.mal)
    dim: int = param(64, "embedding size", "positive")
    n_layers: int = param(3, "LightGCN layers", "positive")
    init_scale: float = param(0.1, "std of the normal initial embeddings", "positive")
    lr: float = param(5e-3, "Adam learning rate on Theta", "rate")
    l2: float = param(1e-4, "L2 weight on the batch's layer-0 embeddings", "nonneg")
    tau: float = param(0.3, "cosine threshold of the neighbourhoods", "unit")
    max_neighbors: int = param(50, "M: most neighbours kept per user / item", "positive")
    n_aux_neg: int = param(128, "sampled negative candidates per InfoNCE term", "positive")
    shared_negatives: bool = param(True, "one candidate set per batch (a matrix product) instead of per anchor")
    temperature: float = param(1.0, "InfoNCE temperature T", "positive")
    include_positive: bool = param(True, "the positive in the InfoNCE denominator (standard InfoNCE)")
    weight_init: float = param(0.5, "initial auxiliary weight sigmoid(lambda_0) (clipped to [0.01, 0.99])", "unit")
    meta_lr: float = param(1e-2, "Adam learning rate on Lambda", "rate")
    # Adam epsilon for Lambda: per-entity hypergradients are tiny (~1e-10 for SOG on ml-100k: one lambda touches
    # a few examples of a mean loss, times alpha), far below Adam's default 1e-8, which would freeze Lambda
    meta_eps: float = param(1e-20, "Adam epsilon on Lambda (hypergradients are ~1e-10)", "positive")
    alpha: float = param(1e-2, "SOG proxy step size", "rate")
    unroll_steps: int = param(1, "SOG: 1 = one step, > 1 = unrolled steps", "positive")
    gamma: float = param(1.0, "IG proximal strength (damping)", "positive")
    cg_steps: int = param(2, "IG: k CG steps", "positive")
    batch_size: int = param(5000, "training interactions per step", "positive")
    meta_batch_size: int = param(5000, "validation (D_meta) interactions per step", "positive")
    epochs: int = param(100, "maximum training epochs", "positive")
    eval_every: int = param(5, "epochs between validation evaluations", "positive")
    patience: int = param(5, "early stopping: evaluations without a better validation recall@20", "positive")
    ks: tuple = (5, 10, 15, 20)
    neighbor_block: int = param(1024, "rows per block of the cosine-neighbour computation", "positive")
    # issue 33 (added after the stored runs; in a run's key only when changed, so the stored runs keep theirs)
    meta_frac: float = param(0.0, "share of each user's training interactions held out as D_meta (0: D_meta is "
                             "the validation split, the stored runs' protocol)", "fraction", key_if_changed=True)
    negatives: str = param("topm", "auxiliary negatives outside the stored top-M list ('topm', the stored runs) or "
                           "outside every entity with cos >= tau ('threshold', the paper's Eq. 5)",
                           choices=NEGATIVES, key_if_changed=True)
    graph_backend: str = param("segment", "LightGCN's propagation (the same model; not part of a run's key)",
                               choices=BACKENDS, key=False)

    def __post_init__(self):
        if self.base not in ("mf", "lightgcn"):
            raise ValueError(f"base must be 'mf' or 'lightgcn', got {self.base!r}")
        if self.mode not in ("sog", "ig", "fixed"):
            raise ValueError(f"mode must be 'sog', 'ig' or 'fixed', got {self.mode!r}")
        if self.negatives not in NEGATIVES:
            raise ValueError(f"negatives must be one of {NEGATIVES}, got {self.negatives!r}")
        self.aux = tuple(self.aux)
        bad = set(self.aux) - {"user", "item"}
        if bad:
            raise ValueError(f"aux must be a subset of ('user', 'item'), got {self.aux!r}")
        self.ks = tuple(self.ks)

    @property
    def meta(self) -> bool:
        """Whether Lambda is meta-learned (there are aux tasks and mode is sog/ig)."""
        return bool(self.aux) and self.mode in ("sog", "ig")

    @property
    def name(self) -> str:
        base = {"mf": "MF", "lightgcn": "LightGCN"}[self.base]
        if not self.aux:
            return base
        if self.aux == ("user", "item") and self.meta:
            return f"{base}-MAL" + ("" if self.mode == "sog" else "-IG")
        tag = "+".join({"user": "U", "item": "I"}[a] for a in self.aux)
        return f"{base}+{tag}" + ("+M" if self.meta else "")
