"""ShortGPT's Block Influence (Men et al. 2024, "ShortGPT: Layers in Large
Language Models are More Redundant Than You Expect").

score(unit) = 1 - cos(x, f(x)), averaged over calibration examples and
positions (tokens, or pixels of a feature map), where x is the unit's input
and f(x) its output: a unit that barely turns its input is removable. The
cosine is over the feature axis (channels, token width). A position where
both vectors are zero counts as unchanged (cosine 1), one where only one is
zero as orthogonal (cosine 0): never NaN.

A unit's input is the output of the unit before it, or `stem` for the first
one, so every unit's input and output come from one forward per batch of
calibration data (`lpjax.scoring.map_batches`), in eval mode.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lpjax import models
from lpjax.methods.context import Context, batch_mean_scores


def _cosine(a: jax.Array, b: jax.Array) -> jax.Array:
  """Cosine over the last axis, 1 where both are zero, 0 where one is."""
  a, b = a.astype(jnp.float32), b.astype(jnp.float32)
  na, nb = jnp.linalg.norm(a, axis=-1), jnp.linalg.norm(b, axis=-1)
  both = na * nb
  cos = jnp.sum(a * b, axis=-1) / jnp.where(both > 0, both, 1.0)
  return jnp.where(both > 0, cos, jnp.where(na + nb > 0, 0.0, 1.0))


def _influence(model, variables, x) -> jax.Array:
  """`[K]` mean `1 - cos(input, output)` of every candidate on batch `x`."""
  arch = model.arch
  names = ('stem', *(b.name for b in arch.blocks))
  reps = models.representations(model, variables, x, names)
  before = dict(zip(names[1:], names[:-1]))
  return jnp.stack(
    [1.0 - jnp.mean(_cosine(reps[before[u]], reps[u])) for u in arch.candidates]
  )


def scores(ctx: Context) -> dict[str, float]:
  """Block influence per candidate unit; lower = more removable."""
  return batch_mean_scores(ctx, _influence)
