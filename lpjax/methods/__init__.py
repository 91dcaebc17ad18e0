"""Pruning methods: `method(ctx: Context) -> Decision`, registered by name.

A method sees the current model, calibration data with labels, a loss, an
RNG key, its own hyperparameters (`config.prune.<name>`) and a way to
fine-tune probe children (`Context`), and returns the edit to apply plus
diagnostics (`Decision`).

Most criteria only score units (lower = more removable) and remove the
lowest-scoring one the floor allows: write the scoring function and wrap it
with `from_scores`. Adding one = a module, a line in `METHODS`, a test (the
README's "Add a criterion").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from lpjax import arch as arch_lib
from lpjax import surgery
from lpjax.methods import (
  baselines,
  block_influence,
  cka,
  consensus,
  everything,
  filters,
  llm,
  sglp,
)
from lpjax.methods.context import Context, Decision

Method = Callable[[Context], Decision]
ScoreFn = Callable[[Context], Mapping[str, float]]


def lowest_allowed(
  arch: arch_lib.Arch, scores: Mapping[str, float]
) -> Decision:
  """Removes the lowest-scoring unit the floor allows.

  Candidates whose stage is at the floor are passed over for the next
  lowest. Ties go to the unit earliest in network order.

  Raises:
    ValueError: if nothing is removable or a removable unit has no score.
  """
  allowed = arch.removable()
  if not allowed:
    raise ValueError(f'{arch.summary()}: nothing is removable (floor).')
  missing = [u for u in allowed if u not in scores]
  if missing:
    raise ValueError(f'The scores miss removable units {missing}.')
  order = {u: i for i, u in enumerate(allowed)}
  chosen = min(allowed, key=lambda u: (scores[u], order[u]))
  return Decision(edit=surgery.remove([chosen]), scores=dict(scores))


def from_scores(score_fn: ScoreFn) -> Method:
  """The method "score every candidate, remove the lowest the floor allows"."""

  def method(ctx: Context) -> Decision:
    return lowest_allowed(ctx.arch, score_fn(ctx))

  method.__name__ = getattr(score_fn, '__name__', 'method')
  method.__doc__ = score_fn.__doc__
  method.score = score_fn
  return method


METHODS: dict[str, Method] = {
  'cka': from_scores(cka.scores),
  'random': from_scores(baselines.random_scores),
  'l1': from_scores(baselines.l1_scores),
  'block_influence': from_scores(block_influence.scores),
  'consensus': consensus.consensus,
  'kl': from_scores(baselines.kl_scores),
  'angular': from_scores(baselines.angular_scores),
  'sglp': sglp.sglp,
  'everything': everything.everything,
  'sleb': from_scores(llm.sleb_scores),
  'angular_block': llm.angular_block,
  'tail': from_scores(llm.tail_scores),
}

# Methods whose edits may shrink widths (not only remove units): their FLOPs
# can go below the layer-only floor, and the family needs filter pruning.
SHRINKS_WIDTHS = frozenset({'everything'})


def check_hparams(
  name: str,
  hparams: Mapping[str, Any],
  *,
  holdout: float,
  holdout_examples: int | None = None,
) -> None:
  """Raises on a method's hyperparameters that cannot work, before work.

  Args:
    name: the method.
    hparams: its `config.prune.<name>` as a dict.
    holdout: the run's holdout fraction.
    holdout_examples: the holdout split's size, once the data are known.
  """
  get_method(name)
  if name == 'angular_block':
    llm.hparams(hparams)
  if name == 'everything':
    hp = everything.hparams(hparams)
    if not holdout > 0:
      raise ValueError(
        'everything compares its children on a holdout carved from the '
        'training data, never the test split: set --config.holdout to a '
        'fraction in (0, 1), e.g. 0.1.'
      )
    wanted = hp['arbitration_examples']
    if holdout_examples is not None and wanted > holdout_examples:
      raise ValueError(
        f'prune.everything.arbitration_examples={wanted} is more than the '
        f'{holdout_examples} holdout examples; use at most that, or 0 (all), '
        'or a larger --config.holdout.'
      )


def get_method(name: str) -> Method:
  """The method called `name`; `KeyError` listing the valid ones."""
  try:
    return METHODS[name]
  except KeyError:
    raise KeyError(
      f'Unknown criterion {name!r}; valid criteria: {sorted(METHODS)}.'
    ) from None


__all__ = [
  'METHODS',
  'SHRINKS_WIDTHS',
  'Context',
  'Decision',
  'Method',
  'check_hparams',
  'filters',
  'from_scores',
  'get_method',
  'lowest_allowed',
]
