"""Filter criteria, and the filter child of `everything` built from them.

A filter criterion scores every output channel ("filter") of every inner
width the family may shrink (`lpjax.models.prunable_filters`: for a CIFAR
ResNet, the first conv of every block, down-sampling blocks included).
Lower = more removable, as for units. Scores are
`{(unit, k): [width] float64 array}` in `prunable_filters` order.

* `l1`: the l1 norm of the filter's kernel (Li et al. 2017).
* `kl`: CURL's KL (Luo & Wu 2020) with the filter removed: mean over
  calibration examples of `KL(p ‖ q)`, `p` the model's softmax, `q` that of
  the model with the filter's activation zeroed, which equals zeroing its
  kernel slice, bias and BatchNorm entries as the Everything authors do, and
  equals removing it by surgery. Every filter's masked forward runs in one
  compiled call (`jax.lax.map` over chunks of vmapped masks).
* `hrank`: HRank (Lin et al. 2020): the mean over calibration examples of
  the rank of the filter's feature map (after BN and ReLU), one forward.
* `random`: uniform, reproducible from (seed, iteration).

`select` turns scores into the filter child's `Edit` removing exactly a
given number of filters (Nascimento et al. 2025, `ALGORITHMS.md` §5).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from lpjax import arch as arch_lib
from lpjax import models, scoring, surgery
from lpjax.methods import baselines
from lpjax.methods.context import Context

# (unit, k) -> [width] scores.
FilterScores = dict[tuple[str, int], np.ndarray]


def _split(arch: arch_lib.Arch, flat) -> FilterScores:
  flat = np.asarray(flat, np.float64)
  out, start = {}, 0
  for unit, k, w in models.prunable_filters(arch):
    out[(unit, k)] = flat[start : start + w]
    start += w
  if not np.all(np.isfinite(flat)):
    bad = [
      f'{u}/{k}' for (u, k), s in out.items() if not np.all(np.isfinite(s))
    ]
    raise FloatingPointError(
      f'Filter scores of {bad} are not finite: a diverged model or '
      'non-finite calibration data.'
    )
  return out


def l1_scores(ctx: Context) -> FilterScores:
  """l1 norm of each filter's kernel (all axes but the output channel)."""
  params = ctx.variables['params']
  family = models.get_family(ctx.arch.family)
  out = []
  for unit, k, _ in models.prunable_filters(ctx.arch):
    # The first slice rule is the producing kernel, output channels last.
    (path, axis), *_ = family.width_slices(ctx.arch, ctx.arch.block(unit), k)
    kernel = params[unit]
    for key in path:
      kernel = kernel[key]
    kernel = np.moveaxis(np.asarray(kernel, np.float64), axis, -1)
    out.append(np.abs(kernel).sum(axis=tuple(range(kernel.ndim - 1))))
  return _split(ctx.arch, np.concatenate(out))


def random_scores(ctx: Context) -> FilterScores:
  """Uniform random scores from (seed, iteration)."""
  total = sum(w for _, _, w in models.prunable_filters(ctx.arch))
  rng = np.random.default_rng([ctx.seed, ctx.iteration, 1])
  return _split(ctx.arch, rng.random(total))


@functools.lru_cache(maxsize=16)
def _compiled_kl(arch: arch_lib.Arch, chunk: int, direction: str):
  model = models.build_model(arch)
  total = sum(w for _, _, w in models.prunable_filters(arch))
  masks = 1.0 - jnp.eye(total, dtype=jnp.float32)  # row i removes filter i

  def batch(variables, x):
    logp = jax.nn.log_softmax(model.apply(variables, x), axis=-1)

    def removed(mask):
      logits = model.apply(variables, x, filter_mask=mask)
      logq = jax.nn.log_softmax(logits, axis=-1)
      return baselines.kl_divergence(logp, logq, direction)  # [b]

    return jax.lax.map(removed, masks, batch_size=chunk)  # [F, b]

  @jax.jit
  def run(variables, xs):
    kl = jax.lax.map(lambda x: batch(variables, x), xs)  # [nb, F, b]
    return jnp.mean(kl, axis=(0, 2))

  return run


FILTER_CHUNK = 16


def kl_scores(ctx: Context) -> FilterScores:
  """CURL's KL with each filter removed, every filter in one compiled call.

  `ctx.hparams['filter_chunk']` (default `FILTER_CHUNK`) masked forwards
  run at a time (memory grows with it); `ctx.hparams['direction']`
  (default `'forward'`, CURL's KL(p ‖ q); `'reverse'`: KL(q ‖ p), the
  Everything authors' code; `lpjax.methods.baselines.kl_scores`). One
  softmax of the logits on each side (not the authors' second softmax).
  """
  chunk = int(ctx.hparams.get('filter_chunk', FILTER_CHUNK))
  direction = ctx.hparams.get('direction', 'forward')
  if chunk < 1:
    raise ValueError(f'filter_chunk must be >= 1; got {chunk}.')
  if direction not in baselines.DIRECTIONS:
    raise ValueError(
      f'direction must be one of {baselines.DIRECTIONS}; got {direction!r}.'
    )
  variables, xs = scoring.batch_inputs(
    ctx.arch, ctx.variables, ctx.inputs, ctx.data_batch_size, ctx.mesh
  )
  run = _compiled_kl(ctx.arch, chunk, direction)
  return _split(ctx.arch, run(variables, xs))


def _rank_sums(model, variables, x):
  """`[F]` per-filter sum over the batch of its feature maps' ranks."""
  acts = models.inner_activations(model, variables, x)
  out = []
  for act in acts.values():
    maps = jnp.moveaxis(act, -1, 1)  # [b, h, w, c] -> [b, c, h, w]
    out.append(jnp.sum(jnp.linalg.matrix_rank(maps), axis=0))
  return jnp.concatenate(out).astype(jnp.int32)  # exact counts


def hrank_scores(ctx: Context) -> FilterScores:
  """HRank: mean rank of each filter's feature map (Lin et al. 2020).

  The map is the filter's activation after BN and ReLU, `[height, width]`
  per example; its rank uses NumPy's default tolerance
  (`max(h, w) · eps · largest singular value`). Low-rank maps carry less
  information: lower = more removable.
  """
  if len(ctx.inputs.shape) != 4:
    raise ValueError(
      f'hrank needs image inputs [n, height, width, channels]; got shape '
      f'{ctx.inputs.shape}.'
    )
  sums = scoring.map_batches(
    _rank_sums,
    ctx.arch,
    ctx.variables,
    ctx.inputs,
    data_batch_size=ctx.data_batch_size,
    mesh=ctx.mesh,
  )
  return _split(ctx.arch, np.asarray(sums, np.int64).sum(0) / len(ctx.inputs))


FILTER_CRITERIA: dict[str, Callable[[Context], FilterScores]] = {
  'l1': l1_scores,
  'kl': kl_scores,
  'hrank': hrank_scores,
  'random': random_scores,
}


def get_filter_criterion(name: str) -> Callable[[Context], FilterScores]:
  """The filter criterion `name`; `KeyError` listing the valid ones."""
  try:
    return FILTER_CRITERIA[name]
  except KeyError:
    raise KeyError(
      f'Unknown filter criterion {name!r}; valid: {sorted(FILTER_CRITERIA)}.'
    ) from None


def select(
  arch: arch_lib.Arch,
  scores: Mapping[tuple[str, int], np.ndarray],
  budget: int,
  rng: np.random.Generator,
) -> surgery.Edit | None:
  """The edit removing exactly `budget` filters, lowest scores first.

  Nascimento et al. 2025: with `p = budget / num_filters(arch)` (every
  convolution's outputs), each prunable width of size `w` loses its
  `floor(p·w + 1/2)` lowest-scoring filters; then widths drawn uniformly
  at random from those that can still lose one give up their next-lowest
  filter until exactly `budget` are gone. Every width keeps at least one
  filter. If the rounding overshoots, the highest-scoring of the chosen
  filters are kept back until exactly `budget` remain. Ties go to the
  lower channel index.

  Returns:
    The edit, or `None` if the prunable widths cannot give up `budget`
    filters while keeping one each.
  """
  units = models.prunable_filters(arch)
  if budget < 1:
    raise ValueError(f'budget must be >= 1 filter; got {budget}.')
  if budget > sum(w - 1 for _, _, w in units):
    return None
  p = budget / models.num_filters(arch)
  order, taken = {}, {}
  for unit, k, w in units:
    s = np.asarray(scores[(unit, k)], np.float64)
    if s.shape != (w,):
      raise ValueError(
        f'Scores of {unit}/{k} have shape {s.shape}; want ({w},).'
      )
    order[(unit, k)] = np.argsort(s, kind='stable')
    taken[(unit, k)] = min(math.floor(p * w + 0.5), w - 1)
  excess = sum(taken.values()) - budget
  while excess > 0:  # give back the highest-scoring chosen filter
    key = max(
      (key for key, n in taken.items() if n),
      key=lambda key: scores[key][order[key][taken[key] - 1]],
    )
    taken[key] -= 1
    excess -= 1
  widths = {(unit, k): w for unit, k, w in units}
  keys = list(widths)
  while excess < 0:
    open_ = [key for key in keys if taken[key] < widths[key] - 1]
    taken[open_[rng.integers(len(open_))]] += 1
    excess += 1
  shrink = []
  for key in keys:
    if taken[key]:
      keep = np.sort(order[key][taken[key] :])
      shrink.append(surgery.Shrink(key[0], key[1], tuple(int(i) for i in keep)))
  return surgery.Edit(shrink=tuple(shrink))
