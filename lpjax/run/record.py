"""A run's record in its workdir, the same for every task.

* `write_json(path, obj)`: atomic (a temporary file, then `os.replace`), by
  process 0 only in a multi-host run; numpy values become lists/floats.
* `start(workdir, config, ...)`: before any work, refuses a workdir whose
  run had a config that changes results (naming the fields and the
  override `--config.resume_despite_config_change=True`), or that ran on
  another model or corpus; writes `config.json`; returns the previous
  `results.json` to resume from, or `None`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from lpjax import errors

# Fields that cannot change a run's results: they may differ on resume.
FREE_FIELDS = (
  'train.log_every_steps',
  'checkpoint_every_epochs',  # Resume replays the same epochs exactly.
  'train.eval_batch_size',
  'checkpoint_max_to_keep',
  'compilation_cache',  # A cached program is the one a compile produces.
  'data_dir',
  'manual_dir',
  'resume_despite_config_change',
  'distributed',  # Hosts, like devices, change only float summation order.
  'baseline.allow_untrained',  # Only lets a run start; absent in older runs.
)


def jsonable(tree: Any) -> Any:
  """`tree` with numpy arrays and scalars as JSON lists and numbers."""
  return json.loads(json.dumps(tree, default=lambda o: np.asarray(o).tolist()))


def write_json(path: str, obj: Any) -> None:
  """Writes `obj` atomically; only process 0 writes (multi-host runs)."""
  if jax.process_index() != 0:
    return
  tmp = f'{path}.tmp'
  try:
    with open(tmp, 'w') as f:
      json.dump(jsonable(obj), f, indent=1)
    os.replace(tmp, path)
  except BaseException:  # Ctrl-C too: no half-written file left behind
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def read_json(path: str) -> Any:
  """The JSON file at `path`; `UserError` naming it if it is damaged."""
  try:
    with open(path) as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise errors.UserError(
      f'{path} is not valid JSON ({e.__class__.__name__}: {e}); it was '
      'damaged or edited. Restore it, or use a new --workdir.'
    ) from None


def _flat(tree: Any, prefix: str = '') -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flat(v, f'{prefix}{k}.'))
    return out
  return {prefix[:-1]: tree}


def config_changes(
  saved: Mapping[str, Any], config: Any, free: tuple[str, ...] = ()
) -> list[str]:
  """`field: saved -> new` for every result-changing field that differs.

  `free`: prefixes of further fields that cannot change this task's results.
  """
  new = _flat(json.loads(json.dumps(config.to_dict())))
  old = _flat(dict(saved))
  return [
    f'{k}: {old.get(k, "<absent>")!r} -> {new.get(k, "<absent>")!r}'
    for k in sorted(set(old) | set(new))
    if k not in FREE_FIELDS
    and not k.startswith(free or ('\0',))
    and old.get(k) != new.get(k)
  ]


def start(
  workdir: str,
  config: Any,
  *,
  free: tuple[str, ...] = (),
  identity: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
  """Checks `workdir` against this run and records its config.

  Args:
    workdir: the run's directory (created if missing).
    config: this run's config.
    free: prefixes of fields this task's results do not depend on.
    identity: what a resumed run must share besides the config, e.g.
      `{'corpus': digest, 'model': name}`; recorded in `results.json` by
      the task and compared with it here.

  Returns:
    The previous `results.json`, or `None` for a fresh run.

  Raises:
    ConfigError: the workdir holds a run with a config that changes
      results (unless `config.resume_despite_config_change`), or one on
      another model or corpus.
    UserError: the workdir cannot be created or written, or holds a
      damaged `config.json` / `results.json`.
  """
  errors.writable_folder(workdir, 'the workdir', 'Choose a writable --workdir.')
  results_path = os.path.join(workdir, 'results.json')
  config_path = os.path.join(workdir, 'config.json')
  previous = read_json(results_path) if os.path.exists(results_path) else None
  if os.path.exists(config_path):
    saved = read_json(config_path)
  else:
    saved = previous['config'] if previous else None
  if saved is not None and not config.get(
    'resume_despite_config_change', False
  ):
    changes = config_changes(saved, config, free)
    if changes:
      raise errors.ConfigError(
        f'{workdir} holds a run with a different config ('
        + '; '.join(changes)
        + '). Use a new --workdir, or resume it anyway with '
        '--config.resume_despite_config_change=True.'
      )
  for key, value in (identity or {}).items():
    if previous is None or previous.get(key) == value:
      continue
    if key == 'corpus':
      raise errors.ConfigError(
        f'{workdir} holds a run on other text (corpus '
        f'{previous.get(key)}; this Python has {value}: pydoc_data.topics '
        'changes between Python releases). Use a new --workdir.'
      )
    raise errors.ConfigError(
      f'{workdir} holds a run of {key} {previous.get(key)!r}, not '
      f'{value!r}. Use a new --workdir.'
    )
  write_json(config_path, config.to_dict())
  return previous


__all__ = [
  'FREE_FIELDS',
  'config_changes',
  'jsonable',
  'read_json',
  'start',
  'write_json',
]
