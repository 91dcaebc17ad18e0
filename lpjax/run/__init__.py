"""Running a pruning task: one loop, three tasks, one record.

* `loop`: the loop every task runs (decide -> edit -> adapt -> evaluate
  -> record) with its `iterative` and `one_shot` schedules, and the `Task`
  contract;
* `classifier` (`task='main'`), `language_model` (`task='llm'`),
  `embedding` (`task='embedding'`): the tasks;
* `record`: a run's record in its workdir (atomic JSON from process 0, the
  config-change refusal and its override, the model/corpus identity).

`run(config, workdir)` runs the task `config.task` names.
"""

from __future__ import annotations

import importlib
from typing import Any

from lpjax import errors

# config.task -> the module of its task (each has `run(config, workdir)`).
TASKS = {
  'main': 'classifier',
  'llm': 'language_model',
  'embedding': 'embedding',
}


def run(config: Any, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) the task `config.task` in `workdir`; its results."""
  task = config.get('task', 'main')
  if task not in TASKS:
    raise errors.ConfigError(
      f'Unknown task {task!r}; valid: {sorted(TASKS)} (--config.task).'
    )
  from lpjax.models import conv

  conv.check_environment()  # LPJAX_CONV, LPJAX_FUSION_BARRIER: before work
  module = importlib.import_module(f'lpjax.run.{TASKS[task]}')
  return module.run(config, workdir)


__all__ = ['TASKS', 'run']
