"""The classifier task: baseline -> {decide, edit, fine-tune, evaluate}*.

`run(config, workdir)` runs it through the one loop (`lpjax.run.loop`):
this module is what the loop asks of a classifier (`Classifier`), and the
stage machinery that makes its training resumable.

Every piece of training is a **stage** (`Classifier.stage`): one directory
of orbax checkpoints, created by an `init` function (train from scratch,
load, or apply an edit), step 0 saved right after it, step `e` after
training epoch `e`, the last marked complete with the stage's record. A
stage that finds its directory resumes; a complete one just restores. The
baseline, every iteration's fine-tune (`Classifier.adapt`) and the probe
children a method trains (`Context.finetune`) are all stages.

Layout of a run's workdir:

* `baseline/`: the unpruned model;
* `iter_001/`, `iter_002/`, ...: the fine-tune of each iteration's edited
  model. The loop records each decision (the method's `Edit` and scores)
  in `results.json` before the edit is applied, so every intermediate
  model is the baseline plus a replay of the recorded edits
  (`replay_edits`);
* `iter_001_<name>/`: probe children a method fine-tuned in iteration 1;
* `results.json`, `config.json`, `report.md`, `*.png`: the record;
* `tb/`: TensorBoard scalars.

Every checkpoint stores its `Arch`, so a killed run restarted with the same
command resumes where it stopped, mid-training, mid-fine-tune or between
iterations, and ends with the same architecture, records and parameters as
an uninterrupted run (data order depends only on (seed, epoch), scoring is
deterministic). The order is the paper's: score, remove, fine-tune (Pons et
al. 2024, Alg. 1).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
import zlib
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from lpjax import arch as arch_lib
from lpjax import (
  checkpointing,
  data,
  errors,
  flops,
  methods,
  models,
  scoring,
  sharding,
  surgery,
  train,
)
from lpjax.run import loop

SOURCES = ('train', 'checkpoint', 'keras')


# --- Configuration checks -----------------------------------------------------


# Integer fields and their least valid value.
_COUNTS = {
  'min_blocks_per_stage': 1,
  'train.batch_size': 1,
  'train.eval_batch_size': 1,
  'train.warmup_epochs': 0,
  'baseline.epochs': 0,
  'prune.calibration_examples': 1,
  'prune.data_batch_size': 1,
  'prune.candidate_chunk': 0,
  'prune.finetune_epochs': 0,
  'checkpoint_max_to_keep': 1,
}


def check_config(config: ml_collections.ConfigDict) -> None:
  """Fails fast on names and values that cannot work, before any work.

  Raises:
    KeyError: unknown criterion, model, dataset (listing valid ones).
    ValueError: a bad count (batch size, epochs, ...), a bad baseline
      source or weight-decay mask.
  """
  arch = None
  if config.baseline.source == 'train' and config.model != 'decoder':
    arch = models.get_arch(config.model)  # KeyError listing the valid models.
  method_hparams(config, arch)
  if config.model == 'decoder':
    raise errors.ConfigError(
      'model=decoder: decoders are pruned from pretrained weights '
      '(lpjax.interop.gguf_llama), not trained by this pipeline.'
    )
  for field, least in _COUNTS.items():
    value = config
    for key in field.split('.'):
      value = value[key]
    if not isinstance(value, int) or value < least:
      raise errors.ConfigError(
        f'{field} must be an integer >= {least}; got {value!r}. '
        f'Set it with --config.{field}=N.'
      )
  every = config.get('checkpoint_every_epochs', 1)
  if not isinstance(every, int) or every < 1:
    raise errors.ConfigError(
      f'checkpoint_every_epochs must be an integer >= 1; got {every!r}.'
    )
  b = config.baseline
  if b.source == 'train' and b.epochs == 0 and not b.get('allow_untrained'):
    raise errors.ConfigError(
      'baseline.epochs=0 with baseline.source=train would prune a randomly '
      'initialised network (its accuracies and deltas mean nothing): train '
      'it with --config.baseline.epochs=N, or set '
      '--config.baseline.allow_untrained=True to do it anyway.'
    )
  sharding.data_devices(batch_sizes(config))  # refuses what cannot split
  if config.train.weight_decay_mask not in train.DECAY_MASKS:
    raise ValueError(
      f'Unknown train.weight_decay_mask {config.train.weight_decay_mask!r}; '
      f'valid: {list(train.DECAY_MASKS)}.'
    )
  if config.prune.similarity_dtype not in scoring.SIMILARITY_DTYPES:
    raise ValueError(
      f'Unknown prune.similarity_dtype {config.prune.similarity_dtype!r}; '
      f'valid: {list(scoring.SIMILARITY_DTYPES)}.'
    )
  if config.dataset not in data.DATASETS:
    raise KeyError(
      f'Unknown dataset {config.dataset!r}; valid datasets: '
      f'{list(data.DATASETS)}.'
    )
  if config.baseline.source not in SOURCES:
    raise ValueError(
      f'Unknown baseline.source {config.baseline.source!r}; valid: '
      f'{list(SOURCES)}.'
    )
  if config.baseline.source == 'keras' and not (
    config.baseline.keras_json and config.baseline.keras_h5
  ):
    raise ValueError(
      'baseline.source=keras needs baseline.keras_json and baseline.keras_h5.'
    )
  if config.baseline.source == 'checkpoint' and not config.baseline.path:
    raise ValueError('baseline.source=checkpoint needs baseline.path.')


def batch_sizes(config: ml_collections.ConfigDict) -> dict[str, int]:
  """The batch sizes training and evaluation split over the devices."""
  return {
    'train.batch_size': config.train.batch_size,
    'train.eval_batch_size': config.train.eval_batch_size,
  }


def _splits(n: int, batch_size: int, devices: int) -> bool:
  """Whether `n` examples form equal batches of at most `batch_size` that
  `devices` devices split."""
  return any(
    n % b == 0 for b in range(devices, min(batch_size, n) + 1, devices)
  )


def provides(config: ml_collections.ConfigDict, arch=None) -> frozenset[str]:
  """What this task offers a method (`lpjax.methods.NEEDS`).

  `arch`: the unpruned model once known; before, filter widths are assumed
  (a loaded model is checked again with its `Arch`).
  """
  out = {'labels', 'class_logits', 'loss', 'finetune'}
  if config.holdout > 0:
    out.add('holdout')
  if arch is None or models.get_family(arch.family).prunable_filters:
    out.add('filter_widths')
  return frozenset(out)


def method_hparams(config: ml_collections.ConfigDict, arch=None) -> dict:
  """The criterion's complete hyperparameters; `errors.ConfigError` if the method
  cannot run on this task (a need unmet, a bad hyperparameter)."""
  hp = config.prune.get(config.prune.criterion)
  return methods.check(
    config.prune.criterion,
    hp.to_dict() if hp is not None else None,
    provides(config, arch),
    task='the classifier task',
  )


CALIBRATION_SPLITS = ('train', 'holdout')


def check_calibration(
  config: ml_collections.ConfigDict, dataset: data.Dataset
) -> None:
  """Raises unless calibration data can come from the training data.

  Pruning decisions read only `train` or a `holdout` carved from it: the
  test split is for reporting.
  """
  p = config.prune
  if p.calibration_split == 'test':
    raise ValueError(
      "prune.calibration_split='test' would let the test split steer which "
      "units are removed; use 'train', or 'holdout' with --config.holdout="
      '0.1 (a fraction of train held out).'
    )
  if p.calibration_split not in CALIBRATION_SPLITS:
    raise ValueError(
      f'Unknown prune.calibration_split {p.calibration_split!r}; valid: '
      f'{list(CALIBRATION_SPLITS)}.'
    )
  if p.calibration_split == 'holdout' and not config.holdout > 0:
    raise ValueError(
      "prune.calibration_split='holdout' needs a holdout: set "
      '--config.holdout to a fraction in (0, 1), e.g. 0.1.'
    )
  least = methods.get_method(p.criterion).min_examples
  if p.calibration_examples < least:
    raise ValueError(
      f'{p.criterion} compares representations across examples: '
      f'prune.calibration_examples must be >= {least}; got '
      f'{p.calibration_examples}.'
    )
  available = dataset.num_examples(p.calibration_split)
  if p.calibration_examples > available:
    raise ValueError(
      f'prune.calibration_examples={p.calibration_examples} is more than '
      f'the {available} examples of split {p.calibration_split!r}; use at '
      f'most {available}.'
    )
  # Scoring splits them into equal batches of a multiple of the devices
  # (with lpjax's default devices, over fewer of them where it must).
  n, devices = p.calibration_examples, jax.device_count()
  if not sharding.defaulted() and not _splits(n, p.data_batch_size, devices):
    raise errors.ConfigError(
      f'prune.calibration_examples={n} cannot be scored in equal batches of '
      f'at most prune.data_batch_size={p.data_batch_size} that split over '
      f'the {devices} devices{sharding.device_count_source()}; use a multiple '
      f'of {devices} for both.'
    )


def check_target(
  config: ml_collections.ConfigDict,
  arch: arch_lib.Arch,
  input_shape: Any = None,
) -> None:
  """Raises if the pruning target is beyond what the floor allows."""
  p = config.prune
  most = arch.max_removable()
  if p.target_blocks < 0 or p.target_flops_reduction < 0:
    raise errors.ConfigError(
      'Pruning targets must be >= 0 (0 = prune to the floor).'
    )
  if p.target_blocks > most:
    raise errors.ConfigError(
      f'prune.target_blocks={p.target_blocks} is beyond the floor: '
      f'{arch.summary()} keeps >= {arch.min_blocks_per_stage} units per '
      f'stage, so at most {most} units can be removed.'
    )
  method_hparams(config, arch)  # the loaded model's family meets its needs
  if (
    p.target_flops_reduction
    and not methods.get_method(p.criterion).shrinks_widths
  ):
    best = flops.reduction(arch.floor(), arch, input_shape)['flops_reduction']
    if p.target_flops_reduction > best + 1e-9:
      raise errors.ConfigError(
        f'prune.target_flops_reduction={p.target_flops_reduction}% is '
        f'beyond the floor: removing every removable unit of '
        f'{arch.summary()} reduces FLOPs by {best:.2f}% at most.'
      )


def replay_edits(
  results: dict[str, Any], arch: arch_lib.Arch, variables: Any, upto: int
) -> tuple[arch_lib.Arch, Any]:
  """The model right after iteration `upto`'s edit, from the baseline.

  Applies the edits `results.json` recorded for iterations 1..`upto` to the
  baseline `(arch, variables)`. Without fine-tuning (`finetune_epochs=0`)
  this is the model of every checkpoint of the run; with it, the
  architectures agree and the variables are those of the edits alone.
  """
  edits = [
    surgery.Edit.from_dict(rec['edit']) for rec in results['iterations'][:upto]
  ]
  return surgery.replay(arch, variables, edits)


# --- The run ------------------------------------------------------------------


def _state_tree(state: train.TrainState) -> dict[str, Any]:
  return {
    'step': state.step,
    'params': state.params,
    'batch_stats': state.batch_stats,
    'opt_state': state.opt_state,
  }


def _variables(state: train.TrainState) -> dict[str, Any]:
  if not state.batch_stats:  # a family without BatchNorm
    return {'params': state.params}
  return {'params': state.params, 'batch_stats': state.batch_stats}


class _Writer:
  """TensorBoard scalars through tensorboardX (no TensorFlow needed).

  Only process 0 writes; on other processes of a multi-host run every call
  does nothing.
  """

  def __init__(self, logdir: str, prefix: str = ''):
    import tensorboardX

    self._tb = None
    if jax.process_index() == 0:
      self._tb = tensorboardX.SummaryWriter(logdir)
    self.prefix = prefix

  def with_prefix(self, prefix: str) -> _Writer:
    child = object.__new__(_Writer)
    child._tb, child.prefix = self._tb, prefix
    return child

  def write_scalars(self, step: int, scalars: dict[str, Any]) -> None:
    if self._tb is None:
      return
    for k, v in scalars.items():
      if isinstance(v, (int, float, np.number)) and np.isfinite(v):
        self._tb.add_scalar(f'{self.prefix}{k}', float(v), int(step))
    self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


@dataclasses.dataclass
class Classifier:
  """The classifier task (`lpjax.run.loop.Task`): train or load the
  baseline, fine-tune after every edit, measure test accuracy and FLOPs.

  Constructing it checks the config and opens the dataset; nothing is
  written until `lpjax.run.loop.run` starts the run.
  """

  config: ml_collections.ConfigDict
  workdir: str

  name = 'main'
  models_key = 'iterations'
  free = ()

  def __post_init__(self):
    try:
      self._check_and_load()
    except (KeyError, ValueError) as e:
      message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
      raise errors.ConfigError(message) from e
    self.workdir = os.path.abspath(self.workdir)
    self.provides = provides(self.config)
    self.mesh = sharding.make_mesh(
      sharding.data_devices(batch_sizes(self.config), self._macs())
    )
    p = self.config.prune
    self.scoring_mesh = (
      sharding.auto_mesh(p.calibration_examples, p.data_batch_size)
      if sharding.defaulted()
      else self.mesh
    )
    self.steps_per_epoch = self.dataset.steps_per_epoch(
      self.config.train.batch_size
    )
    self._writer = None
    self._calibration = None
    self._holdout_inputs = {}  # n -> inputs: read once, not every step

  def _check_and_load(self):
    """Every check of the config that can run before any work."""
    c = self.config
    check_config(c)
    self.dataset = data.load(
      c.dataset,
      data_dir=c.data_dir or None,
      manual_dir=c.manual_dir or None,
      normalization=c.normalization or None,
      seed=c.seed,
      synthetic=c.synthetic.to_dict() if c.dataset == 'synthetic' else None,
      holdout=c.holdout,
    )
    self.info = self.dataset.info
    check_calibration(c, self.dataset)
    hp = method_hparams(c)
    wanted = hp.get('arbitration_examples', 0)  # methods on the holdout
    if c.holdout > 0 and wanted > self.dataset.num_examples('holdout'):
      raise ValueError(
        f'prune.{c.prune.criterion}.arbitration_examples={wanted} is more '
        f'than the {self.dataset.num_examples("holdout")} holdout examples; '
        'use at most that, or 0 (all), or a larger --config.holdout.'
      )
    if c.baseline.source == 'train':
      # Models from a file are checked once loaded (`_load_baseline`).
      check_target(c, self._new_arch(), self.info.image_shape)

  @property
  def writer(self) -> _Writer:
    if self._writer is None:  # created with the run, not before its checks
      self._writer = _Writer(os.path.join(self.workdir, 'tb'))
    return self._writer

  # --- Pieces ---

  def _new_arch(self) -> arch_lib.Arch:
    return models.arch_from_config(
      self.config, self.info.num_classes, self.info.image_shape
    )

  def _macs(self) -> int | None:
    """The config's model's MACs per example, for the default device split
    (`sharding.data_devices`); None where the config's model fields build
    no model (then one device under the default)."""
    try:
      return flops.cost(self._new_arch(), self.info.image_shape).macs
    except (KeyError, ValueError):
      return None

  def _tx(self, epochs: int, learning_rate: float):
    t = self.config.train
    total = max(1, epochs * self.steps_per_epoch)
    return train.make_optimizer(
      learning_rate=learning_rate,
      total_steps=total,
      momentum=t.momentum,
      nesterov=t.nesterov,
      schedule=t.schedule,
      warmup_steps=min(t.warmup_epochs * self.steps_per_epoch, total - 1),
    )

  def _new_state(self, arch, variables, tx) -> train.TrainState:
    return train.create_train_state(models.build_model(arch), variables, tx)

  def _abstract_state(self, arch, tx) -> dict[str, Any]:
    shape = self.info.image_shape
    return jax.eval_shape(
      lambda: _state_tree(
        self._new_state(arch, models.init_variables(arch, 0, shape), tx)
      )
    )

  def _restore(self, ck: checkpointing.Checkpoints, tx):
    arch, meta = ck.restore_meta()
    tree = ck.restore(self._abstract_state(arch, tx))
    state = self._new_state(
      arch, {'params': tree['params'], 'batch_stats': tree['batch_stats']}, tx
    )
    state = state.replace(step=tree['step'], opt_state=tree['opt_state'])
    return arch, state, meta

  def _evaluate(self, arch, variables) -> dict[str, float]:
    state = self._new_state(arch, variables, self._tx(0, 0.0))
    return train.evaluate(
      state,
      self.dataset.eval_batches(
        split='test', batch_size=self.config.train.eval_batch_size
      ),
      mesh=self.mesh,
    )

  def _record(self, arch, variables, **extra):
    ev = self._evaluate(arch, variables)
    shape = self.info.image_shape
    cost = flops.cost(arch, shape)
    red = flops.reduction(arch, self.base_arch or arch, shape)
    rec = {
      'blocks_per_stage': list(arch.blocks_per_stage),
      'widths': {b.name: list(b.widths) for b in arch.blocks},
      'macs': cost.macs,
      'params': cost.params,
      **red,
      'test_accuracy': ev['accuracy'],
      'test_loss': ev['loss'],
    }
    if self.base_accuracy is not None:
      rec['delta_accuracy'] = ev['accuracy'] - self.base_accuracy
    rec.update(extra)
    return rec

  base_arch = None
  base_accuracy = None

  # --- Stages ---

  def stage(
    self,
    name: str,
    *,
    init: Callable[[], tuple[arch_lib.Arch, Any, dict[str, Any]]],
    epochs: int,
    learning_rate: float,
    seed: int,
    finish: Callable[[arch_lib.Arch, train.TrainState, dict[str, Any]], Any],
  ) -> tuple[arch_lib.Arch, train.TrainState, dict[str, Any]]:
    """One resumable unit of training in `workdir/name`.

    Args:
      name: the stage's directory name.
      init: `() -> (arch, variables, meta)`: the model the stage starts from
        and what to record about it; called only if the stage has no
        checkpoint yet (its result is saved as step 0 at once).
      epochs: training epochs (0: the stage only records `init`'s model).
      learning_rate: peak learning rate of the stage's schedule.
      seed: data order and dropout of the stage.
      finish: `(arch, trained state, meta) -> record`, stored with the last
        checkpoint.

    Returns:
      `(arch, state, meta)` with `meta['record']` set, the same whether the
      stage ran now, resumed or was complete already.
    """
    tx = self._tx(epochs, learning_rate)
    ck = checkpointing.Checkpoints(
      os.path.join(self.workdir, name),
      max_to_keep=self.config.checkpoint_max_to_keep,
    )
    with ck:
      if ck.latest_step() is not None:
        arch, state, meta = self._restore(ck, tx)
        if meta.get('complete'):
          logging.info('%s: restored from %s.', name, ck.directory)
          return arch, state, meta
        start = int(meta['epoch'])
        logging.info('%s: resuming training at epoch %d.', name, start)
      else:
        arch, variables, meta = init()
        state = self._new_state(arch, variables, tx)
        start = None
      meta['started'] = time.time()

      def save(step, st, complete):
        m = dict(
          meta, epoch=step, complete=complete, config=self.config.to_dict()
        )
        if complete:
          meta['record'] = m['record'] = finish(arch, st, meta)
        # An epoch's step is written while the next epoch trains; the
        # stage's last step is on disk before the stage returns.
        ck.save(step, state=_state_tree(st), arch=arch, meta=m, wait=complete)

      if start is None:  # `init` ran: keep its result before training.
        save(0, state, complete=epochs == 0)
        start = 0
      if start < epochs:
        t = self.config.train
        every = self.config.get('checkpoint_every_epochs', 1)
        state = train.fit(
          state,
          _Augmenting(self.dataset, t.augment),
          epochs=epochs,
          batch_size=t.batch_size,
          seed=seed,
          weight_decay=t.weight_decay,
          decay=t.weight_decay_mask,
          start_epoch=start,
          mesh=self.mesh,
          on_epoch_end=lambda st, e, _: (
            save(e + 1, st, e + 1 == epochs)
            if e + 1 == epochs or (e + 1) % every == 0
            else None
          ),
          log_every_steps=t.log_every_steps,
          writer=self.writer.with_prefix(f'{name}/'),
          description=name,
        )
      return arch, state, meta

  # --- The task (`lpjax.run.loop.Task`) ---

  def identity(self) -> dict[str, Any]:
    return {}

  def load(self):
    """Trains, loads or resumes the unpruned model (stage `baseline`)."""
    c = self.config

    def init():
      arch, variables = self._load_baseline()
      return arch, variables, {}

    def finish(arch, st, meta):
      return self._record(
        arch,
        _variables(st),
        iteration=0,
        seconds=time.time() - meta['started'],
      )

    arch, state, meta = self.stage(
      'baseline',
      init=init,
      epochs=c.baseline.epochs if c.baseline.source == 'train' else 0,
      learning_rate=c.train.learning_rate,
      seed=c.seed,
      finish=finish,
    )
    self.base_arch, self._baseline = arch, meta['record']
    self.base_accuracy = self._baseline['test_accuracy']
    logging.info(
      'Baseline %s: test accuracy %.4f.', arch.summary(), self.base_accuracy
    )
    return arch, _variables(state)

  def header(self, base) -> dict[str, Any]:
    c = self.config
    return {'model': c.model, 'dataset': c.dataset, 'baseline': self._baseline}

  def schedule(self, base) -> loop.Schedule:
    p, shape = self.config.prune, self.info.image_shape

    def done(arch, removed):
      if not arch.removable():
        return True
      if p.target_blocks and removed >= p.target_blocks:
        return True
      if p.target_flops_reduction:
        red = flops.reduction(arch, self.base_arch, shape)
        return red['flops_reduction'] >= p.target_flops_reduction - 1e-9
      return False

    return loop.Schedule('iterative', done=done)

  def _load_baseline(self):
    c = self.config
    src = c.baseline.source
    shape = self.info.image_shape
    if src == 'keras':
      from lpjax.interop import keras_h5

      arch, variables = keras_h5.load_keras_model(
        c.baseline.keras_json, c.baseline.keras_h5
      )
      arch = dataclasses.replace(
        arch, min_blocks_per_stage=c.min_blocks_per_stage
      )
      check_target(c, arch, shape)
      return arch, variables
    if src == 'checkpoint':
      with checkpointing.Checkpoints(c.baseline.path) as src_ck:
        tx = self._tx(c.baseline.epochs, c.train.learning_rate)
        arch, state, _ = self._restore(src_ck, tx)
      check_target(c, arch, shape)
      return arch, _variables(state)
    arch = self._new_arch()
    return arch, models.init_variables(arch, c.seed, shape)

  def calibration(self):
    if self._calibration is None:
      p = self.config.prune
      self._calibration = self.dataset.calibration(
        num_examples=p.calibration_examples,
        seed=self.config.seed,
        split=p.calibration_split,
      )
    return self._calibration

  def context(self, k: int, arch, variables) -> dict[str, Any]:
    """The classifier's part of iteration `k`'s `methods.Context`."""
    calib = self.calibration()
    model = models.build_model(arch)
    return {
      'inputs': calib['image'],
      'labels': calib['label'],
      'loss_fn': train.eval_loss_fn(
        model.apply, variables.get('batch_stats', {})
      ),
      'data_batch_size': self.config.prune.data_batch_size,
      'mesh': self.scoring_mesh,
      'finetune': functools.partial(self._probe, k),
      'holdout': self._holdout if self.config.holdout > 0 else None,
    }

  def _holdout(self, n: int | None = None) -> np.ndarray:
    """`Context.holdout`: `n` inputs of the holdout split (all if None)."""
    available = self.dataset.num_examples('holdout')
    if n is not None and n > available:
      raise ValueError(
        f'{n} holdout examples asked for; the holdout split has {available}.'
      )
    n = n or available
    if n not in self._holdout_inputs:
      self._holdout_inputs[n] = self.dataset.calibration(
        num_examples=n,
        seed=self.config.seed,
        split='holdout',
        per_class=False,
      )['image']
    return self._holdout_inputs[n]

  def _probe(self, k, name, arch, variables, *, epochs=None):
    """`Context.finetune`: trains a probe child as stage `iter_<k>_<name>`."""
    p = self.config.prune
    epochs = p.finetune_epochs if epochs is None else epochs
    _, state, _ = self.stage(
      f'iter_{k:03d}_{name}',
      init=lambda: (arch, variables, {}),
      epochs=epochs,
      learning_rate=p.finetune_learning_rate,
      seed=self.config.seed + 1000 * k + zlib.crc32(name.encode()) % 997,
      finish=lambda *_: {},
    )
    return _variables(state)

  def adapt(self, k, make):
    """Fine-tunes the edited model of iteration `k` (stage `iter_<k>`)."""
    p = self.config.prune

    def init():
      arch, variables = make()
      before = self._evaluate(arch, variables)['accuracy']
      return arch, variables, {'accuracy_before_finetune': before}

    arch, state, meta = self.stage(
      f'iter_{k:03d}',
      init=init,
      epochs=p.finetune_epochs,
      learning_rate=p.finetune_learning_rate,
      seed=self.config.seed + 1000 * k,
      finish=lambda arch, st, meta: {
        'seconds_finetune': time.time() - meta['started']
      },
    )
    extra = {
      'accuracy_before_finetune': meta['accuracy_before_finetune'],
      **meta['record'],
    }
    return arch, _variables(state), extra

  def evaluate(self, k, arch, variables, *, decision, removed):
    rec = self._record(
      arch,
      variables,
      iteration=k,
      removed=decision['removed'],
      edit=decision['edit'],
      scores=decision['scores'],
      diagnostics=decision.get('diagnostics', {}),
      seconds_scoring=decision['seconds'],
    )
    self.writer.with_prefix('prune/').write_scalars(
      k,
      {
        n: rec[n]
        for n in ('test_accuracy', 'flops_reduction', 'params_reduction')
      },
    )
    logging.info(
      'Iteration %d: removed %s -> %s, FLOPs -%.2f%%, accuracy %.4f '
      '(%+.2f pp).',
      k,
      rec['removed'],
      rec['blocks_per_stage'],
      rec['flops_reduction'],
      rec['test_accuracy'],
      100 * rec['delta_accuracy'],
    )
    return rec

  def finish(self, results, base, save) -> None:
    self.writer.close()


class _Augmenting:
  """The dataset with the config's augmentation switch bound."""

  def __init__(self, dataset, augment: bool):
    self._dataset, self._augment = dataset, augment

  def train_batches(self, *, batch_size, epoch, seed):
    return self._dataset.train_batches(
      batch_size=batch_size, epoch=epoch, seed=seed, augment=self._augment
    )

  def steps_per_epoch(self, batch_size):
    return self._dataset.steps_per_epoch(batch_size)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs or resumes the classifier pruning run of `config` in `workdir`."""
  return loop.run(Classifier(config, workdir), os.path.abspath(workdir))
