"""A pruning method as a record: its function, hyperparameters and needs.

`MethodRecord` declares once what a driver must know about a method:

* `fn`: `fn(ctx: Context) -> Decision`;
* `hparams`: every hyperparameter (`config.prune.<name>.<key>`) with its
  type, default, allowed values and one line of documentation;
* `validate`: cross-field checks of a complete hyperparameter dict;
* `needs`: what the method needs of the task beyond a model and
  calibration inputs (`NEEDS`), possibly depending on its hyperparameters;
* `several`: for a method that can decide several units in one call, the
  hyperparameters that make one call remove `k` units (`several(None)`: one
  unit per call);
* `shrinks_widths`, `min_examples`: whether its edits may shrink widths,
  and the fewest calibration examples it works on.

`record.check(hparams, provides)` refuses, before any work, a misspelt key
(naming the valid ones), a value of the wrong type or range, and a need the
task cannot meet (naming the need). Calling the record with a `Context`
completes the context's hyperparameters with the defaults, validates them
and the needs the context shows, and calls `fn`, so a method's own code
reads `ctx.hparams[key]` and never a default of its own.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Collection, Mapping
from typing import Any

from lpjax import arch as arch_lib
from lpjax import errors, models, surgery
from lpjax.methods.context import Context, Decision

# What a method may need of the task, and how the need reads in an error.
NEEDS: dict[str, str] = {
  'labels': 'class labels of the calibration examples (a classifier task)',
  'class_logits': "a classifier's logits (a task with classes)",
  'loss': 'a differentiable loss on the calibration data',
  'holdout': (
    'a holdout split carved from the training data (--config.holdout, e.g. 0.1)'
  ),
  'finetune': 'a way to fine-tune probe children (the classifier task)',
  'filter_widths': 'a model family with prunable filter widths (ResNets)',
  'decoder': 'a decoder language model (next-token prediction)',
}

_TYPES = {bool: 'a bool', int: 'an integer', float: 'a number', str: 'a string'}


@dataclasses.dataclass(frozen=True)
class Hparam:
  """One hyperparameter of a method.

  Attributes:
    default: its value when the config does not set it (also the value in
      `configs/base.py`, checked by the tests).
    doc: one line: what it does.
    choices: the allowed values (`None`: any value of the type).
    low: the least allowed value of a number (`None`: unbounded).
    high: the largest allowed value of a number (`None`: unbounded).
  """

  default: Any
  doc: str
  choices: tuple[Any, ...] | None = None
  low: float | None = None
  high: float | None = None

  @property
  def type(self) -> type:
    return type(self.default)

  def check(self, field: str, value: Any) -> Any:
    """`value` as this hyperparameter's type; `ConfigError` if it is not."""
    kind = self.type
    ok = isinstance(value, kind) and not (
      kind is not bool and isinstance(value, bool)
    )
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
      value, ok = float(value), True
    if not ok:
      raise errors.ConfigError(
        f'{field} must be {_TYPES[kind]}; got {value!r} '
        f'({type(value).__name__}). Default: {self.default!r}.'
      )
    if self.choices is not None and value not in self.choices:
      raise errors.ConfigError(
        f'{field} must be one of {list(self.choices)}; got {value!r}.'
      )
    if (self.low is not None and value < self.low) or (
      self.high is not None and value > self.high
    ):
      bounds = ' and '.join(
        s
        for s in (
          f'>= {self.low}' if self.low is not None else '',
          f'<= {self.high}' if self.high is not None else '',
        )
        if s
      )
      raise errors.ConfigError(f'{field} must be {bounds}; got {value!r}.')
    return value


@dataclasses.dataclass(frozen=True)
class MethodRecord:
  """A registered pruning method (see the module docstring)."""

  name: str
  fn: Callable[[Context], Decision]
  doc: str
  hparams: Mapping[str, Hparam] = dataclasses.field(default_factory=dict)
  needs: frozenset[str] | Callable[[Mapping[str, Any]], frozenset[str]] = (
    frozenset()
  )
  validate: Callable[[Mapping[str, Any]], None] | None = None
  several: Callable[[int | None], dict[str, Any]] | None = None
  # need -> how to do without it (e.g. other hyperparameters).
  fixes: Mapping[str, str] = dataclasses.field(default_factory=dict)
  # Whether its edits may shrink widths, not only remove units (their FLOPs
  # can go below the layer-only floor).
  shrinks_widths: bool = False
  # The fewest calibration examples it can compare representations on.
  min_examples: int = 1

  def __post_init__(self):
    unknown = set(self.static_needs()) - set(NEEDS)
    if unknown:
      raise ValueError(f'{self.name}: unknown needs {sorted(unknown)}.')

  def static_needs(self) -> frozenset[str]:
    return self.needs if isinstance(self.needs, frozenset) else frozenset()

  def defaults(self) -> dict[str, Any]:
    """Every hyperparameter at its default."""
    return {k: h.default for k, h in self.hparams.items()}

  def complete(self, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The defaults updated by `given`, every value checked.

    Raises:
      ConfigError: an unknown key (naming the valid ones), a value of the
        wrong type or outside its range, or a failed cross-field check.
    """
    given = dict(given or {})
    unknown = sorted(set(given) - set(self.hparams))
    if unknown:
      valid = sorted(self.hparams)
      close = {u: difflib.get_close_matches(u, valid, n=1) for u in unknown}
      hint = ''.join(
        f' Did you mean {c[0]!r} for {u!r}?' for u, c in close.items() if c
      )
      raise errors.ConfigError(
        f'Unknown hyperparameters {unknown} of method {self.name!r} '
        f'(config.prune.{self.name}); valid: {valid or "none"}.{hint}'
      )
    hp = self.defaults()
    for key, value in given.items():
      hp[key] = self.hparams[key].check(f'prune.{self.name}.{key}', value)
    if self.validate is not None:
      try:
        self.validate(hp)
      except errors.ConfigError:
        raise
      except (KeyError, ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        raise errors.ConfigError(msg) from e
    return hp

  def needs_of(self, hparams: Mapping[str, Any]) -> frozenset[str]:
    """What the method needs with these (complete) hyperparameters."""
    if isinstance(self.needs, frozenset):
      return self.needs
    return frozenset(self.needs(hparams))

  def check(
    self,
    hparams: Mapping[str, Any] | None,
    provides: Collection[str],
    *,
    task: str = 'this task',
  ) -> dict[str, Any]:
    """The complete hyperparameters, once the method can run on a task.

    Args:
      hparams: `config.prune.<name>` as a dict (`None`: all defaults).
      provides: what the task offers (keys of `NEEDS`).
      task: the task's name, for the message.

    Raises:
      ConfigError: bad hyperparameters, or a need the task does not meet,
        naming the need.
    """
    hp = self.complete(hparams)
    missing = sorted(self.needs_of(hp) - set(provides))
    if missing:
      what = '; '.join(NEEDS[m] for m in missing)
      fix = ' '.join(self.fixes[m] for m in missing if m in self.fixes)
      raise errors.ConfigError(
        f'Method {self.name!r} needs {what}, which {task} does not provide. '
        + (fix or 'Choose another --config.prune.criterion.')
      )
    return hp

  def __call__(self, ctx: Context) -> Decision:
    """`fn` on the context, its hyperparameters completed and checked."""
    hp = self.complete(ctx.hparams)
    missing = sorted(self.needs_of(hp) - provided_by(ctx))
    if missing:
      raise errors.ConfigError(
        f'Method {self.name!r} needs '
        f'{"; ".join(NEEDS[m] for m in missing)}, which the context lacks.'
      )
    return self.fn(dataclasses.replace(ctx, hparams=hp))


def provided_by(ctx: Context) -> frozenset[str]:
  """What a context offers, in the terms of `NEEDS`."""
  out = set()
  if ctx.labels is not None:
    out |= {'labels', 'class_logits'}
  if ctx.loss_fn is not None:
    out.add('loss')
  if ctx.holdout is not None:
    out.add('holdout')
  if ctx.finetune is not None:
    out.add('finetune')
  family = models.get_family(ctx.arch.family)
  if family.prunable_filters is not None:
    out.add('filter_widths')
  if ctx.arch.family == 'decoder':
    out.add('decoder')
  return frozenset(out)


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


def from_scores(
  score_fn: Callable[[Context], Mapping[str, float]],
) -> Callable[[Context], Decision]:
  """The method "score every candidate, remove the lowest the floor allows"."""

  def method(ctx: Context) -> Decision:
    return lowest_allowed(ctx.arch, score_fn(ctx))

  method.__name__ = getattr(score_fn, '__name__', 'method')
  method.__doc__ = score_fn.__doc__
  method.score = score_fn
  return method


__all__ = [
  'NEEDS',
  'Hparam',
  'MethodRecord',
  'from_scores',
  'lowest_allowed',
  'provided_by',
]
