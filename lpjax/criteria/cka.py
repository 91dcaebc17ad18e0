"""The CKA criterion of Pons et al. (ICPR 2024).

score(block) = 1 - linear CKA(R, R_without_block), with R the pooled features
of the unpruned model on the calibration images (configurable representation)
and R_without_block those of the model with that block skipped. All
candidates are scored in one compiled call (`lpjax.scoring`).
"""

from __future__ import annotations

from lpjax import scoring
from lpjax.criteria.context import Context


def cka_criterion(ctx: Context) -> dict[str, float]:
  """`1 - CKA` per candidate block; lower = more removable."""
  return scoring.score_candidates(
    ctx.arch,
    ctx.variables,
    ctx.images,
    similarity=scoring.cka_similarity,
    representation=ctx.representation,
    data_batch_size=ctx.data_batch_size,
    candidate_chunk=ctx.candidate_chunk,
    mesh=ctx.mesh,
  )
