"""The CKA criterion of Pons et al. (ICPR 2024).

score(unit) = 1 - linear CKA(R, R_without_unit), with R the pooled features
of the unpruned model on the calibration inputs (configurable
representation) and R_without_unit those of the model with that unit
skipped. All candidates are scored in one compiled call (`lpjax.scoring`).

Hyperparameters (`config.prune.cka`): `debiased` (default False, the
papers' biased HSIC; True uses the unbiased estimator of Song et al. 2012).
"""

from __future__ import annotations

import jax

from lpjax import cka, scoring
from lpjax.methods.context import Context
from lpjax.methods.record import Hparam

HPARAMS = {
  'debiased': Hparam(
    False, "True: unbiased HSIC (Song et al. 2012); False: the papers' biased"
  ),
}


def debiased_cka_similarity(ref: jax.Array, cands: jax.Array) -> jax.Array:
  """Debiased linear CKA of `ref` against each candidate."""
  return cka.linear_cka_one_to_many(*scoring.flatten(ref, cands), debiased=True)


def scores(ctx: Context) -> dict[str, float]:
  """`1 - CKA` per candidate unit; lower = more removable."""
  debiased = ctx.hparams['debiased']
  return scoring.score_candidates(
    ctx.arch,
    ctx.variables,
    ctx.inputs,
    similarity=(
      debiased_cka_similarity if debiased else scoring.cka_similarity
    ),
    representation=ctx.representation,
    data_batch_size=ctx.data_batch_size,
    candidate_chunk=ctx.candidate_chunk,
    mesh=ctx.mesh,
    similarity_dtype=ctx.similarity_dtype,
  )
