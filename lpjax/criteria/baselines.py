"""Baseline criteria the similarity criteria are compared against."""

from __future__ import annotations

import numpy as np

from lpjax.criteria.context import Context


def random_criterion(ctx: Context) -> dict[str, float]:
  """Uniform random scores, reproducible from (seed, iteration)."""
  rng = np.random.default_rng([ctx.seed, ctx.iteration])
  return dict(
    zip(ctx.arch.candidates, rng.random(len(ctx.arch.candidates)).tolist())
  )


def l1_criterion(ctx: Context) -> dict[str, float]:
  """Mean l1 norm of a block's conv filters, summed over its inner convs.

  For every conv in the residual branch, each output filter's l1 norm (sum of
  absolute kernel weights over height, width and input channels) is averaged
  over the filters; the block's score is the sum of those means (the layer
  variant of l1 pruning, as in the Everything authors' code). Projection
  shortcuts never belong to candidates, so they do not enter.
  """
  params = ctx.variables['params']
  scores = {}
  for name in ctx.arch.candidates:
    block = params[name]
    total = 0.0
    for conv in sorted(k for k in block if k.startswith('conv')):
      kernel = np.asarray(block[conv]['kernel'], np.float64)
      total += float(np.abs(kernel).sum(axis=(0, 1, 2)).mean())
    scores[name] = total
  return scores
