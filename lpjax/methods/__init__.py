"""Pruning methods: records in one registry, `METHODS`.

A method sees the current model, calibration data, a loss, an RNG key, its
own hyperparameters (`config.prune.<name>`) and a way to fine-tune probe
children (`Context`), and returns the edit to apply plus diagnostics
(`Decision`). Its `MethodRecord` (`lpjax.methods.record`) declares the rest
once: its hyperparameters with types and defaults, a validator, what it
needs of the task (labels, a loss, a holdout, a decoder, filter widths) and
whether one call can decide several units. Drivers ask the record; no
driver names a method.

Most criteria only score units (lower = more removable) and remove the
lowest-scoring one the floor allows: write the scoring function and wrap it
with `from_scores`. Adding one = a module, a record in `METHODS`, a test
(the README's "Add a criterion").
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from lpjax import errors
from lpjax.methods import (
  baselines,
  block_influence,
  cka,
  consensus,
  everything,
  filters,
  llm,
  sglp,
  taylor,
)
from lpjax.methods.context import Context, Decision
from lpjax.methods.record import (
  NEEDS,
  Hparam,
  MethodRecord,
  from_scores,
  lowest_allowed,
  provided_by,
)

Method = Callable[[Context], Decision]


def _everything_needs(hp: Mapping[str, Any]) -> frozenset[str]:
  """Its own needs, its layer criterion's, and the kl filter criterion's."""
  layer = METHODS[hp['layer_criterion']]
  own = {'holdout', 'finetune', 'filter_widths'}
  if hp['filter_criterion'] == 'kl':
    own.add('class_logits')
  return frozenset(own) | layer.needs_of(layer.defaults())


_RECORDS = (
  MethodRecord(
    'cka',
    from_scores(cka.scores),
    'Pons et al. 2024: 1 - linear CKA of the representation without the unit',
    hparams=cka.HPARAMS,
    min_examples=4,
  ),
  MethodRecord(
    'random', from_scores(baselines.random_scores), 'uniform random scores'
  ),
  MethodRecord(
    'l1', from_scores(baselines.l1_scores), "mean l1 norm of a unit's filters"
  ),
  MethodRecord(
    'block_influence',
    from_scores(block_influence.scores),
    "ShortGPT: 1 - cos(a unit's input, its output)",
  ),
  MethodRecord(
    'consensus',
    consensus.consensus,
    'Mugnaini et al. 2024: rank sum of eight similarity metrics',
    hparams=consensus.HPARAMS,
    needs=consensus.needs,
    validate=consensus.validate,
    min_examples=4,
    fixes={
      'labels': 'Use the label-free metrics: '
      '--config.prune.consensus.metrics='
      f'{",".join(consensus.LABEL_FREE)}.'
    },
  ),
  MethodRecord(
    'kl',
    from_scores(baselines.kl_scores),
    "CURL: KL of the logits' distribution without the unit",
    hparams=baselines.HPARAMS,
    needs=frozenset({'class_logits'}),
  ),
  MethodRecord(
    'angular',
    from_scores(baselines.angular_scores),
    "Gromov et al. 2024: angle between a unit's input and output",
  ),
  MethodRecord(
    'sglp',
    sglp.sglp,
    'Li et al. 2024: CKA segments, GradNorm within each',
    hparams=sglp.HPARAMS,
    needs=frozenset({'loss'}),
    validate=sglp.validate,
    several=sglp.several,
    min_examples=4,
  ),
  MethodRecord(
    'everything',
    everything.everything,
    'Nascimento et al. 2025: a layer and a filter child, CKA arbitration',
    hparams=everything.HPARAMS,
    needs=_everything_needs,
    validate=everything.validate,
    shrinks_widths=True,
  ),
  MethodRecord(
    'sleb',
    from_scores(llm.sleb_scores),
    'Song et al. 2024: calibration NLL without each layer',
    needs=frozenset({'decoder'}),
  ),
  MethodRecord(
    'ppl',
    from_scores(llm.ppl_scores),
    'Kim et al. 2024 (Shortened LLaMA): calibration perplexity without each '
    'layer',
    needs=frozenset({'decoder'}),
  ),
  MethodRecord(
    'angular_block',
    llm.angular_block,
    'Gromov et al. 2024: the n consecutive layers of least last-token angle',
    hparams=llm.HPARAMS,
    needs=frozenset({'decoder'}),
    several=llm.several,
  ),
  MethodRecord(
    'taylor',
    from_scores(taylor.scores),
    'Kim et al. 2024: sum of |w * dL/dw| over the unit (first-order Taylor)',
    needs=frozenset({'loss'}),
  ),
  MethodRecord(
    'tail',
    from_scores(llm.tail_scores),
    'removes the deepest unit but the last',
  ),
)

METHODS: dict[str, MethodRecord] = {r.name: r for r in _RECORDS}


def get_method(name: str) -> MethodRecord:
  """The method called `name`; `KeyError` listing the valid ones.

  The record is callable: `get_method(name)(ctx) -> Decision`.
  """
  try:
    return METHODS[name]
  except KeyError:
    raise errors.ConfigError(
      f'Unknown criterion {name!r}; valid criteria: {sorted(METHODS)}.'
    ) from None


def check(
  name: str,
  hparams: Mapping[str, Any] | None,
  provides: Collection[str],
  *,
  task: str = 'this task',
) -> dict[str, Any]:
  """Method `name`'s complete hyperparameters, once it can run on a task.

  Raises:
    errors.ConfigError: an unknown method, a bad hyperparameter, or a need the
      task (`provides`: keys of `NEEDS`) does not meet.
  """
  return get_method(name).check(hparams, provides, task=task)


def available(provides: Collection[str]) -> list[str]:
  """The methods whose needs (at default hyperparameters) a task meets."""
  return [
    n for n, r in METHODS.items() if r.needs_of(r.defaults()) <= set(provides)
  ]


__all__ = [
  'METHODS',
  'NEEDS',
  'Context',
  'Decision',
  'Hparam',
  'Method',
  'MethodRecord',
  'available',
  'check',
  'filters',
  'from_scores',
  'get_method',
  'lowest_allowed',
  'provided_by',
]
