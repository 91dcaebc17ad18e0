"""Baseline criteria the similarity criteria are compared against."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lpjax import models, scoring
from lpjax.methods import block_influence
from lpjax.methods.context import Context, batch_mean_scores
from lpjax.methods.record import Hparam


def random_scores(ctx: Context) -> dict[str, float]:
  """Uniform random scores, reproducible from (seed, iteration)."""
  rng = np.random.default_rng([ctx.seed, ctx.iteration])
  return dict(
    zip(ctx.arch.candidates, rng.random(len(ctx.arch.candidates)).tolist())
  )


def l1_scores(ctx: Context) -> dict[str, float]:
  """Mean l1 norm of a unit's filters, summed over its kernels.

  For every kernel inside the unit (`conv1`, `conv2` of a ResNet block;
  `qkv`, `out`, `fc1`, `fc2` of a transformer layer), each output filter's
  l1 norm (sum of absolute weights over all but the last axis) is averaged
  over the filters; the unit's score is the sum of those means (the layer
  variant of l1 pruning, as in the Everything authors' code). Projection
  shortcuts never belong to candidates, so they do not enter.
  """
  params = ctx.variables['params']
  scores = {}
  for name in ctx.arch.candidates:
    total = 0.0
    for _, kernel in sorted(_kernels(params[name])):
      k = np.asarray(kernel, np.float64)
      total += float(np.abs(k).sum(axis=tuple(range(k.ndim - 1))).mean())
    scores[name] = total
  return scores


def _kernels(tree, path=()):
  for key, value in tree.items():
    if isinstance(value, dict) or hasattr(value, 'items'):
      yield from _kernels(value, (*path, key))
    elif key == 'kernel':
      yield path, value


DIRECTIONS = ('forward', 'reverse')

HPARAMS = {
  'direction': Hparam(
    'forward',
    "forward: KL(p || q), p the unpruned model's distribution (CURL, Luo & "
    "Wu 2020); reverse: KL(q || p) (the Everything authors' code)",
    choices=DIRECTIONS,
  ),
}


def kl_divergence(
  logp: jax.Array, logq: jax.Array, direction: str = 'forward'
) -> jax.Array:
  """KL between two distributions given as log-probabilities, summed over
  the last axis: `forward` = KL(p || q), `reverse` = KL(q || p)."""
  if direction == 'reverse':
    logp, logq = logq, logp
  return jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)


@functools.partial(jax.jit, static_argnames='direction')
def _mean_kl(reps: jax.Array, direction: str) -> jax.Array:
  """`[K]` mean over examples of KL(softmax(reps[0]), softmax(reps[1 + k]))
  in `direction` (`kl_divergence`)."""
  logp = jax.nn.log_softmax(reps[0].astype(jnp.float32), axis=-1)
  logq = jax.nn.log_softmax(reps[1:].astype(jnp.float32), axis=-1)
  return jnp.mean(kl_divergence(logp, logq, direction), axis=-1)


def kl_scores(ctx: Context) -> dict[str, float]:
  """CURL's KL criterion (Luo & Wu 2020, "Neural network pruning with
  residual-connections and limited-data", CVPR).

  score(unit) = mean over calibration examples of
  `KL(p ‖ q) = Σ_k p_k (log p_k - log q_k)`, with `p = softmax(logits)` of
  the unpruned model and `q` that of the model without the unit: how much
  removing the unit changes the predicted distribution. That is CURL's
  direction and the default (`direction='forward'`); the Everything
  authors' code computes `KL(q ‖ p)` (`direction='reverse'`: on their
  ResNet-56 the two pick the same first block, but scores differ by up to
  67 %). One softmax of the logits on each side (their code applied a
  second softmax to outputs that already were probabilities, which
  flattens both distributions). Log-probabilities come from
  `log_softmax`, so saturated logits give no `log 0`.

  The logits of the unpruned model and of every single-unit removal come
  from one compiled pass (`lpjax.scoring.candidate_representations` with
  `representation='logits'`, whatever `ctx.representation` says); works for
  every family with logits. Lower = more removable.
  """
  reps = scoring.candidate_representations(
    ctx.arch,
    ctx.variables,
    ctx.inputs,
    representation='logits',
    data_batch_size=ctx.data_batch_size,
    candidate_chunk=ctx.candidate_chunk,
    mesh=ctx.mesh,
  )
  return scoring.checked_scores(
    ctx.arch.candidates, _mean_kl(reps, ctx.hparams['direction'])
  )


def _angular(model, variables, x) -> jax.Array:
  """`[K]` mean angular distance of every candidate's input and output."""
  arch = model.arch
  names = ('stem', *(b.name for b in arch.blocks))
  reps = models.representations(model, variables, x, names)
  before = dict(zip(names[1:], names[:-1]))
  out = []
  for u in arch.candidates:
    cos = block_influence._cosine(reps[before[u]], reps[u])
    out.append(jnp.mean(jnp.arccos(jnp.clip(cos, -1.0, 1.0)) / jnp.pi))
  return jnp.stack(out)


def angular_scores(ctx: Context) -> dict[str, float]:
  """Angular distance of a unit's input and output (Gromov et al. 2024,
  "The unreasonable ineffectiveness of the deeper layers").

  score(unit) = mean over calibration examples and positions (tokens, or
  pixels of a feature map) of `arccos(cos(x, f(x))) / π`, in `[0, 1]`,
  where `x` is the unit's input and `f(x)` its output and the cosine is over
  the feature axis (channels, token width). Gromov et al. measure it
  between layers `ℓ` and `ℓ + n` at the last token; here `n = 1` (one unit)
  and every position counts, as for `block_influence`, which uses `1 - cos`
  instead of the angle. Positions where both vectors are zero count as
  unchanged (angle 0), where one is zero as orthogonal (1/2).

  One forward per batch in eval mode (`lpjax.scoring.map_batches`); works
  for every family whose units' inputs and outputs are captured. Lower =
  more removable.
  """
  return batch_mean_scores(ctx, _angular)
