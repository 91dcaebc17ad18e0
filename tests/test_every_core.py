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

import jax
import numpy as np
import pytest

from lpjax import models, scoring, sharding
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
