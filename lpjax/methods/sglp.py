"""SGLP: similarity-guided layer partition pruning (Li et al., 2024).

Li, Lu, ..., Gou, "SGLP: A Similarity Guided Fast Layer Partition Pruning
for Compressing Large Deep Models" (arXiv 2410.14720). The abstract fixes
the steps; what it leaves open is chosen here as follows (default first,
then the reason; `config.prune.sglp` sets each):

1. Representation. Linear CKA (Kornblith et al. 2019) between the outputs
   of every unit and the stem (the embedding for a ViT), flattened:
   `[n, H, W, C] -> [n, H*W*C]`, `[n, T, D] -> [n, T*D]`, on the
   calibration data. Reason: the abstract compares layer representations;
   the unit output is what removing the unit changes.
2. CKA estimator (`cka`). `'minibatch'` (default): Nguyen, Raghu &
   Kornblith (2021)'s minibatch CKA, per-batch unbiased HSIC summed over
   `data_batch_size` batches in one compiled `lax.scan`
   (`lpjax.cka.minibatch_cka_update`). Memory: one batch of every
   representation, `b * sum_i d_i` floats, plus the per-batch work of
   `lpjax.cka` (`m` Gram matrices `b x b` in Gram form), plus `m x m`
   sums; independent of `n`. For ResNet-56 on 32x32 inputs (`m = 28`,
   `sum_i d_i = 274,432`) and `b = 500`: 0.55 GB of representations and
   28 MB of Grams. `'full'`: the papers' biased linear CKA on all `n`
   examples at once (`lpjax.cka.cka_matrix`, one compiled call), exactly
   pairwise `linear_cka`; memory `n * sum_i d_i` floats (5.5 GB for
   ResNet-56 at n = 5,000), so only for small models or `n`. Reason:
   minibatch CKA is the bounded-memory estimator and is unbiased.
3. Aggregation (`aggregation`). `'row_sum'`: `a_l = sum_j S[l, j]` over
   every representation j (stem and units), one number per unit; the
   precursor (Lu et al., arXiv 2406.07929) aggregates each row so. Also
   `'neighbour'`: `S[l, l - 1]`, the CKA of a unit's output with its
   input representation.
4. Segmentation. Fisher's optimal segmentation (Fisher 1958) of
   `a_1..a_L` (all units, candidates or not) into K contiguous segments
   minimising the total within-segment sum of squares: exact dynamic
   programme, `O(K L^2)` with prefix sums (`fisher_segmentation`).
5. K (`num_segments`). 0 (default): the smallest K whose optimal SSE is at
   most `sse_fraction` (default 0.1) of K = 1's (`choose_num_segments`);
   a positive value fixes K. Either is capped at L - R so that the
   segments can lose R units and still keep one each. Reason: the paper's K is not
   known; the rule adapts to how distinct the unit groups are.
6. Importance (`gradnorm`). `'params'` (default): GradNorm of Abdelfattah
   et al. (ICLR 2021), `g_l = sum_W ||dL/dW||_2` over unit l's parameter
   tensors, `L` the eval-mode cross-entropy (`Context.loss_fn`) of a
   labelled calibration batch, averaged over the `data_batch_size`
   batches, no training. `'output'`: `||dL/dA_l||_2`, the gradient w.r.t.
   the unit's output `A_l`, averaged likewise.
7. Removals per segment. `r_k` proportional to segment length times the
   global count R (largest remainders, ties to the earlier segment),
   capped so every segment keeps at least one unit and removes only its
   candidates; a quota a segment cannot fill passes to the segments with
   room, largest remainder first (`allocate_removals`). Inside a segment
   the smallest-GradNorm candidates go first; one the family's per-stage
   floor forbids is passed over for the next (`select_removals`).
8. One-shot or iterative (`mode`). `'iterative'` (default): each call
   re-computes CKA, segments and GradNorm on the current model and removes
   one unit (R = 1: the quota goes to the longest segment); the pipeline
   fine-tunes after each removal and stops at `prune.target_blocks`,
   `prune.target_flops_reduction` or the floor. `'one_shot'`: one call
   removes R units, `num_remove` if positive, else
   `round(removal_ratio * L)` (L = units now), capped by what the floor
   allows; set `prune.target_blocks` to the same R so the pipeline stops
   after that one iteration. Reason for the default: it lets every
   criterion of this repository be compared at equal FLOPs.
9. Fine-tuning. The pipeline's (`prune.finetune_epochs` after each
   iteration); the precursor fine-tunes the reassembled model, the
   importance evaluation itself is fine-tuning-free.

The decision's `scores` are the candidates' GradNorms (lower = more
removable); `diagnostics` hold the CKA matrix and its labels, the
aggregated sequence, the segments, every unit's GradNorm and the quotas.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lpjax import arch as arch_lib
from lpjax import cka, models, scoring, surgery
from lpjax.methods.context import Context, Decision
from lpjax.methods.record import Hparam

MODES = ('iterative', 'one_shot')

HPARAMS = {
  'mode': Hparam(
    'iterative',
    'iterative: one unit per call, re-segmented | one_shot: num_remove '
    'units (or round(removal_ratio * units)) in one call',
    choices=MODES,
  ),
  'num_remove': Hparam(0, 'units removed by a one_shot call', low=0),
  'removal_ratio': Hparam(
    0.0,
    'fraction of units a one_shot call removes (with num_remove = 0)',
    low=0.0,
    high=1.0,
  ),
  'num_segments': Hparam(
    0, "K; 0 = the smallest K whose Fisher SSE <= sse_fraction * K=1's", low=0
  ),
  'sse_fraction': Hparam(0.1, 'see num_segments', low=0.0),
  'cka': Hparam(
    'minibatch',
    'minibatch (memory independent of n) | full',
    choices=('minibatch', 'full'),
  ),
  'aggregation': Hparam(
    'row_sum', 'row_sum | neighbour', choices=('row_sum', 'neighbour')
  ),
  'gradnorm': Hparam(
    'params',
    'params (sum of ||dL/dW||) | output (||dL/dA||)',
    choices=('params', 'output'),
  ),
}


def validate(hparams: Mapping[str, Any]) -> None:
  """A one-shot call needs a target."""
  if (
    hparams['mode'] == 'one_shot'
    and hparams['num_remove'] <= 0
    and hparams['removal_ratio'] <= 0
  ):
    raise ValueError(
      "sglp mode='one_shot' needs num_remove > 0 or removal_ratio > 0 "
      '(--config.prune.sglp.num_remove=N).'
    )


def several(k: int | None) -> dict[str, Any]:
  """The hyperparameters for one call removing `k` units (None: one)."""
  return (
    {'mode': 'iterative'}
    if k is None
    else {
      'mode': 'one_shot',
      'num_remove': k,
    }
  )


# ---------------------------------------------------------------------------
# CKA between every unit output (and the stem), one compiled call.
# ---------------------------------------------------------------------------


def representation_labels(arch: arch_lib.Arch) -> tuple[str, ...]:
  """`('stem', unit ids in network order...)`: the CKA matrix's order."""
  return ('stem', *(b.name for b in arch.blocks))


def _flat_reps(model, variables, x) -> list[jax.Array]:
  names = representation_labels(model.arch)
  reps = models.representations(model, variables, x, names)
  return [reps[n].reshape(x.shape[0], -1) for n in names]


@functools.lru_cache(maxsize=16)
def _compiled_matrix(arch: arch_lib.Arch, estimator: str):
  model = models.build_model(arch)
  m = len(representation_labels(arch))

  if estimator == 'minibatch':

    def run(variables, xs):
      def step(state, x):
        return cka.minibatch_cka_update(
          state, _flat_reps(model, variables, x)
        ), None

      state = cka.minibatch_cka_init(m)
      state, _ = jax.lax.scan(step, state, xs)
      return cka.minibatch_cka_result(state)

  else:

    def run(variables, xs):
      reps = jax.lax.map(lambda x: _flat_reps(model, variables, x), xs)
      return cka.cka_matrix([r.reshape(-1, r.shape[-1]) for r in reps])

  return jax.jit(run)


def unit_cka_matrix(
  arch: arch_lib.Arch,
  variables: Any,
  inputs: np.ndarray,
  *,
  estimator: str = 'minibatch',
  data_batch_size: int = 500,
  mesh=None,
) -> np.ndarray:
  """Linear CKA between the stem and every unit output, one compiled call.

  Args:
    arch, variables: the model.
    inputs: calibration inputs `[n, ...]`.
    estimator: `'minibatch'` (Nguyen et al. 2021; memory independent of
      `n`) or `'full'` (biased linear CKA on all `n` rows, equal to
      pairwise `lpjax.cka.linear_cka`); see the module docstring.
    data_batch_size: examples per forward (and per minibatch); the largest
      divisor of `n` not above it is used.
    mesh: optional device mesh with a `'data'` axis.

  Returns:
    `[m, m]` float64 NumPy matrix, `m = 1 + len(arch.blocks)`, in the order
    of `representation_labels(arch)`.

  Raises:
    ValueError: unknown estimator, or a minibatch of fewer than 4 rows.
  """
  if estimator not in ('minibatch', 'full'):
    raise ValueError(
      f"cka estimator must be 'minibatch' or 'full'; got {estimator!r}."
    )
  variables, xs = scoring.batch_inputs(
    arch, variables, inputs, data_batch_size, mesh
  )
  out = _compiled_matrix(arch, estimator)(variables, xs)
  return np.asarray(out, np.float64)


def aggregate(matrix: np.ndarray, how: str = 'row_sum') -> np.ndarray:
  """One number per unit from the `[1 + L, 1 + L]` CKA matrix.

  Args:
    matrix: CKA matrix with the stem first (`unit_cka_matrix`).
    how: `'row_sum'` (`a_l = sum_j S[l, j]`) or `'neighbour'`
      (`S[l, l - 1]`).

  Returns:
    `[L]` float64, units in network order.
  """
  matrix = np.asarray(matrix, np.float64)
  if how == 'row_sum':
    return matrix[1:].sum(axis=1)
  if how == 'neighbour':
    return np.diagonal(matrix, offset=-1).copy()
  raise ValueError(
    f"aggregation must be 'row_sum' or 'neighbour'; got {how!r}."
  )


# ---------------------------------------------------------------------------
# Fisher optimal segmentation.
# ---------------------------------------------------------------------------


def _diameter_fn(a: np.ndarray):
  """`D(p, q)` (0-based, inclusive) from prefix sums of the centred data."""
  z = a - a.mean()  # Centring: a constant offset does not enter the sums.
  s1 = np.concatenate([[0.0], np.cumsum(z)])
  s2 = np.concatenate([[0.0], np.cumsum(z * z)])

  def d(p: int, q: int) -> float:
    n = q - p + 1
    s = s1[q + 1] - s1[p]
    return max(s2[q + 1] - s2[p] - s * s / n, 0.0)

  return d


def fisher_segmentation(
  values: Sequence[float], num_segments: int
) -> tuple[list[int], float]:
  """Fisher's (1958) optimal partition of a sequence into contiguous parts.

  Minimises the total within-segment sum of squares
  `sum_k sum_{t in k} (a_t - mean_k)^2` over all ways of cutting `a` into
  `num_segments` non-empty contiguous segments, by the exact dynamic
  programme `E(m, k) = min_{k-1 <= j < m} E(j, k-1) + D(j+1, m)` in
  `O(K L^2)` time, `D` in `O(1)` from prefix sums. Ties go to the
  earliest cut.

  Args:
    values: `[L]` the sequence.
    num_segments: K, `1 <= K <= L`.

  Returns:
    `(starts, cost)`: the K segment start indices (`starts[0] == 0`,
    increasing) and the minimal total SSE.

  Raises:
    ValueError: an empty or non-finite sequence, or K out of range.
  """
  a = np.asarray(values, np.float64).ravel()
  n = a.size
  if n == 0 or not np.all(np.isfinite(a)):
    raise ValueError(f'Need a non-empty finite sequence; got {a}.')
  if not 1 <= num_segments <= n:
    raise ValueError(f'num_segments must be in [1, {n}]; got {num_segments}.')
  d = _diameter_fn(a)
  inf = float('inf')
  # cost[k][m]: best SSE of the first m values in k + 1 segments.
  cost = [[d(0, m - 1) if m else inf for m in range(n + 1)]]
  arg = [[0] * (n + 1)]
  for k in range(1, num_segments):
    row, where = [inf] * (n + 1), [0] * (n + 1)
    for m in range(k + 1, n + 1):
      for j in range(k, m):
        c = cost[k - 1][j] + d(j, m - 1)
        if c < row[m]:
          row[m], where[m] = c, j
    cost.append(row)
    arg.append(where)
  starts, m = [], n
  for k in range(num_segments - 1, 0, -1):
    m = arg[k][m]
    starts.append(m)
  return [0, *reversed(starts)], float(cost[num_segments - 1][n])


def choose_num_segments(
  values: Sequence[float], sse_fraction: float = 0.1
) -> int:
  """The smallest K whose optimal SSE is at most `sse_fraction` of K = 1's.

  A constant sequence (zero SSE) gives 1.

  Raises:
    ValueError: `sse_fraction` outside `[0, 1]`.
  """
  if not 0.0 <= sse_fraction <= 1.0:
    raise ValueError(f'sse_fraction must be in [0, 1]; got {sse_fraction}.')
  a = np.asarray(values, np.float64).ravel()
  _, total = fisher_segmentation(a, 1)
  for k in range(1, a.size + 1):
    if fisher_segmentation(a, k)[1] <= sse_fraction * total:
      return k
  return a.size


def segments_of(starts: Sequence[int], n: int) -> list[range]:
  """Index ranges of the segments that begin at `starts` in `range(n)`."""
  ends = [*starts[1:], n]
  return [range(s, e) for s, e in zip(starts, ends)]


# ---------------------------------------------------------------------------
# Removal allocation.
# ---------------------------------------------------------------------------


def allocate_removals(
  lengths: Sequence[int], capacity: Sequence[int], total: int
) -> list[int]:
  """How many units each segment loses: `r_k`.

  The ideal share of segment k is `total * lengths[k] / sum(lengths)`;
  each gets its floor, then the remaining units go one each by largest
  fractional remainder (ties to the earlier segment), never above
  `capacity[k]`; what a full segment cannot take passes to the next
  segment in that order that has room (repeatedly).

  Args:
    lengths: `[K]` segment lengths (> 0).
    capacity: `[K]` most removals each segment allows (e.g. its candidates,
      at most its length - 1).
    total: R, removals wanted.

  Returns:
    `[K]` counts, each `<= capacity[k]`, summing to
    `min(total, sum(capacity))`.
  """
  lengths = [int(x) for x in lengths]
  capacity = [max(int(c), 0) for c in capacity]
  total = min(int(total), sum(capacity))
  if total <= 0:
    return [0] * len(lengths)
  whole = sum(lengths)
  share = [total * n / whole for n in lengths]
  quota = [min(math.floor(s), c) for s, c in zip(share, capacity)]
  order = sorted(
    range(len(lengths)), key=lambda k: (-(share[k] - math.floor(share[k])), k)
  )
  while sum(quota) < total:
    for k in order:
      if sum(quota) < total and quota[k] < capacity[k]:
        quota[k] += 1
  return quota


def select_removals(
  arch: arch_lib.Arch,
  segments: Sequence[Sequence[str]],
  quota: Sequence[int],
  importance: Mapping[str, float],
) -> list[str]:
  """The units to remove: per segment the `quota[k]` least important.

  Candidates of each segment are taken in increasing importance (ties to
  the earlier unit); a unit whose removal would drop its stage below the
  family's floor (given those already chosen) is passed over. What a
  segment cannot fill is then taken from the remaining allowed units of
  every segment that still keeps one unit, least important first.

  Args:
    arch: the current network (candidates and floor).
    segments: `[K]` lists of unit ids, in network order.
    quota: `[K]` removals per segment (`allocate_removals`).
    importance: GradNorm per unit id.

  Returns:
    Unit ids to remove, in network order.
  """
  order = {b.name: i for i, b in enumerate(arch.blocks)}
  chosen: list[str] = []

  def allowed(u: str) -> bool:
    try:
      arch.without([*chosen, u])
    except ValueError:
      return False
    return True

  def ranked(units):
    cands = [u for u in units if arch.is_candidate(u) and u not in chosen]
    return sorted(cands, key=lambda u: (importance[u], order[u]))

  short = 0
  for units, r in zip(segments, quota):
    taken = 0
    for u in ranked(units):
      if taken == r:
        break
      if allowed(u):
        chosen.append(u)
        taken += 1
    short += r - taken
  while short > 0:
    pool = []
    for units in segments:
      left = len(units) - sum(u in chosen for u in units)
      if left > 1:
        pool.extend(ranked(units))
    pool.sort(key=lambda u: (importance[u], order[u]))
    pick = next((u for u in pool if allowed(u)), None)
    if pick is None:
      break
    chosen.append(pick)
    short -= 1
  return sorted(chosen, key=order.__getitem__)


# ---------------------------------------------------------------------------
# GradNorm.
# ---------------------------------------------------------------------------


def _param_norms(grads, names):
  return jnp.stack(
    [
      sum(jnp.linalg.norm(g.ravel()) for g in jax.tree.leaves(grads[n]))
      for n in names
    ]
  )


def _output_norms(ctx: Context, names, params, batch):
  """`||dL/dA_l||_2` for every unit `l`: a zero added to each output."""
  model = ctx.model
  shapes = jax.eval_shape(
    lambda v, x: models.representations(model, v, x, names),
    ctx.variables,
    batch['image'],
  )
  zeros = {n: jnp.zeros(s.shape, s.dtype) for n, s in shapes.items()}

  def loss(deltas):
    def add(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      name = context.module.name
      if context.method_name == '__call__' and name in deltas:
        return out + deltas[name]
      return out

    with nn.intercept_methods(add):
      return ctx.loss_fn(params, batch)

  grads = jax.grad(loss)(zeros)
  return jnp.stack([jnp.linalg.norm(grads[n].ravel()) for n in names])


def grad_norms(ctx: Context, wrt: str = 'params') -> dict[str, float]:
  """GradNorm of every unit, averaged over labelled calibration batches.

  Args:
    ctx: the context; needs `loss_fn`, `inputs` (and `labels` where the
      loss reads them). Batches of
      `ctx.data_batch_size` (the largest divisor of `n` not above it).
    wrt: `'params'`: `sum_W ||dL/dW||_2` over the unit's parameter tensors
      (Abdelfattah et al. 2021); `'output'`: `||dL/dA||_2` of its output.

  Returns:
    `{unit id: mean GradNorm}` for every unit of `ctx.arch`.
  """
  if ctx.loss_fn is None:
    raise ValueError('GradNorm needs Context.loss_fn.')
  if wrt not in ('params', 'output'):
    raise ValueError(f"gradnorm must be 'params' or 'output'; got {wrt!r}.")
  names = tuple(b.name for b in ctx.arch.blocks)
  n = len(ctx.inputs)
  b = scoring._batch_size(n, ctx.data_batch_size, 1)
  xs = np.asarray(ctx.inputs).reshape(n // b, b, *np.shape(ctx.inputs)[1:])
  batches = {'image': xs}
  if ctx.labels is not None:  # a language model's loss needs no labels
    batches['label'] = np.asarray(ctx.labels).reshape(n // b, b)
  params = ctx.variables['params']

  def one(batch):
    if wrt == 'params':
      return _param_norms(jax.grad(ctx.loss_fn)(params, batch), names)
    return _output_norms(ctx, names, params, batch)

  run = jax.jit(lambda batches: jax.lax.map(one, batches))
  norms = np.asarray(run(batches), np.float64).mean(axis=0)
  return dict(zip(names, norms.tolist()))


# ---------------------------------------------------------------------------
# The method.
# ---------------------------------------------------------------------------


def num_to_remove(arch: arch_lib.Arch, hparams: Mapping[str, Any]) -> int:
  """R for this call: 1 when iterative, else `num_remove` or the ratio.

  Args:
    arch: the current network.
    hparams: the complete, checked hyperparameters (`HPARAMS`).
  """
  if hparams['mode'] == 'iterative':
    return 1
  return hparams['num_remove'] or round(
    hparams['removal_ratio'] * len(arch.blocks)
  )


def sglp(ctx: Context) -> Decision:
  """SGLP: CKA matrix -> Fisher segments -> GradNorm -> segment-wise removal.

  See the module docstring for every step and hyperparameter.
  """
  arch, hp = ctx.arch, ctx.hparams
  if not arch.removable():
    raise ValueError(f'{arch.summary()}: nothing is removable (floor).')
  total = num_to_remove(arch, hp)
  labels = representation_labels(arch)
  units = labels[1:]
  matrix = unit_cka_matrix(
    arch,
    ctx.variables,
    ctx.inputs,
    estimator=hp['cka'],
    data_batch_size=ctx.data_batch_size,
    mesh=ctx.mesh,
  )
  seq = aggregate(matrix, hp['aggregation'])
  if not np.all(np.isfinite(seq)):
    raise FloatingPointError(
      f'CKA between unit outputs is not finite ({seq}): a constant or '
      'non-finite representation on the calibration data.'
    )
  k = hp['num_segments']
  if k <= 0:
    k = choose_num_segments(seq, hp['sse_fraction'])
  # Every segment keeps a unit: at most L - R segments can lose R units.
  total = min(total, arch.max_removable())
  k = max(1, min(k, len(units) - total))
  starts, sse = fisher_segmentation(seq, k)
  segments = [[units[i] for i in r] for r in segments_of(starts, len(units))]
  importance = grad_norms(ctx, hp['gradnorm'])
  capacity = [
    min(len(s) - 1, sum(arch.is_candidate(u) for u in s)) for s in segments
  ]
  quota = allocate_removals([len(s) for s in segments], capacity, total)
  removed = select_removals(arch, segments, quota, importance)
  if not removed:
    raise ValueError(
      f'{arch.summary()}: no unit can be removed with every segment of '
      f'{segments} keeping one unit and the floor kept.'
    )
  scores = scoring.checked_scores(
    list(arch.candidates), np.array([importance[u] for u in arch.candidates])
  )
  diagnostics = {
    'cka_labels': list(labels),
    'cka_matrix': matrix.tolist(),
    'aggregate': seq.tolist(),
    'num_segments': k,
    'segment_sse': sse,
    'segments': segments,
    'grad_norms': importance,
    'quota': quota,
    'removed': removed,
  }
  return Decision(
    edit=surgery.remove(removed), scores=scores, diagnostics=diagnostics
  )
