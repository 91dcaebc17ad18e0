"""Training and evaluation of any model family: SGD, L2, data parallelism.

The recipe follows the papers' Keras models: SGD with Nesterov momentum 0.9,
the learning rate divided by 10 at 50 % and 75 % of the run, and an L2 penalty
`weight_decay * sum(w**2)` in the loss. Which weights the penalty covers is a
mask (`DECAY_MASKS`): the papers' `'conv_kernels'` (Keras'
`kernel_regularizer=l2(1e-4)` on convolutions; Dense layers and BatchNorm
not regularised) or `'kernels'` (every kernel, Dense included: what a
transformer wants).

Models with and without BatchNorm train alike (`batch_stats` is an empty
tree for the latter), and dropout draws from a `'dropout'` RNG derived from
(seed, step), so a resumed run draws the same masks.

Steps are module-level pure functions (`loss_fn`, `train_step`,
`eval_step`). They are jitted once per (mesh, loss settings) by
`jit_train_step` / `jit_eval_step`
with explicit shardings (`lpjax.sharding`): the state is replicated over a
one-axis `'data'` mesh of every device and the batch is split along its
first axis. Under
`jax.jit` this is plain data parallelism: gradients and BatchNorm batch
statistics are computed over the global batch, so results match a single
device up to float reduction order.

`fit` runs epochs of a dataset's `train_batches`, and `evaluate` aggregates
exact sums over padded, masked eval batches.

Several processes (multi-host): every host batch is process-local (what
`lpjax.data.Dataset` yields; `lpjax.sharding` assembles the global array),
the state is replicated on every device and the step's metrics are global,
so every process sees the same numbers.
"""

from __future__ import annotations

import functools
import itertools
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lpjax import sharding
from lpjax.sharding import (
  DATA_AXIS,
  make_mesh,
  replicate,
  shard_batch,
)

SCHEDULES = ('step', 'cosine', 'constant')

Batch = Mapping[str, Any]
Metrics = dict[str, Any]


class TrainState(train_state.TrainState):
  """Train state with BatchNorm statistics.

  Attributes:
    batch_stats: the model's `batch_stats` collection (`{}` without
      BatchNorm).
  """

  batch_stats: Any = None


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN or infinite loss or gradient."""


def create_train_state(
  model: nn.Module,
  variables: Mapping[str, Any],
  tx: optax.GradientTransformation,
) -> TrainState:
  """A fresh `TrainState` at step 0.

  The optimizer state is always new (`tx.init(params)`), e.g. after surgery
  that removed blocks: momentum buffers are never carried over. Everything
  stays where `variables` are (e.g. host numpy); `fit` places it.

  Args:
    model: a module from `lpjax.models.build_model`.
    variables: its `{'params', 'batch_stats'}`.
    tx: the optimizer, e.g. from `make_optimizer`.

  Returns:
    The train state.
  """
  state = TrainState.create(
    apply_fn=model.apply,
    params=variables['params'],
    tx=tx,
    batch_stats=variables.get('batch_stats', {}),
  )
  # A strongly typed int32 step, as a restored checkpoint has: a weakly typed
  # Python 0 would make the first resumed step compile again.
  return state.replace(step=np.zeros((), np.int32))


# --- Optimizer ----------------------------------------------------------------


def make_schedule(
  *,
  learning_rate: float,
  total_steps: int,
  schedule: str = 'step',
  boundaries: Sequence[float] = (0.5, 0.75),
  decay_factor: float = 0.1,
  warmup_steps: int = 0,
) -> optax.Schedule:
  """The learning rate as a function of the 0-based step.

  Args:
    learning_rate: the peak (initial) learning rate.
    total_steps: steps in the whole run.
    schedule: `'step'` (multiply by `decay_factor` at each boundary),
      `'cosine'` (to zero at `total_steps`) or `'constant'`.
    boundaries: for `'step'`, fractions of `total_steps` in (0, 1).
    decay_factor: for `'step'`, the factor applied at each boundary.
    warmup_steps: linear warmup from 0 over this many steps. Step boundaries
      stay at their absolute positions; the cosine spans the steps after the
      warmup.

  Returns:
    An optax schedule.

  Raises:
    ValueError: for an unknown schedule or invalid arguments.
  """
  if schedule not in SCHEDULES:
    raise ValueError(
      f'Unknown learning-rate schedule {schedule!r}; valid schedules: '
      f'{SCHEDULES}.'
    )
  if total_steps < 1:
    raise ValueError(f'total_steps must be positive; got {total_steps}.')
  if not 0 <= warmup_steps < total_steps:
    raise ValueError(
      f'warmup_steps must be in [0, total_steps={total_steps}); got '
      f'{warmup_steps}.'
    )
  if schedule == 'step':
    if any(not 0 < b < 1 for b in boundaries):
      raise ValueError(
        f'Step boundaries are fractions of the run in (0, 1); got '
        f'{tuple(boundaries)}.'
      )
    scales: dict[int, float] = {}
    for b in boundaries:
      step = round(b * total_steps)
      scales[step] = scales.get(step, 1.0) * decay_factor
    main = optax.piecewise_constant_schedule(learning_rate, scales)
  elif schedule == 'cosine':
    main = optax.cosine_decay_schedule(
      learning_rate, total_steps - warmup_steps
    )
  else:
    main = optax.constant_schedule(learning_rate)
  if not warmup_steps:
    return main
  if schedule == 'step':
    # join_schedules hands later schedules `step - warmup_steps`.
    absolute = main
    main = lambda count: absolute(count + warmup_steps)  # noqa: E731
  warmup = optax.linear_schedule(0.0, learning_rate, warmup_steps)
  return optax.join_schedules([warmup, main], [warmup_steps])


def make_optimizer(
  *,
  learning_rate: float,
  total_steps: int,
  momentum: float = 0.9,
  nesterov: bool = True,
  schedule: str = 'step',
  boundaries: Sequence[float] = (0.5, 0.75),
  decay_factor: float = 0.1,
  warmup_steps: int = 0,
) -> optax.GradientTransformation:
  """SGD with (Nesterov) momentum and a learning-rate schedule.

  The papers train for 200 epochs with the learning rate divided by 10 at
  epochs 100 and 150: the default `'step'` schedule. See `make_schedule` for
  the schedule arguments. The L2 penalty is part of the loss (`train_step`),
  not of the optimizer.

  Args:
    learning_rate: the initial learning rate.
    total_steps: steps in the whole run (epochs * steps per epoch).
    momentum: momentum coefficient.
    nesterov: use Nesterov momentum.
    schedule: `'step'`, `'cosine'` or `'constant'`.
    boundaries: for `'step'`, fractions of `total_steps`.
    decay_factor: for `'step'`, the factor at each boundary.
    warmup_steps: linear warmup steps.

  Returns:
    The optax transformation.

  Raises:
    ValueError: for an unknown schedule (listing the valid ones).
  """
  lr = make_schedule(
    learning_rate=learning_rate,
    total_steps=total_steps,
    schedule=schedule,
    boundaries=boundaries,
    decay_factor=decay_factor,
    warmup_steps=warmup_steps,
  )
  return optax.sgd(lr, momentum=momentum or None, nesterov=nesterov)


# --- Steps --------------------------------------------------------------------


DECAY_MASKS = ('conv_kernels', 'kernels')


def decay_mask(params: Any, which: str = 'conv_kernels') -> Any:
  """Which leaves of `params` the L2 penalty covers (a tree of bools).

  Args:
    params: a `params` tree.
    which: `'conv_kernels'`: leaves named `kernel` with 4 dimensions (every
      `nn.Conv` kernel; the papers' Keras models). `'kernels'`: every leaf
      named `kernel` (convolutions and Dense layers, not biases, norms or
      embeddings).

  Raises:
    ValueError: for an unknown mask name, listing the valid ones.
  """
  if which not in DECAY_MASKS:
    raise ValueError(
      f'Unknown weight-decay mask {which!r}; valid masks: {DECAY_MASKS}.'
    )

  def covered(path, leaf):
    kernel = _leaf_name(path) == 'kernel'
    return kernel and (which == 'kernels' or jnp.ndim(leaf) == 4)

  return jax.tree_util.tree_map_with_path(covered, params)


def l2_penalty(params: Any, which: str = 'conv_kernels') -> jax.Array:
  """Sum of squares of the leaves `decay_mask(params, which)` selects.

  Args:
    params: a `params` tree.
    which: a mask name from `DECAY_MASKS` (default: convolution kernels).

  Returns:
    A float32 scalar.
  """
  total = jnp.zeros((), jnp.float32)
  mask = decay_mask(params, which)
  for leaf, on in zip(jax.tree.leaves(params), jax.tree.leaves(mask)):
    if on:
      total += jnp.sum(jnp.square(leaf.astype(jnp.float32)))
  return total


def _leaf_name(path) -> str:
  key = path[-1]
  return str(getattr(key, 'key', getattr(key, 'name', key)))


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(
    logits.astype(jnp.float32), labels
  )


def _variables(params: Any, batch_stats: Any) -> dict[str, Any]:
  if batch_stats:
    return {'params': params, 'batch_stats': batch_stats}
  return {'params': params}


def loss_fn(
  params: Any,
  batch_stats: Any,
  batch: Batch,
  *,
  apply_fn: Callable[..., Any],
  train: bool = True,
  rng: jax.Array | None = None,
  weight_decay: float = 0.0,
  decay: str = 'conv_kernels',
) -> tuple[jax.Array, dict[str, Any]]:
  """`mean cross-entropy + weight_decay * l2_penalty(params, decay)`.

  Args:
    params: the model's `params`.
    batch_stats: its `batch_stats` (`{}` for models without BatchNorm).
    batch: `{'image': [B, ...] inputs, 'label': [B] int32}`.
    apply_fn: the model's `apply`.
    train: training mode (batch statistics, dropout) or eval mode.
    rng: the `'dropout'` key (training mode only; `None`: no dropout RNG).
    weight_decay: the L2 coefficient.
    decay: which weights the penalty covers (`DECAY_MASKS`).

  Returns:
    The total loss and `{'loss': mean cross-entropy, 'l2': unweighted
    penalty, 'logits': [B, classes], 'batch_stats': the updated statistics
    (unchanged in eval mode)}`.
  """
  variables = _variables(params, batch_stats)
  if train:
    rngs = {'dropout': rng} if rng is not None else {}
    logits, updates = apply_fn(
      variables, batch['image'], train=True, rngs=rngs, mutable=['batch_stats']
    )
    batch_stats = updates.get('batch_stats', batch_stats)
  else:
    logits = apply_fn(variables, batch['image'], train=False)
  loss = jnp.mean(_cross_entropy(logits, batch['label']))
  l2 = l2_penalty(params, decay)
  aux = {'loss': loss, 'l2': l2, 'logits': logits, 'batch_stats': batch_stats}
  return loss + weight_decay * l2, aux


def eval_loss_fn(
  apply_fn: Callable[..., Any], batch_stats: Any
) -> Callable[[Any, Batch], jax.Array]:
  """`(params, batch) -> mean cross-entropy` in eval mode, no penalty.

  The loss pruning methods differentiate (e.g. GradNorm): BatchNorm uses its
  running statistics and dropout is off, so gradients do not depend on how
  the calibration data are batched.
  """

  def fn(params: Any, batch: Batch) -> jax.Array:
    return loss_fn(params, batch_stats, batch, apply_fn=apply_fn, train=False)[
      1
    ]['loss']

  return fn


def train_step(
  state: TrainState,
  batch: Batch,
  *,
  weight_decay: float,
  decay: str = 'conv_kernels',
  dropout_seed: int = 0,
) -> tuple[TrainState, Metrics]:
  """One SGD step on `loss_fn` (cross-entropy + L2).

  Args:
    state: the train state.
    batch: `{'image': [B, ...], 'label': [B] int32}`.
    weight_decay: the L2 coefficient (the papers: 1e-4).
    decay: which weights the penalty covers (`DECAY_MASKS`).
    dropout_seed: the dropout key of step `s` is
      `fold_in(key(dropout_seed), s)`.

  Returns:
    The new state and scalar metrics: `loss` (mean cross-entropy, without
    the penalty), `accuracy`, `l2` (the unweighted penalty, before the step)
    and `grad_norm` (global norm of the total gradient).
  """
  rng = jax.random.fold_in(jax.random.key(dropout_seed), state.step)
  grads, aux = jax.grad(loss_fn, has_aux=True)(
    state.params,
    state.batch_stats,
    batch,
    apply_fn=state.apply_fn,
    train=True,
    rng=rng,
    weight_decay=weight_decay,
    decay=decay,
  )
  state = state.apply_gradients(grads=grads, batch_stats=aux['batch_stats'])
  accuracy = jnp.mean(jnp.argmax(aux['logits'], -1) == batch['label'])
  metrics = {
    'loss': aux['loss'],
    'accuracy': accuracy.astype(jnp.float32),
    'l2': aux['l2'],
    'grad_norm': optax.global_norm(grads),
  }
  return state, metrics


def eval_step(state: TrainState, batch: Batch) -> Metrics:
  """Sums over one eval batch (BatchNorm uses running averages).

  Args:
    state: the train state.
    batch: `{'image': [B, H, W, C], 'label': [B]}` and optionally `'mask'`
      `[B]` (1 for real examples, 0 for padding).

  Returns:
    float32 scalars `correct`, `loss_sum` and `count`, summed over the real
    examples only, so the host can aggregate padded batches exactly.
  """
  logits = state.apply_fn(
    _variables(state.params, state.batch_stats), batch['image'], train=False
  )
  labels = batch['label']
  mask = batch.get('mask')
  if mask is None:
    mask = jnp.ones(labels.shape, jnp.float32)
  mask = mask.astype(jnp.float32)
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  # `where` keeps a NaN in a padded row out of the sum.
  loss = jnp.where(mask > 0, _cross_entropy(logits, labels), 0.0)
  return {
    'correct': jnp.sum(correct * mask),
    'loss_sum': jnp.sum(loss * mask),
    'count': jnp.sum(mask),
  }


@functools.cache
def jit_train_step(
  *,
  weight_decay: float,
  mesh: Mesh,
  decay: str = 'conv_kernels',
  dropout_seed: int = 0,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
  """`train_step` jitted for `mesh`, cached per (mesh, loss settings).

  It compiles once per (model, optimizer, batch shape). The input state is
  not donated, so states handed to callbacks (checkpointers, best-model
  trackers) stay valid.
  """
  replicated = NamedSharding(mesh, P())
  return jax.jit(
    functools.partial(
      train_step,
      weight_decay=float(weight_decay),
      decay=decay,
      dropout_seed=int(dropout_seed),
    ),
    in_shardings=(replicated, NamedSharding(mesh, P(DATA_AXIS))),
    out_shardings=(replicated, replicated),
  )


@functools.cache
def jit_eval_step(*, mesh: Mesh) -> Callable[[TrainState, Batch], Metrics]:
  """`eval_step` jitted for `mesh`, cached per mesh."""
  replicated = NamedSharding(mesh, P())
  return jax.jit(
    eval_step,
    in_shardings=(replicated, NamedSharding(mesh, P(DATA_AXIS))),
    out_shardings=replicated,
  )


# --- Loops --------------------------------------------------------------------


def forward_macs(state: TrainState, images: Any) -> int | None:
  """About the multiply-accumulates of the model's forward pass on one
  example, for the default device split (`sharding.data_devices`).

  Half XLA's cost-analysis FLOPs of the lowered (unoptimised) eval forward
  on one example of `images`' shape; nothing is compiled or run. XLA
  leaves out the taps on a convolution's zero padding, so for CIFAR
  ResNets it is 0.92x `lpjax.flops.cost(arch).macs` on 32x32 images and
  0.69x on the digits' 8x8 (whose last stage is 2x2). None where XLA
  reports no count.

  Args:
    state: the train state (its `apply_fn`, parameters and statistics).
    images: a batch `[B, ...]` (only its shape and dtype are read).
  """
  variables = jax.tree.map(
    lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype),
    _variables(state.params, state.batch_stats),
  )
  x = jax.ShapeDtypeStruct((1, *np.shape(images)[1:]), images.dtype)
  lowered = jax.jit(lambda v, x: state.apply_fn(v, x, train=False)).lower(
    variables, x
  )
  analysis = lowered.cost_analysis()
  if isinstance(analysis, list):  # Older jax returned one dict per device.
    analysis = analysis[0] if analysis else None
  flops = float((analysis or {}).get('flops', 0.0))
  return int(flops / 2) or None


def evaluate(
  state: TrainState, batches: Iterable[Batch], *, mesh: Mesh | None = None
) -> dict[str, Any]:
  """Accuracy and mean loss over eval batches.

  Args:
    state: the train state.
    batches: host batches, e.g. `dataset.eval_batches(batch_size=...)`;
      padded rows carry `mask` 0. With several processes, each passes its
      rows of every global batch (as `eval_batches` yields them), every
      process the same number of batches.
    mesh: the data-parallel mesh (default: `make_mesh` over
      `lpjax.sharding.data_devices` for the first batch's size and the
      model's `forward_macs`, as `fit` chooses).

  Returns:
    `{'accuracy': float, 'loss': float, 'count': int}` over the real examples
    of the global batches (the same on every process).

  Raises:
    ValueError: if there are no (unmasked) examples.
  """
  if mesh is None:
    sizes, macs = {}, None
    if sharding.defaulted():  # one process: the batch is the global one
      batches = iter(batches)
      first = next(batches, None)
      if first is not None:
        batches = itertools.chain([first], batches)
        sizes = {'batch': len(first['image'])}
        macs = forward_macs(state, first['image'])
    mesh = make_mesh(sharding.data_devices(sizes, macs))
  step = jit_eval_step(mesh=mesh)
  state = replicate(state, mesh)
  sums = [step(state, shard_batch(batch, mesh)) for batch in batches]
  correct = loss_sum = count = 0.0
  for s in jax.device_get(sums):
    correct += float(s['correct'])
    loss_sum += float(s['loss_sum'])
    count += float(s['count'])
  if not count:
    raise ValueError('evaluate() got no examples (empty or fully masked).')
  return {
    'accuracy': correct / count,
    'loss': loss_sum / count,
    'count': round(count),
  }


def fit(
  state: TrainState,
  dataset: Any,
  *,
  epochs: int,
  batch_size: int,
  seed: int,
  weight_decay: float,
  start_epoch: int = 0,
  mesh: Mesh | None = None,
  on_epoch_end: Callable[[TrainState, int, Metrics], None] | None = None,
  log_every_steps: int | None = 100,
  decay: str = 'conv_kernels',
  writer: Any = None,
  description: str = 'train',
) -> TrainState:
  """Trains epochs `start_epoch .. epochs - 1`.

  Epoch `e` uses `dataset.train_batches(batch_size=batch_size, epoch=e,
  seed=seed)`, so a run resumed with the state saved after epoch `e` and
  `start_epoch=e + 1` reproduces an uninterrupted run exactly. No state is
  donated: the caller's and the callbacks' states stay valid.

  Args:
    state: the train state to start from.
    dataset: any object with `train_batches(*, batch_size, epoch, seed)`
      (yielding `{'image', 'label'}` host batches: with P processes, only
      this process's `batch_size / P` rows of each global batch, as
      `lpjax.data.Dataset` does) and, optionally,
      `steps_per_epoch(batch_size)` (for progress and ETA).
    epochs: the epoch to stop before (total epochs of the run).
    batch_size: global batch size; a multiple of the mesh's device count
      (and so of the process count).
    seed: data-order and dropout seed.
    weight_decay: L2 coefficient.
    start_epoch: the first epoch to run.
    mesh: the data-parallel mesh (default: `make_mesh` over
      `lpjax.sharding.data_devices` for `batch_size` and the model's
      `forward_macs` on the first batch: every device where the step is
      large enough to gain from the split under lpjax's default devices).
    on_epoch_end: called as `on_epoch_end(state, epoch, metrics)` after each
      epoch, e.g. to checkpoint.
    log_every_steps: log progress every this many steps (None or 0: only
      once per epoch).
    decay: which weights the L2 penalty covers (`DECAY_MASKS`).
    writer: optional `clu.metric_writers.MetricWriter` (or anything with
      `write_scalars(step, scalars)`); the epoch metrics are written at the
      global step, under their own names (`loss`, `eval_accuracy`, ...).
    description: a name for log lines.

  Returns:
    The trained state.

  Raises:
    NonFiniteLossError: if a loss or gradient becomes NaN or infinite (lr too
      high or bad data); raised before `on_epoch_end` sees that epoch.
    ValueError: if an epoch yields no batches, `batch_size` is not divisible
      by the process count, or a batch has other than `batch_size / P` rows.
  """
  first_epoch = None  # `start_epoch`'s batches where the first was read
  if mesh is None:
    macs = None
    if sharding.defaulted() and start_epoch < epochs:
      first_epoch = iter(
        dataset.train_batches(
          batch_size=batch_size, epoch=start_epoch, seed=seed
        )
      )
      first = next(first_epoch, None)
      if first is not None:
        macs = forward_macs(state, first['image'])
        first_epoch = itertools.chain([first], first_epoch)
    mesh = make_mesh(sharding.data_devices({'batch_size': batch_size}, macs))
  processes = jax.process_count()
  if batch_size % processes:
    raise ValueError(
      f'The global batch size {batch_size} is not divisible by the '
      f'{processes} processes; use a multiple of {processes}.'
    )
  local_rows = batch_size // processes
  step_fn = jit_train_step(
    weight_decay=weight_decay, mesh=mesh, decay=decay, dropout_seed=seed
  )
  state = replicate(state, mesh)
  steps_per_epoch = None
  if hasattr(dataset, 'steps_per_epoch'):
    steps_per_epoch = int(dataset.steps_per_epoch(batch_size))
  logging.info(
    '%s: epochs %d..%d, batch %d over %d device(s) in %d process(es), %s '
    'steps/epoch.',
    description,
    start_epoch,
    epochs - 1,
    batch_size,
    mesh.size,
    processes,
    steps_per_epoch if steps_per_epoch is not None else '?',
  )
  epoch_times = []
  for epoch in range(start_epoch, epochs):
    t0 = time.perf_counter()
    tracker = _EpochTracker(description, epoch, steps_per_epoch, t0)
    pending = None  # The previous step's metrics, checked one step late.
    if epoch == start_epoch and first_epoch is not None:
      batches = first_epoch
    else:
      batches = dataset.train_batches(
        batch_size=batch_size, epoch=epoch, seed=seed
      )
    for batch in batches:
      _check_rows(batch, local_rows, batch_size, processes)
      state, metrics = step_fn(state, shard_batch(batch, mesh))
      if pending is not None:
        tracker.add(jax.device_get(pending), log_every_steps)
      pending = metrics
    if pending is None:
      raise ValueError(
        f'{description}: epoch {epoch} yielded no batches (batch size '
        f'{batch_size} larger than the training set?).'
      )
    tracker.add(jax.device_get(pending), None)
    epoch_time = time.perf_counter() - t0
    epoch_times.append(epoch_time)
    metrics = tracker.summary(epoch_time)
    eta = (epochs - epoch - 1) * float(np.median(epoch_times))
    logging.info(
      '%s: epoch %d/%d done in %.1fs (%.2f steps/s): %s; ETA %s.',
      description,
      epoch + 1,
      epochs,
      epoch_time,
      metrics['steps_per_sec'],
      _format({k: v for k, v in metrics.items() if k not in _TIMING_KEYS}),
      _hms(eta),
    )
    if writer is not None:
      scalars = {
        k: v for k, v in metrics.items() if isinstance(v, (int, float))
      }
      writer.write_scalars(int(jax.device_get(state.step)), scalars)
      if hasattr(writer, 'flush'):
        writer.flush()
    if on_epoch_end is not None:
      on_epoch_end(state, epoch, metrics)
  return state


_TIMING_KEYS = ('steps', 'epoch_time_s', 'steps_per_sec')


def _check_rows(batch: Batch, rows: int, batch_size: int, processes: int):
  """Raises unless every array of `batch` has this process's `rows` rows."""
  for key, value in batch.items():
    n = np.shape(value)[0]
    if n != rows:
      share = f' / {processes} processes' if processes > 1 else ''
      raise ValueError(
        f'The dataset yielded {n} rows (batch[{key!r}]); batch_size='
        f'{batch_size}{share} needs {rows}. With several processes each '
        "yields only its rows of every global batch, as lpjax's Dataset "
        'does: a whole batch on every process would train on duplicated '
        'data.'
      )


class _EpochTracker:
  """Host-side running sums of step metrics; raises on non-finite values."""

  def __init__(self, description, epoch, steps_per_epoch, t0):
    self.description = description
    self.epoch = epoch
    self.steps_per_epoch = steps_per_epoch
    self.t0 = t0
    self.steps = 0
    self.sums: dict[str, float] = {}

  def add(self, metrics: Mapping[str, Any], log_every_steps: int | None):
    step = self.steps
    for key in ('loss', 'grad_norm'):
      value = float(metrics[key])
      if not math.isfinite(value):
        raise NonFiniteLossError(
          f'{self.description}: non-finite {key} ({value}) at epoch '
          f'{self.epoch}, step {step} of the epoch. The learning rate is '
          'probably too high, or the data contain NaN/Inf.'
        )
    for key, value in metrics.items():
      self.sums[key] = self.sums.get(key, 0.0) + float(value)
    self.steps += 1
    if log_every_steps and self.steps % log_every_steps == 0:
      elapsed = time.perf_counter() - self.t0
      rate = self.steps / elapsed
      left = ''
      if self.steps_per_epoch:
        left = f'/{self.steps_per_epoch}, epoch ETA ' + _hms(
          max(self.steps_per_epoch - self.steps, 0) / rate
        )
      logging.info(
        '%s: epoch %d step %d%s (%.2f steps/s): %s',
        self.description,
        self.epoch,
        self.steps,
        left,
        rate,
        _format({k: v / self.steps for k, v in self.sums.items()}),
      )

  def summary(self, epoch_time: float) -> Metrics:
    out: Metrics = {k: v / self.steps for k, v in self.sums.items()}
    out['steps'] = self.steps
    out['epoch_time_s'] = epoch_time
    out['steps_per_sec'] = self.steps / max(epoch_time, 1e-9)
    return out


def _format(metrics: Mapping[str, Any]) -> str:
  return ', '.join(
    f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}'
    for k, v in metrics.items()
  )


def _hms(seconds: float) -> str:
  seconds = round(seconds)
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'
