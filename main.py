"""Runs (or resumes) an lpjax pruning run.

  python main.py --config=configs/quickstart.py --workdir=/tmp/lpjax_quickstart

Any config field can be overridden, e.g. `--config.prune.target_blocks=5`.
Re-running the same command in the same workdir resumes where it stopped.
A user error (a bad config value, an unprepared dataset, an unreadable
checkpoint or model file) prints one line and exits with status 2; anything
else is a bug and shows its traceback.
"""

import importlib.util
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from lpjax import checkpointing, input_pipeline, pipeline, report
from lpjax.interop import KerasImportError

USER_ERRORS = (
  pipeline.ConfigError,
  input_pipeline.DatasetNotPreparedError,
  checkpointing.CheckpointError,
  KerasImportError,
)

_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'Experiment config file (configs/*.py).', lock_config=True
)
_WORKDIR = flags.DEFINE_string(
  'workdir', None, 'Directory for checkpoints, results and the report.'
)
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}.')
  if importlib.util.find_spec('tensorflow') is not None:
    # TensorFlow (only there to prepare datasets) must not take the GPUs.
    import tensorflow as tf

    tf.config.set_visible_devices([], 'GPU')
  logging.set_verbosity(logging.INFO)
  # Orbax logs every file operation at INFO; keep lpjax's progress readable.
  logging.get_absl_handler().addFilter(
    lambda record: '/orbax/' not in record.pathname
  )
  try:
    results = pipeline.run(_CONFIG.value, _WORKDIR.value)
  except USER_ERRORS as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  print(report.markdown_table(results))
  print(f'\nReport, plots and checkpoints are in {_WORKDIR.value}.')


if __name__ == '__main__':
  app.run(main)
