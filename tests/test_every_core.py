"""Every core by default: one JAX CPU device per usable core, batches split.

Importing lpjax's JAX modules (`lpjax.models`, ...) gives JAX one CPU device per core of the process's affinity
unless the count was chosen (environment, XLA flag, jax config, or a JAX
computation before the import); the data-parallel code then splits batches
over the devices without refusing a batch size the default made awkward.
Each case that depends on start-up runs in a fresh interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from lpjax import models, scoring, sharding, train
from lpjax.models import resnet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBE = """
import json, os, sys
cores = {cores}
if cores is not None:
  os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:cores]))
{before}
import jax
import lpjax.models
print(json.dumps([jax.device_count(), len(os.sched_getaffinity(0))]))
"""


def _probe(cores=None, before='', **env):
  base = {
    k: v
    for k, v in os.environ.items()
    if k not in ('JAX_NUM_CPU_DEVICES', 'XLA_FLAGS')
  }
  out = subprocess.run(
    [sys.executable, '-c', PROBE.format(cores=cores, before=before)],
    env={**base, 'JAX_PLATFORMS': 'cpu', **env},
    capture_output=True,
    text=True,
    timeout=120,
    cwd=ROOT,
    check=True,
  )
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_one_cpu_device_per_usable_core():
  devices, cores = _probe()
  assert devices == cores


def test_a_one_core_affinity_gets_one_device():
  assert _probe(cores=1) == [1, 1]


@pytest.mark.parametrize(
  'env, before',
  [
    ({'JAX_NUM_CPU_DEVICES': '1'}, ''),
    ({'XLA_FLAGS': '--xla_force_host_platform_device_count=3'}, ''),
    ({}, "import jax\njax.config.update('jax_num_cpu_devices', 3)"),
    ({}, 'import jax\njax.numpy.zeros(1).block_until_ready()'),
  ],
  ids=['env', 'xla_flag', 'jax_config', 'backend_started'],
)
def test_a_count_chosen_before_import_is_kept(env, before):
  devices, _ = _probe(before=before, **env)
  want = 1 if 'JAX_NUM_CPU_DEVICES' in env or 'zeros' in before else 3
  assert devices == want


def test_default_devices_train_on_one_and_score_on_those_that_split():
  devices = jax.devices()
  # A size no count above 1 divides leaves one device, never a refusal.
  if sharding.defaulted():
    # Training and evaluation: one device for unknown or small work; no
    # batch size is refused.
    assert sharding.data_devices({'b': 1}) == devices[:1]
    assert sharding.data_devices({'a': 12, 'b': 18}) == devices[:1]
    # The digits quickstart: ResNet-20 on 8x8 images, 2,532,992 MACs each,
    # batch 64: 162 M of work, under SPLIT_MACS on any two devices.
    quickstart = {'train': 64, 'eval': 500}
    assert sharding.data_devices(quickstart, 2_532_992) == devices[:1]
    assert sharding.data_devices({'a': 127}, 10**12) == devices[:1]
    # ResNet-56 at batch 128 (eval 500): every count dividing both whose
    # share of 128 examples is at least SPLIT_MACS.
    r56 = 125_747_840
    want = max(
      [1]
      + [
        d
        for d in range(2, len(devices) + 1)
        if 128 % d == 0
        and 500 % d == 0
        and r56 * 128 / d >= sharding.SPLIT_MACS
      ]
    )
    got = sharding.data_devices({'train': 128, 'eval': 500}, r56)
    assert got == devices[:want]
    if len(devices) == 2:  # the 2-core machine the threshold was measured on
      assert want == 2
    assert sharding.auto_mesh(7, 7) is None
    mesh = sharding.auto_mesh(12, 6)
    assert mesh is not None and 6 % mesh.size == 0
  else:
    assert sharding.auto_mesh(12, 6) is None


def test_default_scoring_splits_over_the_cores_and_equals_one_device():
  arch = resnet.resnet_cifar(blocks_per_stage=(2, 2, 2), width=4)
  v = models.init_variables(arch, 0, (8, 8, 3))
  x = np.random.default_rng(0).normal(size=(32, 8, 8, 3)).astype('f4')
  one = scoring.candidate_representations(
    arch, v, x, mesh=sharding.make_mesh(jax.devices()[:1])
  )
  default = scoring.candidate_representations(arch, v, x)
  mesh = sharding.auto_mesh(32, 500)
  want = 1 if mesh is None else mesh.size
  assert len(default.sharding.device_set) == want
  # Each device runs the same per-example arithmetic on fewer rows; a
  # kernel chosen for the other batch size may sum in another order: float32
  # rounding per layer (eps * sqrt(reduction length 9 * 16)), over the
  # network's 2 + 2 * 6 convolutions, at the features' scale.
  one, default = np.asarray(one), np.asarray(default)
  tol = 14 * np.sqrt(144) * np.finfo(np.float32).eps * np.abs(one).max()
  np.testing.assert_allclose(default, one, rtol=0, atol=tol)


class _Conv(nn.Module):
  """One 3x3 SAME convolution without bias, then (`pool`) the mean over
  positions as logits. The convolution's forward work per example is
  (3H - 2)(3W - 2) in-bounds taps x C x F multiply-accumulates."""

  features: int
  pool: bool = False

  @nn.compact
  def __call__(self, x, train=False):
    del train
    y = nn.Conv(self.features, (3, 3), padding='SAME', use_bias=False)(x)
    return y.mean((1, 2)) if self.pool else y


def _state(h, c, f, pool=False):
  model = _Conv(f, pool)
  v = model.init(jax.random.PRNGKey(0), np.zeros((1, h, h, c), np.float32))
  return train.create_train_state(model, v, optax.sgd(0.01))


@pytest.mark.parametrize('h, c, f', [(8, 2, 4), (32, 64, 64)])
def test_forward_macs_is_a_convolutions_in_bounds_work(h, c, f):
  got = train.forward_macs(_state(h, c, f), np.zeros((3, h, h, c), 'f4'))
  assert got == (3 * h - 2) ** 2 * c * f


class _RandomBatches:
  def __init__(self, h, c, classes):
    self.shape, self.classes = (h, h, c), classes

  def train_batches(self, *, batch_size, epoch, seed):
    rng = np.random.default_rng([seed, epoch])
    yield {
      'image': rng.normal(size=(batch_size, *self.shape)).astype('f4'),
      'label': rng.integers(0, self.classes, batch_size).astype('i4'),
    }


@pytest.mark.parametrize('h, c, f', [(8, 2, 4), (32, 64, 64)])
def test_fit_splits_a_large_step_over_the_default_devices(h, c, f, monkeypatch):
  batch = 16
  devices = len(jax.devices())
  work = (3 * h - 2) ** 2 * c * f * batch  # the convolution's, per step
  if sharding.defaulted():
    want = max(
      [1]
      + [
        d
        for d in range(2, devices + 1)
        if batch % d == 0 and work / d >= sharding.SPLIT_MACS
      ]
    )
  else:  # a count the user chose: every device (16 rows split over 1, 2,
    want = devices  # 4, 8 or 16; fit refuses other counts before work)
  state = train.fit(
    _state(h, c, f, pool=True),
    _RandomBatches(h, c, f),
    epochs=1,
    batch_size=batch,
    seed=0,
    weight_decay=0.0,
  )
  kernel = state.params['Conv_0']['kernel']
  assert len(kernel.sharding.device_set) == want
  # `evaluate` without a mesh splits the same way (watched at the jitted
  # step it asks for), and agrees with one device: each example's logits
  # are the same arithmetic, summed in another order where a kernel is
  # chosen for the other batch size: float32 rounding over the 9 * C * H * H
  # products and positions behind each logit, at the logits' scale.
  sizes = []
  real = train.jit_eval_step

  def watched(*, mesh):
    sizes.append(mesh.size)
    return real(mesh=mesh)

  monkeypatch.setattr(train, 'jit_eval_step', watched)
  (eval_batch,) = _RandomBatches(h, c, f).train_batches(
    batch_size=batch, epoch=1, seed=0
  )
  got = train.evaluate(state, [eval_batch])
  ref = train.evaluate(
    state, [eval_batch], mesh=sharding.make_mesh(jax.devices()[:1])
  )
  assert sizes == [want, 1]
  assert got['count'] == ref['count'] == batch
  logits = np.asarray(
    state.apply_fn({'params': state.params}, eval_batch['image'])
  )
  tol = 4 * np.finfo(np.float32).eps * np.sqrt(9 * c * h * h)
  tol *= np.abs(logits).max()
  np.testing.assert_allclose(got['loss'], ref['loss'], rtol=0, atol=tol)
  # Only a near tie can move an example's argmax.
  margin = np.sort(logits, -1)[:, -1] - np.sort(logits, -1)[:, -2]
  ties = int(np.sum(margin <= 2 * tol))
  assert abs(got['accuracy'] - ref['accuracy']) * batch <= ties
  if sharding.defaulted() and devices == 2:
    # 8x8: 15 K multiply-accumulates per device; 32x32: 290 M.
    assert want == (2 if h == 32 else 1)
