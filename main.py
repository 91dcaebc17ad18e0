"""Runs (or resumes) an lpjax pruning run.

  python main.py --config=configs/quickstart.py --workdir=/tmp/lpjax_quickstart

Any config field can be overridden, e.g. `--config.prune.target_blocks=5`.
Re-running the same command in the same workdir resumes where it stopped.
On several hosts, run the same command on each with
`--config.distributed=True`: `jax.distributed.initialize()` then reads the
cluster from the environment before any JAX computation.
A user error (a bad config value, an unprepared dataset, an unreadable
checkpoint or model file) prints one line and exits with status 2; anything
else is a bug and shows its traceback.
"""

import importlib.util
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from lpjax import (
  checkpointing,
  embedding_pipeline,
  healing,
  input_pipeline,
  llm_pipeline,
  pipeline,
  report,
)
from lpjax.interop import KerasImportError
from lpjax.interop.gguf_llama import GGUFImportError
from lpjax.interop.safetensors_bert import BertImportError
from lpjax.interop.weights import FetchError

USER_ERRORS = (
  pipeline.ConfigError,
  input_pipeline.DatasetNotPreparedError,
  checkpointing.CheckpointError,
  KerasImportError,
  BertImportError,
  GGUFImportError,
  FetchError,
  embedding_pipeline.EmbeddingConfigError,
  llm_pipeline.LLMConfigError,
  healing.HealingError,
  input_pipeline.SeriesFileError,
)

_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'Experiment config file (configs/*.py).', lock_config=True
)
_WORKDIR = flags.DEFINE_string(
  'workdir', None, 'Directory for checkpoints, results and the report.'
)
flags.mark_flags_as_required(['config', 'workdir'])


def initialize(config) -> None:
  """Joins the cluster if `config.distributed`; before any JAX computation.

  `jax.distributed.initialize()` with no arguments reads the coordinator,
  process count and index from the environment (Cloud TPU VMs, SLURM, Open
  MPI, Kubernetes; `JAX_COORDINATOR_ADDRESS` overrides the coordinator).

  Raises:
    pipeline.ConfigError: `distributed` is set but the environment describes
      no cluster.
  """
  if not config.distributed:
    return
  try:
    jax.distributed.initialize()
  except ValueError as e:  # No cluster in the environment.
    raise pipeline.ConfigError(
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
  logging.set_verbosity(logging.INFO)
  # Orbax logs every file operation at INFO; keep lpjax's progress readable.
  logging.get_absl_handler().addFilter(
    lambda record: '/orbax/' not in record.pathname
  )
  try:
    initialize(_CONFIG.value)  # Before any JAX computation.
    task = _CONFIG.value.get('task', 'main')
    if task not in ('main', 'embedding', 'llm'):
      raise pipeline.ConfigError(
        f"Unknown task {task!r}; valid: 'main' (lpjax.pipeline), 'embedding' "
        "(lpjax.embedding_pipeline), 'llm' (lpjax.llm_pipeline)."
      )
    if task == 'llm':
      results = llm_pipeline.run(_CONFIG.value, _WORKDIR.value)
      table = llm_pipeline.markdown_table(results)
    elif task == 'embedding':
      results = embedding_pipeline.run(_CONFIG.value, _WORKDIR.value)
      table = embedding_pipeline.markdown_table(results)
    else:
      results = pipeline.run(_CONFIG.value, _WORKDIR.value)
      table = report.markdown_table(results)
  except USER_ERRORS as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  print(table)
  if task == 'main':
    print(f'\nReport, plots and checkpoints are in {_WORKDIR.value}.')
  else:
    print(f'\nresults.json is in {_WORKDIR.value}.')


if __name__ == '__main__':
  app.run(main)
