"""Pruning criteria: one score per candidate block, lower = more removable.

A criterion is a function `(ctx: Context) -> {block_name: score}` registered
here by name. Adding one = a function, one line in `CRITERIA`, one test.
"""

from __future__ import annotations

from collections.abc import Callable

from lpjax.criteria import baselines, cka
from lpjax.criteria.context import Context

Criterion = Callable[[Context], dict[str, float]]

CRITERIA: dict[str, Criterion] = {
  'cka': cka.cka_criterion,
  'random': baselines.random_criterion,
  'l1': baselines.l1_criterion,
}


def get_criterion(name: str) -> Criterion:
  """The criterion called `name`; `KeyError` listing the valid ones."""
  try:
    return CRITERIA[name]
  except KeyError:
    raise KeyError(
      f'Unknown criterion {name!r}; valid criteria: {sorted(CRITERIA)}.'
    ) from None


__all__ = ['CRITERIA', 'Context', 'Criterion', 'get_criterion']
