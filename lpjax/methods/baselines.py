"""Baseline criteria the similarity criteria are compared against."""

from __future__ import annotations

import numpy as np

from lpjax.methods.context import Context


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
