"""jaxrec data layer: loaders, splits, samplers, sequence utilities and synthetic generators.

Numpy in, device arrays out: everything here works on numpy/scipy; :func:`batch_iterator` yields ``jnp``
arrays for jitted steps. Bad input raises :class:`DataError` naming the file, the line and the fix.
"""
from . import synthetic
from .coldstart import cold_start_split, load_ml1m_melu_all, major_users, model_features, support_query_tasks
from .errors import DataError
from .loaders import (DATASETS, SEQUENCE_DATASETS, interactions_to_sequences, load_adult, load_dataset,
                      load_lastfm, load_ml1m_melu, load_ml1m_melu_interactions, load_ml100k,
                      load_ml_latest_small, load_sequences)
from .paths import DOWNLOADS, download, resolve_data_dir, verify_file
from .samplers import batch_iterator, sample_negatives, to_csr
from .sequences import pad_sequences, prefix_instances
from .splits import (SeqSplit, Split, cold_start_tasks, compact, global_split, k_core, leave_one_out, ratio_split,
                     standardise_ratings)
from .types import ColdStartTasks, Interactions, LastFM, Sequences, Tabular

__all__ = [
    "DataError", "resolve_data_dir", "verify_file", "download", "DOWNLOADS",
    "Interactions", "Sequences", "Tabular", "ColdStartTasks", "LastFM",
    "DATASETS", "SEQUENCE_DATASETS", "load_dataset", "load_ml100k", "load_ml_latest_small", "load_ml1m_melu",
    "load_ml1m_melu_interactions", "load_sequences", "load_adult", "load_lastfm", "interactions_to_sequences",
    "Split", "SeqSplit", "ratio_split", "global_split", "standardise_ratings", "leave_one_out", "k_core", "compact", "cold_start_tasks",
    "cold_start_split", "support_query_tasks", "major_users", "load_ml1m_melu_all", "model_features",
    "sample_negatives", "batch_iterator", "to_csr", "pad_sequences", "prefix_instances", "synthetic",
]
