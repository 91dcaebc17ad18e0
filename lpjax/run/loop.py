"""The one pruning loop every task runs.

    check -> record.start -> load -> baseline
      -> for each step of the schedule:
           decide (method on task.context) -> record the decision
           -> surgery.apply -> task.adapt -> task.evaluate -> record
      -> task.finish (off-chain work, e.g. healing) -> record

A **task** (`Task`) knows its model, data and measures; the loop knows
methods, schedules, edits and the record. Three tasks implement it:
`lpjax.run.classifier` (train, fine-tune), `lpjax.run.language_model`
(decoders: heal off the chain) and `lpjax.run.embedding` (no adapt).

Schedules (`Schedule`):

* `iterative`: step `k` decides on the model after step `k - 1` (adapted),
  until the task's stop rule (`Schedule.done`) or the last `k` asked for.
  With `one_unit=True` a method that can decide several units per call
  (`MethodRecord.several`) is asked for one.
* `one_shot`: every decision is made on the unpruned model: one call that
  scores every unit, the `k` lowest removed for every `k` (`lowest`); or,
  for a method that decides several units per call, one call per `k`.

Every decision is written to `results['decisions']` before its edit is
adapted, so a re-run resumes by replaying the recorded edits (the method
is called again only for a decision that carried trained variables, e.g.
`everything`'s probe child, whose probes restore from their checkpoints).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import jax
import ml_collections
import numpy as np
from absl import logging

from lpjax import arch as arch_lib
from lpjax import errors, methods, surgery
from lpjax import report as report_lib
from lpjax.run import record

Model = tuple[arch_lib.Arch, Any]  # (arch, variables)


@dataclasses.dataclass(frozen=True)
class Schedule:
  """Which pruned models a run makes.

  Attributes:
    kind: 'iterative' or 'one_shot'.
    ks: units removed of the models evaluated, ascending; `None`
      (iterative only): every step, until `done`.
    done: `(arch, units removed) -> bool`, the stop rule when `ks` is None.
    one_unit: iterative steps ask a several-unit method for one unit.
  """

  kind: str
  ks: tuple[int, ...] | None = None
  done: Callable[[arch_lib.Arch, int], bool] | None = None
  one_unit: bool = False


SCHEDULES = ('iterative', 'one_shot')


class Task(Protocol):
  """What the loop asks of a task (see the module docstring).

  Attributes:
    config: the run's config.
    name: `results['task']`.
    provides: what the task offers a method (`lpjax.methods.NEEDS`).
    free: prefixes of config fields that cannot change its results.
    models_key: where model records go in `results`: a list (one per
      step, `'iterations'`) or a dict keyed by `k` (`'pruned'`).
  """

  config: ml_collections.ConfigDict
  name: str
  provides: frozenset[str]
  free: tuple[str, ...]
  models_key: str

  def identity(self) -> dict[str, Any]:
    """What a resumed run must share besides the config (model, corpus)."""

  def load(self) -> Model:
    """The unpruned model (trained, imported or restored)."""

  def header(self, base: Model) -> dict[str, Any]:
    """The results' task fields, with `'baseline'` (its evaluation)."""

  def schedule(self, base: Model) -> Schedule:
    """The schedule; raises `ConfigError` if the model cannot meet it."""

  def context(self, k: int, arch: arch_lib.Arch, variables: Any) -> dict:
    """The task's fields of step `k`'s `methods.Context` (inputs, labels,
    loss_fn, data_batch_size, mesh, finetune, holdout)."""

  def adapt(
    self, k: int, make: Callable[[], Model]
  ) -> tuple[arch_lib.Arch, Any, dict[str, Any]]:
    """The model of step `k` adapted (fine-tuned), and fields to record.

    `make()` returns the edited model; a task that resumes an adaptation
    from its own checkpoint need not call it.
    """

  def evaluate(
    self,
    k: int,
    arch: arch_lib.Arch,
    variables: Any,
    *,
    decision: Mapping[str, Any],
    removed: list[str],
  ) -> dict[str, Any]:
    """The record of the model of step `k`: its measures, and what of its
    `decision` record to keep (None: a step the task does not measure).
    `removed`: every unit removed from the unpruned model, in order."""

  def finish(
    self, results: dict[str, Any], base: Model, save: Callable[[], None]
  ) -> None:
    """Work after pruning that feeds no decision (e.g. healing)."""


def context(task: Task, k: int, arch, variables, **hparams) -> methods.Context:
  """Step `k`'s `methods.Context`: the task's fields, the config's method
  settings, and `hparams` over the configured hyperparameters."""
  c, p = task.config, task.config.prune
  configured = p.get(p.criterion)
  return methods.Context(
    arch=arch,
    variables=variables,
    key=jax.random.fold_in(jax.random.key(c.seed), k),
    hparams={**(configured.to_dict() if configured else {}), **hparams},
    seed=c.seed,
    iteration=k,
    representation=p.representation,
    candidate_chunk=p.candidate_chunk or None,
    similarity_dtype=p.similarity_dtype,
    **task.context(k, arch, variables),
  )


def decide(
  task: Task, k: int, arch, variables, **hparams
) -> tuple[methods.Decision, dict[str, Any]]:
  """Calls the configured method on the model; `(decision, its record)`."""
  method = methods.get_method(task.config.prune.criterion)
  t0 = time.perf_counter()
  decision = method(context(task, k, arch, variables, **hparams))
  seconds = time.perf_counter() - t0
  rec = {
    'removed': list(decision.edit.remove),
    'edit': decision.edit.to_dict(),
    # Units a method does not score (angular_block: layers that start no
    # block) are null, not Infinity (not JSON).
    'scores': {
      u: (float(v) if np.isfinite(v) else None)
      for u, v in decision.scores.items()
    },
    'seconds': seconds,
  }
  if decision.diagnostics:
    rec['diagnostics'] = record.jsonable(dict(decision.diagnostics))
  if decision.variables is not None:
    rec['carries_variables'] = True
  logging.info(
    'Step %d: %s removes %s (%.1f s).',
    k,
    method.name,
    ', '.join(rec['removed']) or 'nothing',
    seconds,
  )
  return decision, rec


def lowest(
  arch: arch_lib.Arch, scores: Mapping[str, float | None], k: int
) -> list[str]:
  """The `k` removable units with the lowest scores (ties: network order),
  respecting the floor after each removal."""
  order = {u: i for i, u in enumerate(arch.candidates)}
  chosen: list[str] = []
  current = arch
  for _ in range(k):
    allowed = current.removable()
    if not allowed:
      raise errors.ConfigError(
        f'Only {len(chosen)} units can be removed (floor '
        f'min_blocks_per_stage={arch.min_blocks_per_stage}); {k} asked.'
      )
    pick = min(
      allowed,
      key=lambda u: (scores[u] if scores[u] is not None else np.inf, order[u]),
    )
    chosen.append(pick)
    current = current.without([pick])
  return chosen


def _check_same_shapes(want, got) -> None:
  """Raises unless `got` has the tree and shapes of `want`."""

  def shapes(tree):
    return {
      jax.tree_util.keystr(path): np.shape(leaf)
      for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }

  if shapes(want) != shapes(got):
    raise ValueError(
      'The method returned variables that do not fit its edit: their tree '
      'or shapes differ from the edited model.'
    )


Step = tuple[int, Callable[[], Model], dict[str, Any]]


def _iterative(task, sched, base, decisions, save) -> Iterator[Step]:
  """Steps `(k, make, decision record)`; the caller sends each step's
  adapted model back (`generator.send`)."""
  method = methods.get_method(task.config.prune.criterion)
  hp = method.several(None) if sched.one_unit and method.several else {}
  arch, variables = base
  k, removed = 0, 0
  while True:
    if sched.ks is not None and k >= sched.ks[-1]:
      return
    if sched.ks is None and sched.done(arch, removed):
      return
    k += 1
    carried = None
    if k <= len(decisions):
      rec = decisions[k - 1]
    else:
      decision, rec = decide(task, k, arch, variables, **hp)
      carried = decision.variables
      decisions.append(dict(rec, step=k))
      save()

    def make(arch=arch, variables=variables, rec=rec, carried=carried, k=k):
      edit = surgery.Edit.from_dict(rec['edit'])
      child_arch, child = surgery.apply(arch, variables, edit)
      if rec.get('carries_variables') and carried is None:
        decision, again = decide(task, k, arch, variables, **hp)
        if again['edit'] != rec['edit']:
          raise errors.UserError(
            f'Step {k} decided {again["removed"]} on resume, not the '
            f'recorded {rec["removed"]}: the run cannot be resumed '
            'faithfully; use a new --workdir.'
          )
        carried = decision.variables
      if carried is not None:  # e.g. a probe-trained child
        _check_same_shapes(child, carried)
        child = carried
      return child_arch, child

    arch, variables = yield k, make, rec
    removed += len(rec['removed'])


def _one_shot(task, sched, base, decisions, save) -> Iterator[Step]:
  method = methods.get_method(task.config.prune.criterion)
  arch, variables = base
  if method.several is not None:  # one call per k
    done = {d['k']: d for d in decisions}
    for k in sched.ks:
      if k not in done:
        _, rec = decide(task, 1, arch, variables, **method.several(k))
        if len(rec['removed']) != k:
          raise errors.ConfigError(
            f'{method.name} removed {len(rec["removed"])} units when asked '
            f'for {k} ({rec["removed"]}): its own limits (segments, floor) '
            'allow fewer; ask for fewer.'
          )
        done[k] = dict(rec, k=k)
        decisions.append(done[k])
        save()
      yield k, _removing(base, done[k]['removed']), done[k]
  else:  # one call scores every unit
    if not decisions:
      _, rec = decide(task, 1, arch, variables)
      decisions.append(rec)
      save()
    for k in sched.ks:
      gone = lowest(arch, decisions[0]['scores'], k)
      yield k, _removing(base, gone), {'removed': gone}


def _removing(base: Model, units) -> Callable[[], Model]:
  return lambda: surgery.apply(*base, surgery.remove(list(units)))


def _stored(store, k):
  if isinstance(store, dict):
    return store.get(str(k))
  return store[k - 1] if k <= len(store) else None


def _store(store, k, rec) -> None:
  if isinstance(store, dict):
    store[str(k)] = rec
  else:
    del store[k - 1 :]
    store.append(rec)


def run(task: Task, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) `task` in `workdir`; returns the results dict."""
  c = task.config
  path = os.path.join(workdir, 'results.json')
  previous = record.start(workdir, c, free=task.free, identity=task.identity())
  base = task.load()
  results = dict(previous or {})
  results.update(
    config=c.to_dict(),
    task=task.name,
    criterion=c.prune.criterion,
    **task.header(base),
  )
  if 'decisions' not in results:  # a run recorded before decisions were
    results['decisions'] = [
      {key: r[key] for key in ('removed', 'edit') if key in r}
      for r in results.get('iterations', [])
    ]
  models = results.setdefault(
    task.models_key, [] if task.models_key == 'iterations' else {}
  )

  def save():
    record.write_json(path, results)
    if jax.process_index() == 0:
      report_lib.write_report(workdir)

  sched = task.schedule(base)
  results['schedule'] = sched.kind
  save()
  steps = (_iterative if sched.kind == 'iterative' else _one_shot)(
    task, sched, base, results['decisions'], save
  )
  gone: list[str] = []  # iterative: every unit removed so far, in order
  step = next(steps, None)
  while step is not None:
    k, make, decision = step
    arch, variables, extra = task.adapt(k, make)
    if sched.kind == 'iterative':
      gone += decision['removed']
    removed = list(gone) if sched.kind == 'iterative' else decision['removed']
    if _stored(models, k) is None:
      rec = task.evaluate(
        k, arch, variables, decision=decision, removed=removed
      )
      if rec is not None:  # None: a step the task does not measure
        _store(models, k, {**rec, **extra})
        save()
    step = _send(steps, (arch, variables))
  task.finish(results, base, save)
  save()
  return results


def _send(steps, model):
  try:
    return steps.send(model)
  except StopIteration:
    return None


__all__ = [
  'SCHEDULES',
  'Schedule',
  'Task',
  'context',
  'decide',
  'lowest',
  'run',
]
