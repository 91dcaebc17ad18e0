"""The pruning run: baseline -> {score, remove, fine-tune, evaluate}* -> report.

Layout of a run's workdir:

* `baseline/`: orbax checkpoints of the unpruned model (one per training
  epoch while it trains; the last one is marked complete);
* `iter_001/`, `iter_002/`, ...: one directory per pruning iteration. Step 0
  is saved right after surgery (with the criterion's scores and the removed
  block), step `e` after fine-tuning epoch `e`; the last is marked complete
  and carries the iteration's record;
* `results.json`, `report.md`, `*.png`: derived from the checkpoints'
  records after every iteration;
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
import json
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from lpjax import arch as arch_lib
from lpjax import (
  checkpointing,
  criteria,
  flops,
  input_pipeline,
  models,
  surgery,
  train,
)
from lpjax import report as report_lib

SOURCES = ('train', 'checkpoint', 'keras')


# --- Configuration checks -----------------------------------------------------


def build_arch(
  config: ml_collections.ConfigDict, num_classes: int
) -> arch_lib.Arch:
  """The unpruned `Arch` a config asks for (source 'train' or 'checkpoint')."""
  if config.style not in arch_lib.STYLES:
    raise KeyError(
      f'Unknown style {config.style!r}; valid styles: '
      f'{sorted(arch_lib.STYLES)}.'
    )
  kwargs: dict[str, Any] = dict(
    num_classes=num_classes,
    style=arch_lib.STYLES[config.style],
    min_blocks_per_stage=config.min_blocks_per_stage,
  )
  if config.width:
    kwargs['width'] = config.width
  if config.blocks_per_stage:
    kwargs['blocks_per_stage'] = tuple(config.blocks_per_stage)
  return arch_lib.get_arch(config.model, **kwargs)


# Integer fields and their least valid value.
_COUNTS = {
  'train.batch_size': 1,
  'train.eval_batch_size': 1,
  'baseline.epochs': 0,
  'prune.calibration_examples': 1,
  'prune.data_batch_size': 1,
  'prune.candidate_chunk': 0,
  'prune.finetune_epochs': 0,
}


def check_config(config: ml_collections.ConfigDict) -> None:
  """Fails fast on names and targets that cannot work, before any work.

  Raises:
    KeyError: unknown criterion, model, dataset or style (listing valid ones).
    ValueError: a bad count (batch size, epochs, ...), a bad baseline
      source or a target beyond the floor.
  """
  criteria.get_criterion(config.prune.criterion)
  for field, least in _COUNTS.items():
    group, key = field.split('.')
    value = config[group][key]
    if not isinstance(value, int) or value < least:
      raise ValueError(
        f'{field} must be an integer >= {least}; got {value!r}. '
        f'Set it with --config.{field}=N.'
      )
  if config.dataset not in input_pipeline.DATASETS:
    raise KeyError(
      f'Unknown dataset {config.dataset!r}; valid datasets: '
      f'{list(input_pipeline.DATASETS)}.'
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
  if config.baseline.source == 'train':
    # Models from a file are checked once loaded (`_load_baseline`).
    check_target(config, build_arch(config, num_classes=10))


def check_target(
  config: ml_collections.ConfigDict, arch: arch_lib.Arch
) -> None:
  """Raises if the pruning target is beyond what the floor allows."""
  p = config.prune
  most = arch.max_removable()
  if p.target_blocks < 0 or p.target_flops_reduction < 0:
    raise ValueError('Pruning targets must be >= 0 (0 = prune to the floor).')
  if p.target_blocks > most:
    raise ValueError(
      f'prune.target_blocks={p.target_blocks} is beyond the floor: '
      f'{arch.summary()} keeps >= {arch.min_blocks_per_stage} blocks per '
      f'stage, so at most {most} blocks can be removed.'
    )
  if p.target_flops_reduction:
    floor = arch.without(
      [
        b.name
        for s in arch.stages
        for b in s.blocks[arch.min_blocks_per_stage :]
      ]
    )
    best = flops.reduction(floor, arch)['flops_reduction']
    if p.target_flops_reduction > best + 1e-9:
      raise ValueError(
        f'prune.target_flops_reduction={p.target_flops_reduction}% is '
        f'beyond the floor: removing every removable block of '
        f'{arch.summary()} reduces FLOPs by {best:.2f}% at most.'
      )


# --- The run ------------------------------------------------------------------


def _state_tree(state: train.TrainState) -> dict[str, Any]:
  return {
    'step': state.step,
    'params': state.params,
    'batch_stats': state.batch_stats,
    'opt_state': state.opt_state,
  }


def _variables(state: train.TrainState) -> dict[str, Any]:
  return {'params': state.params, 'batch_stats': state.batch_stats}


def _write_json(path: str, obj: Any) -> None:
  tmp = f'{path}.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)


class _Writer:
  """TensorBoard scalars through tensorboardX (no TensorFlow needed)."""

  def __init__(self, logdir: str, prefix: str = ''):
    import tensorboardX

    self._tb = tensorboardX.SummaryWriter(logdir)
    self.prefix = prefix

  def with_prefix(self, prefix: str) -> _Writer:
    child = object.__new__(_Writer)
    child._tb, child.prefix = self._tb, prefix
    return child

  def write_scalars(self, step: int, scalars: dict[str, Any]) -> None:
    for k, v in scalars.items():
      if isinstance(v, (int, float, np.number)) and np.isfinite(v):
        self._tb.add_scalar(f'{self.prefix}{k}', float(v), int(step))
    self._tb.flush()

  def close(self) -> None:
    self._tb.close()


@dataclasses.dataclass
class Pipeline:
  """One pruning run in one workdir; `run()` executes or resumes it."""

  config: ml_collections.ConfigDict
  workdir: str

  def __post_init__(self):
    check_config(self.config)
    self.workdir = os.path.abspath(self.workdir)
    os.makedirs(self.workdir, exist_ok=True)
    c = self.config
    self.dataset = input_pipeline.load(
      c.dataset,
      data_dir=c.data_dir or None,
      manual_dir=c.manual_dir or None,
      normalization=c.normalization or None,
      seed=c.seed,
      synthetic=c.synthetic.to_dict() if c.dataset == 'synthetic' else None,
      holdout=c.holdout,
    )
    self.info = self.dataset.info
    self.mesh = train.make_mesh()
    self.steps_per_epoch = self.dataset.steps_per_epoch(c.train.batch_size)
    self.writer = _Writer(os.path.join(self.workdir, 'tb'))
    self._calibration = None
    _write_json(os.path.join(self.workdir, 'config.json'), c.to_dict())

  # --- Pieces ---

  def _tx(self, epochs: int, learning_rate: float):
    t = self.config.train
    return train.make_optimizer(
      learning_rate=learning_rate,
      total_steps=max(1, epochs * self.steps_per_epoch),
      momentum=t.momentum,
      nesterov=t.nesterov,
      schedule=t.schedule,
      warmup_steps=t.warmup_epochs * self.steps_per_epoch,
    )

  def _baseline_tx(self):
    c = self.config
    return self._tx(c.baseline.epochs, c.train.learning_rate)

  def _finetune_tx(self):
    p = self.config.prune
    return self._tx(p.finetune_epochs, p.finetune_learning_rate)

  def _new_state(self, arch, variables, tx) -> train.TrainState:
    return train.create_train_state(models.build_model(arch), variables, tx)

  def _abstract_state(self, arch, tx) -> dict[str, Any]:
    shape = self.info.image_shape
    return jax.eval_shape(
      lambda: _state_tree(
        self._new_state(
          arch,
          models.init_variables(arch, 0, shape),
          tx,
        )
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

  def _evaluate(self, state) -> dict[str, float]:
    return train.evaluate(
      state,
      self.dataset.eval_batches(
        split='test', batch_size=self.config.train.eval_batch_size
      ),
      mesh=self.mesh,
    )

  def _record(self, arch, state, base_arch, base_acc=None, **extra):
    ev = self._evaluate(state)
    cost = flops.cost(arch, self.info.image_shape)
    red = flops.reduction(arch, base_arch, self.info.image_shape)
    rec = {
      'blocks_per_stage': list(arch.blocks_per_stage),
      'macs': cost.macs,
      'params': cost.params,
      **red,
      'test_accuracy': ev['accuracy'],
      'test_loss': ev['loss'],
    }
    if base_acc is not None:
      rec['delta_accuracy'] = ev['accuracy'] - base_acc
    rec.update(extra)
    return rec

  def _fit(
    self, state, *, epochs, start_epoch, seed, ck, arch, meta, finish, prefix
  ):
    """Fine-tunes/trains with a checkpoint after every epoch."""

    def on_epoch_end(st, epoch, metrics):
      m = dict(meta, epoch=epoch + 1, complete=False)
      if epoch + 1 == epochs:
        m = dict(m, complete=True, record=finish(st))
      ck.save(epoch + 1, state=_state_tree(st), arch=arch, meta=m)
      if m['complete']:
        meta['record'] = m['record']

    t = self.config.train
    return train.fit(
      state,
      _Augmenting(self.dataset, t.augment),
      epochs=epochs,
      batch_size=t.batch_size,
      seed=seed,
      weight_decay=t.weight_decay,
      start_epoch=start_epoch,
      mesh=self.mesh,
      on_epoch_end=on_epoch_end,
      log_every_steps=t.log_every_steps,
      writer=self.writer.with_prefix(prefix),
      description=prefix.rstrip('/'),
    )

  # --- Stages ---

  def baseline(self):
    """Trains, loads or resumes the unpruned model: `(arch, state, record)`."""
    c = self.config
    tx = self._baseline_tx()
    ck = checkpointing.Checkpoints(
      os.path.join(self.workdir, 'baseline'),
      max_to_keep=c.checkpoint_max_to_keep,
    )
    with ck:
      if ck.latest_step() is not None:
        arch, state, meta = self._restore(ck, tx)
        if meta.get('complete'):
          logging.info('Baseline: restored from %s.', ck.directory)
          return arch, state, meta['record']
        start = int(meta['epoch'])
        logging.info('Baseline: resuming training at epoch %d.', start)
      else:
        arch, variables = self._load_baseline()
        state = self._new_state(arch, variables, tx)
        start = 0
      meta = {'started': time.time()}
      epochs = c.baseline.epochs if c.baseline.source == 'train' else 0

      def finish(st):
        return self._record(
          arch,
          st,
          arch,
          iteration=0,
          seconds=time.time() - meta['started'],
        )

      if start < epochs:
        state = self._fit(
          state,
          epochs=epochs,
          start_epoch=start,
          seed=c.seed,
          ck=ck,
          arch=arch,
          meta=meta,
          finish=finish,
          prefix='baseline/',
        )
      else:
        meta['record'] = finish(state)
        ck.save(
          0,
          state=_state_tree(state),
          arch=arch,
          meta=dict(meta, epoch=0, complete=True),
        )
      return arch, state, meta['record']

  def _load_baseline(self):
    c = self.config
    src = c.baseline.source
    if src == 'keras':
      from lpjax.interop import keras_h5

      arch, variables = keras_h5.load_keras_model(
        c.baseline.keras_json, c.baseline.keras_h5
      )
      arch = dataclasses.replace(
        arch, min_blocks_per_stage=c.min_blocks_per_stage
      )
      check_target(c, arch)
      return arch, variables
    if src == 'checkpoint':
      with checkpointing.Checkpoints(c.baseline.path) as src_ck:
        arch, state, _ = self._restore(src_ck, self._baseline_tx())
      check_target(c, arch)
      return arch, _variables(state)
    arch = build_arch(c, self.info.num_classes)
    variables = models.init_variables(arch, c.seed, self.info.image_shape)
    return arch, variables

  def calibration(self):
    if self._calibration is None:
      p = self.config.prune
      self._calibration = self.dataset.calibration(
        num_examples=p.calibration_examples,
        seed=self.config.seed,
        split=p.calibration_split,
      )
    return self._calibration

  def iteration(self, k, parent_arch, parent_state, base_arch, base_acc):
    """Pruning iteration `k` (1-based), resumed if it was started."""
    c, p = self.config, self.config.prune
    tx = self._finetune_tx()
    ck = checkpointing.Checkpoints(
      os.path.join(self.workdir, f'iter_{k:03d}'),
      max_to_keep=c.checkpoint_max_to_keep,
    )
    with ck:
      if ck.latest_step() is not None:
        arch, state, meta = self._restore(ck, tx)
        if meta.get('complete'):
          return arch, state, meta['record']
        start = int(meta['epoch'])
        logging.info(
          'Iteration %d: resuming fine-tuning at epoch %d.', k, start
        )
      else:
        t0 = time.time()
        calib = self.calibration()
        scores = criteria.get_criterion(p.criterion)(
          criteria.Context(
            arch=parent_arch,
            variables=_variables(parent_state),
            images=calib['image'],
            labels=calib['label'],
            seed=c.seed,
            iteration=k,
            representation=p.representation,
            data_batch_size=p.data_batch_size,
            candidate_chunk=p.candidate_chunk or None,
            mesh=self.mesh,
          )
        )
        allowed = parent_arch.removable()
        chosen = min(allowed, key=lambda name: scores[name])
        seconds_scoring = time.time() - t0
        logging.info(
          'Iteration %d: %s scores %s; removing %s (%.1fs).',
          k,
          p.criterion,
          {n: round(s, 6) for n, s in scores.items()},
          chosen,
          seconds_scoring,
        )
        arch, variables = surgery.remove_blocks(
          parent_arch, _variables(parent_state), [chosen]
        )
        state = self._new_state(arch, variables, tx)
        meta = {
          'removed': [chosen],
          'scores': scores,
          'accuracy_before_finetune': self._evaluate(state)['accuracy'],
          'seconds_scoring': seconds_scoring,
        }
        ck.save(
          0,
          state=_state_tree(state),
          arch=arch,
          meta=dict(meta, epoch=0, complete=False),
        )
        start = 0
      meta['started'] = time.time()

      def finish(st):
        return self._record(
          arch,
          st,
          base_arch,
          base_acc,
          iteration=k,
          removed=meta['removed'],
          scores=meta['scores'],
          accuracy_before_finetune=meta['accuracy_before_finetune'],
          seconds_scoring=meta['seconds_scoring'],
          seconds_finetune=time.time() - meta['started'],
        )

      if p.finetune_epochs > 0:
        state = self._fit(
          state,
          epochs=p.finetune_epochs,
          start_epoch=start,
          seed=c.seed + 1000 * k,
          ck=ck,
          arch=arch,
          meta=meta,
          finish=finish,
          prefix=f'iter_{k:03d}/',
        )
      else:
        meta['record'] = finish(state)
        ck.save(
          1,
          state=_state_tree(state),
          arch=arch,
          meta=dict(meta, epoch=0, complete=True),
        )
      return arch, state, meta['record']

  def _done(self, arch, base_arch, removed) -> bool:
    p = self.config.prune
    if not arch.removable():
      return True
    if p.target_blocks and removed >= p.target_blocks:
      return True
    if p.target_flops_reduction:
      red = flops.reduction(arch, base_arch, self.info.image_shape)
      return red['flops_reduction'] >= p.target_flops_reduction - 1e-9
    return False

  def run(self) -> dict[str, Any]:
    """Runs (or resumes) the whole pipeline; returns the results dict."""
    c = self.config
    base_arch, state, base_rec = self.baseline()
    logging.info(
      'Baseline %s: test accuracy %.4f.',
      base_arch.summary(),
      base_rec['test_accuracy'],
    )
    results = {
      'config': c.to_dict(),
      'criterion': c.prune.criterion,
      'model': c.model,
      'dataset': c.dataset,
      'baseline': base_rec,
      'iterations': [],
    }
    self._save_results(results)
    arch, k = base_arch, 0
    while not self._done(arch, base_arch, k):
      k += 1
      arch, state, rec = self.iteration(
        k, arch, state, base_arch, base_rec['test_accuracy']
      )
      results['iterations'].append(rec)
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
      self._save_results(results)
    self.writer.close()
    return results

  def _save_results(self, results):
    _write_json(os.path.join(self.workdir, 'results.json'), results)
    report_lib.write_report(self.workdir)


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
  """Runs or resumes the pruning pipeline of `config` in `workdir`."""
  return Pipeline(config, workdir).run()
