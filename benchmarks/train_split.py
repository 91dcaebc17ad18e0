"""ResNet train steps on the CPU over two devices against one: where the
split pays.

For each workload (a CIFAR ResNet of some depth, square images of some size
and channels, a batch size), the jitted `lpjax.train` SGD step on random
inputs, once with `JAX_NUM_CPU_DEVICES=1` and once with 2 (the batch split
over both), each in its own process, the two alternating `--rounds`
times. Each process reports the median wall time of its steps after three
warm-up steps. The table gives each workload's forward multiply-accumulates
per device when split (`lpjax.flops` MACs per example × batch / 2), the
median times and the median per-round speed-up (one device / two), and the
device count a run picks under lpjax's default
(`lpjax.sharding.data_devices`, threshold `SPLIT_MACS`).

  python benchmarks/train_split.py [--rounds 2] [--out FILE]

About 4 minutes per round on an idle 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common

# (depth, image size, channels, batch): from the digits quickstart's
# ResNet-20 on 8x8 grayscale at batch 64 up to ResNet-56 on CIFAR at 128.
WORKLOADS = (
  (20, 8, 1, 64),
  (20, 8, 1, 128),
  (20, 12, 1, 64),
  (20, 8, 1, 256),
  (20, 16, 3, 64),
  (20, 32, 3, 128),
  (56, 32, 3, 128),
)


def _child(depth: int, size: int, channels: int, batch: int) -> None:
  import jax
  import numpy as np

  from lpjax import flops, models, train

  arch = models.get_arch(f'resnet{depth}', num_classes=10)
  model = models.build_model(arch)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(batch, size, size, channels)).astype(np.float32)
  y = rng.integers(0, 10, batch).astype(np.int32)
  variables = model.init(jax.random.PRNGKey(0), x[:1], train=False)
  state, step, mesh = common.sgd_train_step(model, variables)
  b = train.shard_batch({'image': x, 'label': y}, mesh)
  for _ in range(3):
    state, m = step(state, b)
    jax.block_until_ready(m)
  t0 = time.perf_counter()
  state, m = step(state, b)
  jax.block_until_ready(m)
  # About 3 s of steps, at least 5 and at most 60.
  n = min(60, max(5, int(3 / (time.perf_counter() - t0))))
  walls = []
  for _ in range(n):
    t = time.perf_counter()
    state, m = step(state, b)
    jax.block_until_ready(m)
    walls.append(time.perf_counter() - t)
  common.send_result(
    {
      'devices': mesh.size,
      'ms': float(np.median(walls)) * 1e3,
      'macs': flops.cost(arch, (size, size, channels)).macs,
    }
  )


def _spawn(workload, devices: int) -> dict:
  env = {
    k: v
    for k, v in os.environ.items()
    if not k.startswith(('LPJAX_', 'JAX_', 'XLA_'))
  }
  env['JAX_NUM_CPU_DEVICES'] = str(devices)
  cmd = [sys.executable, __file__, '--child', ','.join(map(str, workload))]
  return common.child_result(cmd, env, str(workload))


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--rounds', type=int, default=2)
  p.add_argument('--out', default=None, help='also write the report here')
  p.add_argument('--child', default=None, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.rounds < 1:
    p.error('--rounds must be at least 1.')
  if args.child:
    _child(*map(int, args.child.split(',')))
    return
  from lpjax import sharding

  load0 = os.getloadavg()[0]
  runs = {w: {1: [], 2: []} for w in WORKLOADS}
  for r in range(args.rounds):
    for w in WORKLOADS:
      for d in (1, 2) if r % 2 == 0 else (2, 1):
        runs[w][d].append(_spawn(w, d))
      print(
        f'round {r}: {w}: one device {runs[w][1][-1]["ms"]:.1f} ms, two '
        f'{runs[w][2][-1]["ms"]:.1f} ms',
        flush=True,
      )
  lines = [
    f'{common.cpu_model()}, {len(os.sched_getaffinity(0))} usable cores. '
    f'Load average at start / end: {load0:.2f} / {os.getloadavg()[0]:.2f}. '
    f'{args.rounds} round(s).',
    '',
    '| ResNet, input, batch | forward MACs per device (split) | one device, '
    'ms | two devices, ms | speed-up (one / two) | a run picks |',
    '|---|---:|---:|---:|---:|---:|',
  ]
  for w in WORKLOADS:
    depth, size, channels, batch = w
    one = [x['ms'] for x in runs[w][1]]
    two = [x['ms'] for x in runs[w][2]]
    per_device = runs[w][1][0]['macs'] * batch // 2
    picks = 2 if per_device >= sharding.SPLIT_MACS else 1
    lines.append(
      f'| ResNet-{depth}, {size}×{size}×{channels}, {batch} | '
      f'{per_device / 1e6:,.0f} M | {common.quartiles(one)[1]:.1f} | '
      f'{common.quartiles(two)[1]:.1f} | '
      + common.median_quartiles([a / b for a, b in zip(one, two)], 2, '×')
      + f' | {picks} |'
    )
  common.emit('\n'.join(lines), args.out)


if __name__ == '__main__':
  main()
