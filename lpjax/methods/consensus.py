"""Layer pruning with Consensus (Mugnaini, Duarte, Reali Costa & Jordao 2024).

Eight representation metrics vote on which unit to remove. Each compares
the pooled features (configurable representation) of the unpruned model, R,
with those of the model without unit l, R_l; every metric is "lower = more
removable":

  * `cka`: 1 - linear CKA(R, R_l) (`lpjax.cka`);
  * `gaussian_stochastic_0`, `_1`, `_2`: the Gaussian stochastic shape
    distance with alpha = 0, 1, 2 (class-conditional; needs the labels);
  * `permutation`: the permutation shape angle;
  * `linear_0`, `linear_1`: the linear shape angle, full whitening and none;
  * `wasserstein`: the 1-D Wasserstein distance between all entries

(`lpjax.similarity` has their formulas and citations). All of them are
computed from one pass of representations (`lpjax.scoring.
candidate_representations`: the unpruned model and every single-unit
removal, one compiled call); no metric runs a forward of its own.

Voting (Borda count): for each metric the candidates are ranked ascending
by score, rank 1 the most similar to the unpruned model; equal scores share
the mean of the ranks they span (1, 2.5, 2.5, 4). Ranks are over every
candidate of the current model. The consensus score of a unit is the
weighted sum of its ranks (equal weights by default; the paper's choice),
and the unit with the lowest sum that the floor allows is removed; equal
sums go to the unit earliest in network order (`lowest_allowed`). Scores
are keyed by unit id throughout, so the block removed is the block voted
for (the authors' code mapped the sorted list back by position, which
always removed the first removable block).

Hyperparameters (`config.prune.consensus`):
  metrics: comma-separated names from `METRICS` (default: all eight).
  weights: '' for equal weights, else comma-separated numbers >= 0, one per
    metric.
  gaussian_max_iter, gaussian_tol, gaussian_init: the alternating fit of
    the Gaussian metrics (`lpjax.similarity.gaussian_stochastic_distance`).

`config.prune.similarity_dtype = 'float64'` runs every metric in float64
(under `jax.enable_x64`) on the float32 representations. The decision's
`scores` are the rank sums; `diagnostics` hold every metric's raw scores
and ranks.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lpjax import arch as arch_lib
from lpjax import cka, scoring, similarity
from lpjax.methods.context import Context, Decision
from lpjax.methods.record import Hparam

# (ref [n, d], candidates [k, n, d], labels [n] | None, hparams) -> [k].
MetricFn = Callable[
  [jax.Array, jax.Array, np.ndarray | None, Mapping], jax.Array
]


def _cka(ref, cands, labels, hp):
  del labels, hp
  return 1.0 - cka.linear_cka_one_to_many(ref, cands)


def _gaussian(alpha):
  def fn(ref, cands, labels, hp):
    return similarity.gaussian_stochastic_one_to_many(
      ref,
      cands,
      labels,
      alpha=alpha,
      max_iter=hp['gaussian_max_iter'],
      tol=hp['gaussian_tol'],
      init=hp['gaussian_init'],
    )

  return fn


def _linear(alpha):
  def fn(ref, cands, labels, hp):
    del labels, hp
    return similarity.linear_shape_one_to_many(ref, cands, alpha=alpha)

  return fn


def _permutation(ref, cands, labels, hp):
  del labels, hp
  return similarity.permutation_one_to_many(ref, cands)


def _wasserstein(ref, cands, labels, hp):
  del labels, hp
  return similarity.wasserstein_one_to_many(ref, cands)


# The eight metrics of the paper, in its order.
METRICS: dict[str, MetricFn] = {
  'cka': _cka,
  'gaussian_stochastic_0': _gaussian(0.0),
  'gaussian_stochastic_1': _gaussian(1.0),
  'gaussian_stochastic_2': _gaussian(2.0),
  'permutation': _permutation,
  'linear_0': _linear(0.0),
  'linear_1': _linear(1.0),
  'wasserstein': _wasserstein,
}
NEEDS_LABELS = frozenset(
  ('gaussian_stochastic_0', 'gaussian_stochastic_1', 'gaussian_stochastic_2')
)
LABEL_FREE = tuple(m for m in METRICS if m not in NEEDS_LABELS)
DEFAULT_METRICS = ','.join(METRICS)

HPARAMS = {
  'metrics': Hparam(
    DEFAULT_METRICS, 'comma-separated names from METRICS (default: all eight)'
  ),
  'weights': Hparam(
    '', "'' for equal weights, else one number >= 0 per metric"
  ),
  'gaussian_max_iter': Hparam(
    1000, "the Gaussian metrics' alternating fit: iteration cap", low=1
  ),
  'gaussian_tol': Hparam(
    1e-8, "the Gaussian metrics' alternating fit: relative tolerance", low=0
  ),
  'gaussian_init': Hparam(
    'samples',
    "the Gaussian metrics' start: samples | means | both (every start, "
    'both directions, symmetric; 2x the cost)',
    choices=similarity.GAUSSIAN_INITS,
  ),
}


def needs(hparams: Mapping) -> frozenset[str]:
  """`labels` when a class-conditional metric is configured."""
  names, _ = metrics_and_weights(hparams)
  return frozenset({'labels'} if set(names) & NEEDS_LABELS else ())


def validate(hparams: Mapping) -> None:
  metrics_and_weights(hparams)


def _names(value: str | Sequence[str]) -> list[str]:
  if isinstance(value, str):
    return [v.strip() for v in value.split(',') if v.strip()]
  return [str(v) for v in value]


def metrics_and_weights(
  hparams: Mapping,
) -> tuple[list[str], list[float]]:
  """The configured metric names and their weights.

  Raises:
    KeyError: an unknown metric, listing the valid ones.
    ValueError: no metric, a repeated one, or weights that do not match
      (wrong count, negative, all zero, not numbers).
  """
  names = _names(hparams.get('metrics', DEFAULT_METRICS))
  if not names:
    raise ValueError('consensus needs at least one metric.')
  unknown = [m for m in names if m not in METRICS]
  if unknown:
    raise KeyError(
      f'Unknown consensus metrics {unknown}; valid: {list(METRICS)}.'
    )
  if len(set(names)) != len(names):
    raise ValueError(f'consensus metrics repeat a name: {names}.')
  raw = hparams.get('weights', '')
  try:
    weights = [float(w) for w in _names(raw)] if raw else [1.0] * len(names)
  except ValueError:
    raise ValueError(
      f'consensus weights must be numbers; got {raw!r}.'
    ) from None
  if len(weights) != len(names):
    raise ValueError(
      f'consensus has {len(names)} metrics {names} but {len(weights)} '
      f'weights {weights}.'
    )
  if any(not w >= 0 for w in weights) or not any(w > 0 for w in weights):
    raise ValueError(
      f'consensus weights must be >= 0 and not all zero; got {weights}.'
    )
  return names, weights


@jax.jit
def _finite_rows(ref, cands):
  """`[k]`: candidate k and the reference are finite everywhere."""
  ok = jnp.all(jnp.isfinite(cands), axis=tuple(range(1, cands.ndim)))
  return ok & jnp.all(jnp.isfinite(ref))


def metric_scores(ctx: Context) -> dict[str, dict[str, float]]:
  """Every configured metric's score of every candidate.

  Returns:
    `{metric: {unit_id: score}}`, units in network order.

  Raises:
    ValueError: a label-needing metric and no labels, naming the metric.
    FloatingPointError: a non-finite representation or score, naming the
      candidates (`lpjax.scoring.checked_scores`).
  """
  # Called directly too (not only through the record): the declared
  # defaults fill what the context leaves out.
  hp = {**{k: h.default for k, h in HPARAMS.items()}, **ctx.hparams}
  names, _ = metrics_and_weights(hp)
  for name in names:
    if name in NEEDS_LABELS and ctx.labels is None:
      raise ValueError(
        f'The consensus metric {name!r} needs class labels of the '
        'calibration examples; the context has labels=None (drop the '
        'metric from config.prune.consensus.metrics or provide labels).'
      )
  reps = scoring.candidate_representations(
    ctx.arch,
    ctx.variables,
    ctx.inputs,
    representation=ctx.representation,
    data_batch_size=ctx.data_batch_size,
    candidate_chunk=ctx.candidate_chunk,
    mesh=ctx.mesh,
  )
  units = ctx.arch.candidates
  ref, cands = scoring.flatten(reps[0], reps[1:])
  # A non-finite representation: the scorer's error, before any metric.
  finite = np.asarray(_finite_rows(ref, cands))
  scoring.checked_scores(units, np.where(finite, 0.0, np.nan))
  dtype = ctx.similarity_dtype  # the forwards stay float32 either way
  if dtype == 'float64':
    ref, cands = np.asarray(ref, np.float64), np.asarray(cands, np.float64)
  labels = None if ctx.labels is None else np.asarray(ctx.labels)
  out = {}
  x64 = jax.enable_x64(True) if dtype == 'float64' else contextlib.nullcontext()
  with x64:
    for name in names:
      values = METRICS[name](ref, cands, labels, hp)
      out[name] = scoring.checked_scores(units, np.asarray(values))
  return out


def ranks(scores: Mapping[str, float]) -> dict[str, float]:
  """Ascending ranks from 1; equal scores share the mean of their ranks."""
  units = list(scores)
  values = np.asarray([scores[u] for u in units], np.float64)
  order = np.argsort(values, kind='stable')
  sorted_values = values[order]
  out = np.empty(len(units))
  start = 0
  while start < len(units):
    stop = start
    while (
      stop + 1 < len(units) and sorted_values[stop + 1] == sorted_values[start]
    ):
      stop += 1
    out[order[start : stop + 1]] = (start + stop) / 2.0 + 1.0
    start = stop + 1
  return dict(zip(units, out.tolist()))


def rank_sum(
  per_metric: Mapping[str, Mapping[str, float]],
  weights: Mapping[str, float] | None = None,
) -> dict[str, float]:
  """`C(l) = Σ_m w_m rank_m(l)` (equal weights 1 where `weights` is None).

  Every metric must score the same units; the result keeps the first
  metric's unit order.

  Raises:
    ValueError: no metrics, or metrics that score different units.
  """
  if not per_metric:
    raise ValueError('rank_sum needs at least one metric.')
  units = list(next(iter(per_metric.values())))
  total = dict.fromkeys(units, 0.0)
  for name, scores in per_metric.items():
    if set(scores) != set(units):
      raise ValueError(
        f'Metric {name!r} scores {sorted(scores)}, not the units {units}.'
      )
    w = 1.0 if weights is None else float(weights[name])
    for unit, r in ranks(scores).items():
      total[unit] += w * r
  return total


def decide(
  arch: arch_lib.Arch,
  per_metric: Mapping[str, Mapping[str, float]],
  weights: Mapping[str, float] | None = None,
) -> Decision:
  """Removes the unit with the lowest rank sum the floor allows."""
  from lpjax.methods import lowest_allowed  # the registry imports this module

  total = rank_sum(per_metric, weights)
  decision = lowest_allowed(arch, total)
  return dataclasses.replace(
    decision,
    diagnostics={
      'metric_scores': {m: dict(s) for m, s in per_metric.items()},
      'metric_ranks': {m: ranks(s) for m, s in per_metric.items()},
      'weights': dict(weights) if weights else dict.fromkeys(per_metric, 1.0),
    },
  )


def consensus(ctx: Context) -> Decision:
  """Consensus: the rank-sum vote of the configured metrics."""
  names, weights = metrics_and_weights(ctx.hparams)
  return decide(
    ctx.arch, metric_scores(ctx), dict(zip(names, weights, strict=True))
  )
