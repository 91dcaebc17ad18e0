"""Depth-pruning criteria from the LLM literature, for the decoder family.

* `sleb` (Song et al. 2024, "SLEB: Streamlining LLMs through Redundancy
  Verification and Elimination of Transformer Blocks"): score(layer) = the
  calibration perplexity's log (mean next-token negative log-likelihood) of
  the model without that layer; the lowest goes. Repeated one layer per
  iteration, this is SLEB's greedy loop. Every candidate's removal is
  evaluated in one compiled call: a `lax.map` over one-hot skip masks of
  the masked forward and its loss, inside the batched map over calibration
  windows (`lpjax.scoring.map_batches`), so memory holds one forward's
  activations at a time and its logits a chunk of positions at a time
  (`lpjax.models.next_token.next_token_stats`).
* `ppl` (Kim et al. 2024, "Shortened LLaMA: Depth Pruning for Large
  Language Models with Comparison of Retraining Methods", the PPL
  criterion): score(layer) = the calibration perplexity, exp(mean
  next-token negative log-likelihood over every calibration token), of the
  model without that layer; lower = more removable. The paper scores every
  block once on the unpruned model and removes the lowest-scoring ones in
  one shot (the task's `one_shot` schedule). The same one compiled call as
  `sleb` (calibration batches are of equal size, so the mean of batch
  means is the mean over tokens); `exp` is taken in float64.
* `angular_block` (Gromov et al. 2024, "The Unreasonable Ineffectiveness of
  the Deeper Layers"): for a block of `n` consecutive layers starting at
  `ℓ`, the angular distance `arccos(cos(h_ℓ, h_{ℓ+n})) / π` between the
  last token's hidden state entering layer `ℓ` and leaving layer
  `ℓ + n − 1`, averaged over calibration windows; the block with the
  smallest distance is removed at once (`n` layers in one decision). `n` is
  the hyperparameter `prune.angular_block.n` (default 1). Blocks must lie
  within the removable layers the floor allows.
* `tail`: removes the deepest layer but the last (the "drop the last
  layers" baseline, keeping the final layer, which every criterion above
  finds the most important); no calibration data needed.

`block_influence` (ShortGPT) and `angular` (per layer, every token) are the
family-neutral criteria in `lpjax.methods.block_influence` and
`lpjax.methods.baselines`; they apply to decoders unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lpjax import models, scoring, surgery
from lpjax.methods.context import Context, Decision, batch_mean_scores
from lpjax.methods.record import Hparam
from lpjax.models import next_token


def _removal_nll(model, variables, x) -> jax.Array:
  """`[K]` mean NLL of batch `x` with each candidate skipped; the logits a
  chunk of positions at a time (`next_token.next_token_stats`)."""
  k = len(model.arch.candidates)

  def one(mask):
    nll, _ = next_token.next_token_stats(model, variables, x, skip=mask)
    return jnp.mean(nll)

  return jax.lax.map(one, jnp.eye(k, dtype=bool))


def sleb_scores(ctx: Context) -> dict[str, float]:
  """Calibration NLL without each layer (SLEB); lower = more removable."""
  return batch_mean_scores(ctx, _removal_nll)


def ppl_scores(ctx: Context) -> dict[str, float]:
  """Calibration perplexity without each layer (Shortened LLaMA's PPL
  criterion); lower = more removable."""
  nll = batch_mean_scores(ctx, _removal_nll)
  return scoring.checked_scores(
    list(nll), np.exp(np.asarray(list(nll.values()), np.float64))
  )


def _last_token_states(model, variables, x) -> dict[str, jax.Array]:
  arch = model.arch
  names = ('stem', *(b.name for b in arch.blocks))
  reps = models.representations(model, variables, x, names)
  return {n: reps[n][:, -1] for n in names}


def block_distances(ctx: Context, n: int) -> dict[tuple[str, ...], float]:
  """Gromov et al.'s angular distance of every block of `n` consecutive
  layers, `{(layer, ...): distance}`, from one batched forward."""
  states = scoring.map_batches(
    _last_token_states,
    ctx.arch,
    ctx.variables,
    ctx.inputs,
    data_batch_size=ctx.data_batch_size,
    mesh=ctx.mesh,
  )
  names = ('stem', *(b.name for b in ctx.arch.blocks))
  flat = {k: np.asarray(v).reshape(-1, v.shape[-1]) for k, v in states.items()}
  out = {}
  for start in range(len(ctx.arch.blocks) - n + 1):
    a = flat[names[start]].astype(np.float64)
    b = flat[names[start + n]].astype(np.float64)
    cos = np.sum(a * b, -1) / (
      np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    )
    block = tuple(names[start + 1 : start + n + 1])
    out[block] = float(np.mean(np.arccos(np.clip(cos, -1.0, 1.0)) / np.pi))
  return out


HPARAMS = {'n': Hparam(1, 'consecutive layers removed in one call', low=1)}


def several(k: int | None) -> dict[str, int]:
  """The hyperparameters for one call removing `k` layers (None: one)."""
  return {'n': k or 1}


def angular_block(ctx: Context) -> Decision:
  """Removes the `n` consecutive layers with the smallest angular distance
  between the last token's state before and after them (Gromov et al.)."""
  n = ctx.hparams['n']
  allowed = set(ctx.arch.removable())
  if n > ctx.arch.max_removable():
    raise ValueError(
      f'angular_block.n={n}: the floor lets pruning remove only '
      f'{ctx.arch.max_removable()} more layers.'
    )
  distances = block_distances(ctx, n)
  valid = {b: d for b, d in distances.items() if set(b) <= allowed}
  if not valid:
    raise ValueError(f'No block of {n} removable consecutive layers.')
  order = list(distances)
  chosen = min(valid, key=lambda b: (valid[b], order.index(b)))
  # Per-layer scores for the report: the distance of the block it starts.
  scores = {b[0]: d for b, d in distances.items()}
  return Decision(
    edit=surgery.remove(chosen),
    scores={u: scores.get(u, float('inf')) for u in ctx.arch.candidates},
    diagnostics={'angular_block': {'n': n, 'removed': list(chosen)}},
  )


def tail_scores(ctx: Context) -> dict[str, float]:
  """Deeper = lower score; the last layer scores highest (kept)."""
  names = list(ctx.arch.candidates)
  last = ctx.arch.blocks[-1].name
  return {
    u: (float(len(names)) if u == last else -float(i))
    for i, u in enumerate(names)
  }
