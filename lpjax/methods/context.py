"""What a pruning method sees (`Context`) and what it returns (`Decision`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh

from lpjax import arch as arch_lib
from lpjax import models, surgery

# (params, {'image': [b, ...], 'label': [b]}) -> scalar loss.
LossFn = Callable[[Any, Mapping[str, Any]], jax.Array]
# finetune(name, arch, variables, *, epochs=None) -> trained variables; runs
# a checkpointed stage called `name` inside the current iteration.
FinetuneFn = Callable[..., Any]
# holdout(n) -> inputs [n, ...] of the holdout split (None: all of it).
HoldoutFn = Callable[[int | None], np.ndarray]


def batch_mean_scores(ctx: Context, fn: Callable) -> dict[str, float]:
  """Per-candidate scores: `fn(model, variables, x) -> [K]` on every batch of
  the calibration inputs in one compiled call (`lpjax.scoring.map_batches`),
  averaged over batches (equal sizes, so the mean of batch means is the
  mean), checked finite and keyed by unit id."""
  from lpjax import scoring

  per_batch = scoring.map_batches(
    fn,
    ctx.arch,
    ctx.variables,
    ctx.inputs,
    data_batch_size=ctx.data_batch_size,
    mesh=ctx.mesh,
  )
  return scoring.checked_scores(ctx.arch.candidates, np.mean(per_batch, 0))


@dataclasses.dataclass(frozen=True)
class Context:
  """Everything a method may use to decide what to prune.

  Attributes:
    arch: the current (possibly pruned) network.
    variables: its variables (`{'params'}`, plus `'batch_stats'` where the
      family has BatchNorm).
    inputs: calibration inputs `[n, ...]` (eval preprocessing), drawn from
      the training data (or a holdout carved from it), never the test split.
    labels: their labels `[n]`.
    loss_fn: `loss_fn(params, batch) -> scalar`: mean cross-entropy of the
      model in eval mode (running BatchNorm statistics, no dropout), for
      gradient-based scores (`jax.grad(ctx.loss_fn)(ctx.variables['params'],
      batch)`).
    key: a PRNG key for this method call, from (seed, iteration).
    hparams: the method's own hyperparameters, `config.prune.<method name>`
      as a dict. Calling a method through its record
      (`lpjax.methods.get_method`) completes them with the declared
      defaults and checks them, so a method reads `ctx.hparams[key]`.
    seed: the run's seed.
    iteration: the pruning iteration (1-based).
    representation: the representation similarity methods compare
      (`lpjax.models.representations`).
    data_batch_size: examples per forward pass while scoring.
    candidate_chunk: `None`: every candidate in one shared-prefix pass; an
      int: that many masked forwards at a time (`lpjax.scoring`).
    similarity_dtype: `'float32'` or `'float64'` for the similarity step
      (`lpjax.scoring.score_candidates`).
    mesh: optional device mesh for data-parallel scoring.
    finetune: `finetune(name, arch, variables, *, epochs=None) -> variables`
      trains a probe child as a checkpointed, resumable stage of this
      iteration (`None` outside a pipeline run).
    holdout: `holdout(n) -> inputs [n, ...]`: examples of the holdout split
      carved from the training data (`n=None`: all of it), for methods that
      compare trained children (`everything`); `None` when the run has no
      holdout. Never the test split.
  """

  arch: arch_lib.Arch
  variables: Any
  inputs: np.ndarray
  labels: np.ndarray
  loss_fn: LossFn | None = None
  key: jax.Array | None = None
  hparams: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  seed: int = 0
  iteration: int = 1
  representation: str = 'pooled'
  data_batch_size: int = 500
  candidate_chunk: int | None = None
  similarity_dtype: str = 'float32'
  mesh: Mesh | None = None
  finetune: FinetuneFn | None = None
  holdout: HoldoutFn | None = None

  @property
  def model(self) -> nn.Module:
    """The linen module of `arch`."""
    return models.build_model(self.arch)


@dataclasses.dataclass(frozen=True)
class Decision:
  """What a method decided.

  Attributes:
    edit: the surgery to apply to the context's model.
    scores: per-unit scores (lower = more removable), keyed by unit id, for
      the report; empty for methods that do not score units.
    diagnostics: anything else worth recording (JSON-able).
    variables: `None` (the usual): the pipeline applies `edit` to the
      context's variables and fine-tunes that. Otherwise the variables of
      the edited model to continue from instead, e.g. a probe child the
      method already fine-tuned; they must have the edited model's shapes.
  """

  edit: surgery.Edit
  scores: Mapping[str, float] = dataclasses.field(default_factory=dict)
  diagnostics: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  variables: Any = None
