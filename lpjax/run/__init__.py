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
import os
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
  use_compilation_cache(config.get('compilation_cache', ''))
  module = importlib.import_module(f'lpjax.run.{TASKS[task]}')
  return module.run(config, workdir)


def use_compilation_cache(folder: Any) -> str | None:
  """Points JAX's persistent compilation cache at `folder` (`~` expanded,
  created), before the run compiles anything; returns the folder in use.

  `''` or `None` leaves the cache off. `JAX_COMPILATION_CACHE_DIR` in the
  environment (even empty), or a cache folder already set in `jax.config`,
  is the user's choice and is kept.

  Raises:
    ConfigError: `folder` is not a string, or cannot be created or written.
  """
  import jax

  if 'JAX_COMPILATION_CACHE_DIR' in os.environ:
    return os.environ['JAX_COMPILATION_CACHE_DIR'] or None
  if jax.config.jax_compilation_cache_dir:
    return jax.config.jax_compilation_cache_dir
  if folder is None or folder == '':
    return None
  if not isinstance(folder, str):
    raise errors.ConfigError(
      f"compilation_cache must be a folder path or '' (off); got {folder!r}."
    )
  path = errors.writable_folder(
    os.path.abspath(os.path.expanduser(folder)),
    'the compilation_cache folder',
    "Set --config.compilation_cache to a writable folder, or '' to compile "
    'without a cache.',
    errors.ConfigError,
  )
  jax.config.update('jax_compilation_cache_dir', path)
  return path


__all__ = ['TASKS', 'run', 'use_compilation_cache']
