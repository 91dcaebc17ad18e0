"""Runs (or resumes) an lpjax pruning run.

  python main.py --config=configs/quickstart.py --workdir=/tmp/lpjax_quickstart

Any config field can be overridden, e.g. `--config.prune.target_blocks=5`.
Re-running the same command in the same workdir resumes where it stopped.
On several hosts, run the same command on each with
`--config.distributed=True`: `jax.distributed.initialize()` then reads the
cluster from the environment before any JAX computation.
A user error (a bad config file, field or value, an unprepared dataset, an
unreadable checkpoint, model or workdir file) prints one line and exits
with status 2; Ctrl-C prints one line and exits with 130 (re-run the same
command to resume); anything else is a bug and shows its traceback.
"""

import difflib
import importlib.util
import os
import re
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from lpjax import checkpointing, errors, report
from lpjax import run as run_lib

_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'Experiment config file (configs/*.py).', lock_config=True
)
_WORKDIR = flags.DEFINE_string(
  'workdir', None, 'Directory for checkpoints, results and the report.'
)
flags.mark_flags_as_required(['config', 'workdir'])


def fail(message: str, status: int = 2) -> None:
  """Prints `error: message` as one line on stderr and exits."""
  print(f'error: {" ".join(str(message).split())}', file=sys.stderr)
  sys.exit(status)


def _chain(e: BaseException) -> list[BaseException]:
  out = [e]
  while out[-1].__cause__ is not None or out[-1].__context__ is not None:
    out.append(out[-1].__cause__ or out[-1].__context__)
  return out


def _config_error(argv: list[str], e: BaseException) -> str:
  """One line for a config file or field that could not be read."""
  path = next(
    (a.split('=', 1)[1] for a in argv if a.startswith('--config=')), ''
  ).split(':')[0]
  if path and not os.path.exists(path):
    folder = os.path.dirname(path) or '.'
    near = difflib.get_close_matches(
      os.path.basename(path),
      os.listdir(folder) if os.path.isdir(folder) else [],
      n=1,
    )
    hint = f' Did you mean {os.path.join(folder, near[0])}?' if near else ''
    return f'No config file {path}.{hint}'
  chain = _chain(e)
  if isinstance(e, (KeyError, AttributeError)):
    # ml_collections: a field that does not exist, with its "Did you mean".
    said = ' '.join(str(x) for x in chain)
    close = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', said)
    if close:
      return (
        f'The config has no field {close.group(2)!r}; did you mean '
        f'{close.group(1)!r}? (a --config.* override or {path})'
      )
    name = chain[-1].args[0] if chain[-1].args else e
    return f'The config has no field {name!r} (a --config.* override).'
  if isinstance(e, flags.IllegalFlagValueError):
    text = str(e)
    if 'Traceback' in text:  # the config file raised: its last line says why
      last = text.strip().splitlines()[-1]
      return f'Cannot load the config {path}: {last}'
    return text
  # A config file that fails to load: its own error.
  return f'Cannot load the config {path}: {chain[-1]!r}'


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad config file or field as one line."""
  try:
    return flags.FLAGS(argv)
  except flags.IllegalFlagValueError as e:
    fail(_config_error(argv, e))
  except flags.Error as e:
    fail(f'{e}. Run python main.py --helpshort for the flags.')
  except (KeyError, AttributeError, ValueError, TypeError, OSError) as e:
    fail(_config_error(argv, e))
  return argv  # not reached


def initialize(config) -> None:
  """Joins the cluster if `config.distributed`; before any JAX computation.

  `jax.distributed.initialize()` with no arguments reads the coordinator,
  process count and index from the environment (Cloud TPU VMs, SLURM, Open
  MPI, Kubernetes; `JAX_COORDINATOR_ADDRESS` overrides the coordinator).

  Raises:
    ConfigError: `distributed` is set but the environment describes no
      cluster.
  """
  if not config.distributed:
    return
  try:
    jax.distributed.initialize()
  except ValueError as e:  # No cluster in the environment.
    raise errors.ConfigError(
      'distributed=True, but jax.distributed.initialize() found no cluster '
      f'in the environment ({e}); run it on the cluster, or without '
      '--config.distributed=True.'
    ) from e
  logging.info(
    'Process %d of %d: %d of %d devices.',
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}.')
  if importlib.util.find_spec('tensorflow') is not None:
    # TensorFlow (only there to prepare datasets) must not take the GPUs.
    import tensorflow as tf

    tf.config.set_visible_devices([], 'GPU')
  checkpointing.quiet_logging()
  config, workdir = _CONFIG.value, _WORKDIR.value
  try:
    config.get('task')  # the config file is read here
  except OSError as e:
    fail(_config_error(sys.argv, e))
  try:
    initialize(config)  # Before any JAX computation.
    results = run_lib.run(config, workdir)
  except errors.UserError as e:
    fail(e)
  except KeyboardInterrupt:
    fail(f'interrupted; re-run the same command to resume from {workdir}.', 130)
  print(report.table(results))
  print(f'\nThe report (report.md), plots and results.json are in {workdir}.')


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
