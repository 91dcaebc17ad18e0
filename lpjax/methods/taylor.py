"""The first-order Taylor criterion of a unit (Kim et al. 2024, "Shortened
LLaMA: Depth Pruning for Large Language Models", the Taylor+ criterion).

score(unit) = Σ over the unit's weights w of |w · ∂L/∂w|, with L the task's
loss on the calibration data (`Context.loss_fn`: a classifier's
cross-entropy, a language model's next-token NLL) at the current weights:
the first-order estimate of how much the loss changes when the weight is
zeroed, summed over the unit. Lower = more removable. The gradient is that
of the mean loss over all calibration examples (the batches' gradients are
averaged in one `lax.scan`, one compiled call), then multiplied by the
weights element by element; every parameter of the unit enters (kernels,
biases, norm scales), as in the paper's block-level sum.

Kim et al.'s "+" adds a heuristic that keeps the first and last blocks from
removal; here which units may go is decided by the model's candidates and
the floor (`Arch`), so only the score is implemented.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lpjax import scoring
from lpjax.methods.context import Context


def scores(ctx: Context) -> dict[str, float]:
  """Σ |w · ∂L/∂w| over each candidate unit's weights; lower = removable."""
  n = len(ctx.inputs)
  b = scoring._batch_size(n, ctx.data_batch_size, 1)
  batches = {
    'image': np.asarray(ctx.inputs).reshape(n // b, b, *ctx.inputs.shape[1:])
  }
  if ctx.labels is not None:  # a language model's loss needs no labels
    batches['label'] = np.asarray(ctx.labels).reshape(n // b, b)
  params = ctx.variables['params']
  units = ctx.arch.candidates

  @jax.jit
  def run(params, batches):
    def add(total, batch):
      grads = jax.grad(ctx.loss_fn)(params, batch)
      return jax.tree.map(jnp.add, total, grads), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    total, _ = jax.lax.scan(add, zeros, batches)
    count = len(batches['image'])
    return jnp.stack(
      [
        sum(
          jnp.sum(jnp.abs(w * g / count))
          for w, g in zip(jax.tree.leaves(params[u]), jax.tree.leaves(total[u]))
        )
        for u in units
      ]
    )

  return scoring.checked_scores(units, np.asarray(run(params, batches)))
