"""What a criterion sees."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from jax.sharding import Mesh

from lpjax import arch as arch_lib


@dataclasses.dataclass(frozen=True)
class Context:
  """Everything a criterion may use to score the candidates of a model.

  Attributes:
    arch: the current (possibly pruned) network.
    variables: its `{'params', 'batch_stats'}`.
    images: calibration images `[n, H, W, C]`, eval preprocessing.
    labels: their labels `[n]` (unused by label-free criteria).
    seed: the run's seed, for stochastic criteria.
    iteration: pruning iteration (1-based), for stochastic criteria.
    representation: which representation similarity criteria compare.
    data_batch_size: images per forward pass while scoring.
    candidate_chunk: `None`: every candidate in one shared-prefix pass;
      an int: that many masked forwards at a time (see `lpjax.scoring`).
    mesh: optional device mesh for data-parallel scoring.
  """

  arch: arch_lib.Arch
  variables: Any
  images: np.ndarray
  labels: np.ndarray
  seed: int = 0
  iteration: int = 1
  representation: str = 'pooled'
  data_batch_size: int = 500
  candidate_chunk: int | None = None
  mesh: Mesh | None = None
