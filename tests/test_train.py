"""Tests for lpjax.train: real training of a tiny ResNet on synthetic data.

Compiling on CPU dominates the run time, so every test shares one tiny model,
one optimizer (a new optimizer would change the state's static tree and
recompile) and batch shapes [16, 8, 8, 3] (train) and [8, 8, 8, 3] (eval).
Variables are drawn with numpy from the model's variable shapes: compiling the
model's own random initialisers costs far more than the tests themselves.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import traverse_util
from tolerances import f32_atol, magnitude, network_terms

from lpjax import models, sharding, train
from lpjax.models import resnet, vit

IMAGE_SHAPE = (8, 8, 3)
NUM_CLASSES = 4
BATCH = 16
EVAL_BATCH = 8
WEIGHT_DECAY = 1e-4
# Stem + 4 stage-1 convs (two blocks) + 3 convs in each later stage's block
# (conv1, conv2, projection).
NUM_CONV_KERNELS = 11


def _arch():
  return resnet.resnet_cifar(
    num_classes=NUM_CLASSES, width=4, blocks_per_stage=[2, 1, 1]
  )


def _numpy_variables(arch, seed=0):
  """He-normal kernels, zero biases, identity BatchNorm, drawn with numpy."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == 'kernel':
      fan_in = math.prod(leaf.shape[:-1])
      std = math.sqrt(2.0 / fan_in)
      return (std * rng.standard_normal(leaf.shape)).astype(np.float32)
    if name in ('scale', 'var'):
      return np.ones(leaf.shape, np.float32)
    return np.zeros(leaf.shape, np.float32)

  shapes = models.variable_shapes(arch, IMAGE_SHAPE)
  return jax.tree_util.tree_map_with_path(draw, dict(shapes))


def _synthetic(n, seed):
  """A separable problem: each class shifts the channels by its own sign."""
  signs = np.array(
    [[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], np.float32
  )
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, NUM_CLASSES, n).astype(np.int32)
  images = rng.standard_normal((n, *IMAGE_SHAPE)).astype(np.float32)
  images += signs[labels][:, None, None, :]
  return images, labels


class ArrayDataset:
  """The input pipeline's interface over in-memory arrays."""

  def __init__(self, images, labels):
    self.images, self.labels = images, labels

  def steps_per_epoch(self, batch_size):
    return len(self.labels) // batch_size

  def train_batches(self, *, batch_size, epoch, seed, augment=True):
    del augment
    order = np.random.default_rng([seed, epoch]).permutation(len(self.labels))
    for i in range(self.steps_per_epoch(batch_size)):
      idx = order[i * batch_size : (i + 1) * batch_size]
      yield {'image': self.images[idx], 'label': self.labels[idx]}


def _padded_batches(images, labels, batch_size):
  """Eval batches with a zero mask and junk (NaN images) in the padding."""
  for start in range(0, len(labels), batch_size):
    x = images[start : start + batch_size]
    y = labels[start : start + batch_size]
    pad = batch_size - len(y)
    yield {
      'image': np.concatenate(
        [x, np.full((pad, *x.shape[1:]), np.nan, np.float32)]
      ),
      'label': np.concatenate([y, np.zeros(pad, np.int32)]),
      'mask': np.concatenate(
        [np.ones(len(y), np.float32), np.zeros(pad, np.float32)]
      ),
    }


@pytest.fixture(scope='module')
def setup():
  arch = _arch()
  model = models.build_model(arch)
  variables = _numpy_variables(arch)
  tx = train.make_optimizer(learning_rate=0.1, total_steps=1000)
  return model, variables, tx


def _state(setup):
  model, variables, tx = setup
  return train.create_train_state(model, variables, tx)


class FakeWriter:
  def __init__(self):
    self.scalars = []

  def write_scalars(self, step, scalars):
    self.scalars.append((step, dict(scalars)))

  def flush(self):
    pass


def test_learns_separable_problem(setup):
  images, labels = _synthetic(128, seed=1)
  history, writer = [], FakeWriter()
  # The jitted step is cached per (weight decay, mesh) and shared with other
  # tests in this process: count the compiles this run adds.
  step_fn = train.jit_train_step(
    weight_decay=WEIGHT_DECAY, mesh=sharding.make_mesh()
  )
  compiles_before = step_fn._cache_size()
  state = train.fit(
    _state(setup),
    ArrayDataset(images, labels),
    epochs=4,
    batch_size=BATCH,
    seed=0,
    weight_decay=WEIGHT_DECAY,
    on_epoch_end=lambda s, e, m: history.append((e, int(s.step), m)),
    writer=writer,
  )
  assert [(e, step) for e, step, _ in history] == [
    (0, 8),
    (1, 16),
    (2, 24),
    (3, 32),
  ]
  first, last = history[0][2], history[-1][2]
  assert last['loss'] < 0.5 * first['loss']
  assert last['accuracy'] > 0.85  # Chance is 0.25.
  assert last['l2'] > 0 and last['steps'] == 8
  assert int(state.step) == 32
  assert [s for s, _ in writer.scalars] == [8, 16, 24, 32]
  assert writer.scalars[-1][1]['accuracy'] == last['accuracy']
  # At most one compile for the whole run: the static tree never changes.
  assert step_fn._cache_size() - compiles_before <= 1


def test_l2_penalty_sums_exactly_the_conv_kernels(setup):
  _, variables, _ = setup
  flat = traverse_util.flatten_dict(variables['params'])
  convs = [
    v
    for k, v in flat.items()
    if k[-1] == 'kernel' and ('conv' in k[-2] or k[-2] == 'proj_conv')
  ]
  assert len(convs) == NUM_CONV_KERNELS
  expected = sum(np.sum(np.square(v.astype(np.float64))) for v in convs)
  got = float(train.l2_penalty(variables['params']))
  # A float32 sum of squares (no cancellation): the suite's rule, relative.
  rel = f32_atol(sum(v.size for v in convs))
  np.testing.assert_allclose(got, expected, rtol=rel)
  # Neither the classifier nor BatchNorm nor biases are regularised.
  params = jax.tree.map(lambda v: v + 1.0, variables['params'])
  for k, v in traverse_util.flatten_dict(params).items():
    if k[-1] == 'kernel' and v.ndim == 4:
      params = _set(params, k, flat[k])
  np.testing.assert_allclose(
    float(train.l2_penalty(params)), expected, rtol=rel
  )


def _set(tree, path, value):
  flat = traverse_util.flatten_dict(tree)
  flat[path] = value
  return traverse_util.unflatten_dict(flat)


def test_step_schedule_closed_form():
  lr, total = 0.1, 200
  sched = train.make_schedule(learning_rate=lr, total_steps=total)
  for step, want in [
    (0, lr),
    (99, lr),
    (100, lr / 10),
    (149, lr / 10),
    (150, lr / 100),
    (199, lr / 100),
  ]:
    # A few float32 multiplications: the suite's rule with m = 1, relative.
    np.testing.assert_allclose(float(sched(step)), want, rtol=f32_atol(1))


def test_optimizer_applies_the_schedule():
  # Plain SGD on a unit gradient moves the parameter by -lr(step).
  tx = train.make_optimizer(
    learning_rate=0.1, total_steps=4, momentum=0.0, nesterov=False
  )
  params = {'w': np.zeros((), np.float32)}
  opt_state = tx.init(params)
  moves = []
  for _ in range(4):
    updates, opt_state = tx.update({'w': np.ones((), np.float32)}, opt_state)
    moves.append(float(updates['w']))
  np.testing.assert_allclose(
    moves, [-0.1, -0.1, -0.01, -0.001], rtol=f32_atol(1)
  )


def test_cosine_and_warmup_schedules():
  cos = train.make_schedule(
    learning_rate=0.2, total_steps=100, schedule='cosine'
  )
  # One float32 cosine and a few products: the rule with m = 1.
  np.testing.assert_allclose(float(cos(0)), 0.2, rtol=f32_atol(1))
  np.testing.assert_allclose(float(cos(50)), 0.1, rtol=f32_atol(1))
  np.testing.assert_allclose(float(cos(100)), 0.0, atol=f32_atol(1, 0.2))
  warm = train.make_schedule(
    learning_rate=0.2, total_steps=100, warmup_steps=10
  )
  np.testing.assert_allclose(float(warm(5)), 0.1, rtol=f32_atol(1))
  # Step boundaries keep their absolute positions after a warmup.
  np.testing.assert_allclose(float(warm(49)), 0.2, rtol=f32_atol(1))
  np.testing.assert_allclose(float(warm(50)), 0.02, rtol=f32_atol(1))
  np.testing.assert_allclose(float(warm(75)), 0.002, rtol=f32_atol(1))
  const = train.make_schedule(
    learning_rate=0.3, total_steps=10, schedule='constant'
  )
  assert float(const(9)) == pytest.approx(0.3)


def test_unknown_schedule_lists_valid_ones():
  with pytest.raises(ValueError, match="'step', 'cosine', 'constant'"):
    train.make_optimizer(learning_rate=0.1, total_steps=10, schedule='poly')


def test_resume_reproduces_uninterrupted_run_bitwise(setup):
  images, labels = _synthetic(64, seed=2)
  data = ArrayDataset(images, labels)
  kw = dict(batch_size=BATCH, seed=3, weight_decay=WEIGHT_DECAY)
  straight = train.fit(_state(setup), data, epochs=2, **kw)

  saved = []

  def checkpoint(state, epoch, metrics):
    del metrics
    saved.append((epoch, jax.device_get(state)))  # As a checkpoint would.

  train.fit(_state(setup), data, epochs=1, on_epoch_end=checkpoint, **kw)
  ((epoch, restored),) = saved
  resumed = train.fit(restored, data, epochs=2, start_epoch=epoch + 1, **kw)

  assert int(resumed.step) == int(straight.step) == 8
  a, b = jax.device_get((straight, resumed))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_eval_step_matches_unpadded_numpy(setup):
  model, variables, _ = setup
  images, labels = _synthetic(13, seed=4)  # 8 + 5 real, 3 padded.
  logits = np.asarray(model.apply(variables, images, train=False))
  ce = -(
    logits[np.arange(13), labels]
    - np.log(np.sum(np.exp(logits.astype(np.float64)), -1))
  )
  want_acc = np.mean(np.argmax(logits, -1) == labels)

  got = train.evaluate(
    _state(setup), _padded_batches(images, labels, EVAL_BATCH)
  )
  assert got['count'] == 13
  assert got['accuracy'] == want_acc
  # Logits from two float32 programs differ by tau (the suite's rule over
  # the network); cross-entropy moves by at most 2 tau.
  terms, depth = network_terms(variables['params'])
  tau = f32_atol(terms, magnitude(logits), depth)
  np.testing.assert_allclose(got['loss'], np.mean(ce), rtol=0, atol=2 * tau)

  # Without a mask every row counts.
  unmasked = train.evaluate(
    _state(setup), [{'image': images[:8], 'label': labels[:8]}]
  )
  assert unmasked['count'] == 8
  assert unmasked['accuracy'] == np.mean(
    np.argmax(logits[:8], -1) == labels[:8]
  )


def test_non_finite_loss_raises_before_checkpointing(setup):
  images, labels = _synthetic(32, seed=5)
  images[3] = np.nan  # Bad data in the first epoch.
  calls = []
  with pytest.raises(train.NonFiniteLossError, match='non-finite loss'):
    train.fit(
      _state(setup),
      ArrayDataset(images, labels),
      epochs=2,
      batch_size=BATCH,
      seed=0,
      weight_decay=WEIGHT_DECAY,
      on_epoch_end=lambda *a: calls.append(a),
    )
  assert not calls


def test_empty_epoch_raises(setup):
  images, labels = _synthetic(8, seed=6)
  with pytest.raises(ValueError, match='no batches'):
    train.fit(
      _state(setup),
      ArrayDataset(images, labels),
      epochs=1,
      batch_size=BATCH,
      seed=0,
      weight_decay=WEIGHT_DECAY,
    )


# --- Multi-device (in a subprocess: the device count is fixed at import) ----

NUM_DEVICES = 8
MULTI_DEVICE_STEPS = 3


def _multi_device_atol():
  """The suite's float32 rule (tests/tolerances.py) over the training: each
  SGD step chains the forward and the backward pass (twice the kernels), on
  parameters and statistics of magnitude ~1."""
  shapes = models.variable_shapes(_arch(), IMAGE_SHAPE)['params']
  terms, depth = network_terms(shapes)
  return f32_atol(terms, 1.0, 2 * depth * MULTI_DEVICE_STEPS)


def _multi_device_check():
  """Runs in the subprocess: 8 CPU devices vs 1; prints a JSON report."""
  assert jax.device_count() == NUM_DEVICES, jax.devices()
  arch = _arch()
  model = models.build_model(arch)
  variables = _numpy_variables(arch)
  tx = train.make_optimizer(learning_rate=0.1, total_steps=1000)
  images, labels = _synthetic(MULTI_DEVICE_STEPS * BATCH, seed=7)
  batches = [
    {'image': images[i : i + BATCH], 'label': labels[i : i + BATCH]}
    for i in range(0, MULTI_DEVICE_STEPS * BATCH, BATCH)
  ]
  report = {}
  results = {}
  for name, mesh in [
    ('many', sharding.make_mesh()),
    ('one', sharding.make_mesh(jax.devices()[:1])),
  ]:
    step = train.jit_train_step(weight_decay=WEIGHT_DECAY, mesh=mesh)
    state = sharding.replicate(
      train.create_train_state(model, variables, tx), mesh
    )
    metrics = []
    for b in batches:
      sharded = sharding.shard_batch(b, mesh)
      state, m = step(state, sharded)
      metrics.append(m)
    report[f'{name}_batch_devices'] = len(sharded['image'].sharding.device_set)
    report[f'{name}_shard_rows'] = sorted(
      {s.data.shape[0] for s in sharded['image'].addressable_shards}
    )
    report[f'{name}_state_replicated'] = all(
      x.sharding.is_fully_replicated for x in jax.tree.leaves(state)
    )
    ev = train.evaluate(
      state, _padded_batches(images[:13], labels[:13], 8), mesh=mesh
    )
    results[name] = jax.device_get((state, metrics, ev))
  many, one = results['many'], results['one']
  report['state_max_abs_diff'] = max(
    float(np.max(np.abs(np.asarray(a, np.float64) - b)))
    for a, b in zip(jax.tree.leaves(many[:2]), jax.tree.leaves(one[:2]))
  )
  report['eval'] = [many[2], one[2]]
  try:
    sharding.shard_batch(
      {'image': images[:12], 'label': labels[:12]}, sharding.make_mesh()
    )
  except ValueError as e:
    report['indivisible_error'] = str(e)
  print('REPORT ' + json.dumps(report))


def test_data_parallel_over_8_devices_matches_one_device():
  here = os.path.dirname(os.path.abspath(__file__))
  root = os.path.dirname(here)
  env = dict(os.environ)
  env['XLA_FLAGS'] = (
    env.get('XLA_FLAGS', '')
    + f' --xla_force_host_platform_device_count={NUM_DEVICES}'
  )
  env['JAX_PLATFORMS'] = 'cpu'
  env['PYTHONPATH'] = os.pathsep.join(
    p for p in (root, here, env.get('PYTHONPATH')) if p
  )
  script = 'import test_train; test_train._multi_device_check()'
  proc = subprocess.run(
    [sys.executable, '-c', script],
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr[-5000:]
  line = next(ln for ln in proc.stdout.splitlines() if ln.startswith('REPORT '))
  report = json.loads(line[len('REPORT ') :])
  print(report)
  assert report['many_batch_devices'] == NUM_DEVICES
  assert report['many_shard_rows'] == [BATCH // NUM_DEVICES]
  assert report['one_batch_devices'] == 1
  assert report['many_state_replicated'] and report['one_state_replicated']
  # Same global-batch BN statistics and gradients; only the reduction order
  # differs.
  atol = _multi_device_atol()
  assert report['state_max_abs_diff'] <= atol, report
  many_ev, one_ev = report['eval']
  assert many_ev['count'] == one_ev['count'] == 13
  assert many_ev['accuracy'] == one_ev['accuracy']
  assert many_ev['loss'] == pytest.approx(one_ev['loss'], abs=atol)
  assert 'not divisible by the 8 devices' in report['indivisible_error']


# --- Families without BatchNorm, dropout, the weight-decay mask ---------------


def _tiny_vit(dropout):
  arch = vit.vit(
    image_shape=IMAGE_SHAPE,
    patch=4,
    width=8,
    depth=2,
    heads=2,
    mlp=16,
    num_classes=NUM_CLASSES,
    dropout=dropout,
  )
  return arch, models.init_variables(arch, 0, IMAGE_SHAPE)


def test_vit_trains_without_batchnorm_and_with_dropout():
  arch, variables = _tiny_vit(dropout=0.2)
  assert 'batch_stats' not in variables
  images, labels = _synthetic(2 * BATCH, seed=3)
  tx = train.make_optimizer(learning_rate=0.05, total_steps=4)
  state = train.create_train_state(models.build_model(arch), variables, tx)
  mesh = sharding.make_mesh()
  step = train.jit_train_step(
    weight_decay=WEIGHT_DECAY, mesh=mesh, decay='kernels', dropout_seed=7
  )
  batch = sharding.shard_batch(
    {'image': images[:BATCH], 'label': labels[:BATCH]}, mesh
  )
  state = sharding.replicate(state, mesh)
  new, metrics = step(state, batch)
  assert np.isfinite(float(metrics['loss'])) and int(new.step) == 1
  assert new.batch_stats == {}
  # Dropout keys come from (seed, step): the same step repeats exactly, the
  # next step draws other masks (same parameters, same batch).
  again, _ = step(state, batch)
  jax.tree.map(np.testing.assert_array_equal, again.params, new.params)
  _, other = step(state.replace(step=state.step + 1), batch)
  assert float(other['loss']) != float(metrics['loss'])


def test_dropout_only_in_training_mode():
  arch, variables = _tiny_vit(dropout=0.5)
  images, labels = _synthetic(BATCH, seed=4)
  batch = {'image': images, 'label': labels}
  apply_fn = models.build_model(arch).apply

  def loss(train_mode, seed):
    return float(
      train.loss_fn(
        variables['params'],
        {},
        batch,
        apply_fn=apply_fn,
        train=train_mode,
        rng=jax.random.key(seed),
      )[0]
    )

  assert loss(True, 0) != loss(True, 1)
  assert loss(False, 0) == loss(False, 1)
  no_dropout = models.build_model(_tiny_vit(dropout=0.0)[0]).apply
  assert loss(False, 0) == float(
    train.loss_fn(
      variables['params'], {}, batch, apply_fn=no_dropout, train=False
    )[0]
  )


def test_decay_masks():
  _, variables = _tiny_vit(dropout=0.0)
  flat = traverse_util.flatten_dict(variables['params'])
  kernels = [v for k, v in flat.items() if k[-1] == 'kernel']
  # embed (conv) + per layer qkv, out, fc1, fc2 + head.
  assert len(kernels) == 1 + 4 * 2 + 1
  want = sum(np.sum(np.square(np.asarray(v, np.float64))) for v in kernels)
  got = float(train.l2_penalty(variables['params'], 'kernels'))
  # Float32 sums of squares: the suite's rule, relative.
  np.testing.assert_allclose(
    got, want, rtol=f32_atol(sum(v.size for v in kernels))
  )
  conv = float(np.sum(np.square(np.asarray(flat['embed', 'kernel'], 'f8'))))
  np.testing.assert_allclose(
    float(train.l2_penalty(variables['params'], 'conv_kernels')),
    conv,
    rtol=f32_atol(flat['embed', 'kernel'].size),
  )
  with pytest.raises(ValueError, match='valid masks'):
    train.l2_penalty(variables['params'], 'biases')
