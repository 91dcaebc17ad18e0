"""Where the ResNet-56 train step's time goes on the CPU, by XLA operation kind.

The step `train_step_tf.py` times (the authors' ResNet-56 from the shared
reference folder, batch 128, SGD Nesterov momentum 0.9, L2 1e-4 on conv
kernels, BatchNorm in training mode, the batch split over lpjax's default
CPU devices), traced with `jax.profiler` for `--steps` steps after three
warm-up steps. Every operation event of the trace is grouped by its kind
(its name without the trailing number: `ynn_fusion` is a convolution or
other work XLA hands to YNNPACK, `transpose_copy_fusion` a layout copy,
`all-reduce` / `Rendezvous` / `Wait` the devices synchronising, the rest
element-wise fusions) and summed over the devices' threads; the table gives
milliseconds per step and the share of the total.

  python benchmarks/train_step_profile.py [--steps 3] [--out FILE]

Under a minute on an idle 2-core machine.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common

REFERENCE = (
  Path(__file__).resolve().parents[2] / 'shared' / 'reference' / 'keras'
)
# Host-side and whole-program events: not operations.
HOST = (
  'ThunkExecutor',
  '$',
  'end: ',
  'PjitFunction',
  'CommonPjRt',
  'Wait for Launch',
  'cpp_pjit',
  'shard_args',
  'DevicePut',
  'batched',
  'H2D',
  'Allocate',
  'ParseArguments',
  'Handle inputs',
  'InvokeRendezvous',
)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--steps', type=int, default=3)
  p.add_argument('--reference', default=str(REFERENCE))
  p.add_argument('--out', default=None, help='also write the report here')
  args = p.parse_args()
  if args.steps < 1:
    p.error('--steps must be at least 1.')

  import jax
  import numpy as np

  from lpjax import models, train
  from lpjax.interop import load_keras_model

  stem = Path(args.reference) / 'resnet56_baseline'
  arch, variables = load_keras_model(
    stem.with_suffix('.json'), stem.with_suffix('.h5')
  )
  state, step, mesh = common.sgd_train_step(models.build_model(arch), variables)
  rng = np.random.default_rng(0)
  batch = train.shard_batch(
    {
      'image': rng.normal(size=(128, 32, 32, 3)).astype(np.float32),
      'label': rng.integers(0, 10, 128).astype(np.int32),
    },
    mesh,
  )
  for _ in range(3):
    state, m = step(state, batch)
    jax.block_until_ready(m)
  load0 = os.getloadavg()[0]
  with tempfile.TemporaryDirectory() as folder:
    t0 = time.perf_counter()
    jax.profiler.start_trace(folder)
    for _ in range(args.steps):
      state, m = step(state, batch)
      jax.block_until_ready(m)
    jax.profiler.stop_trace()
    wall = (time.perf_counter() - t0) / args.steps
    (trace,) = glob.glob(f'{folder}/**/*.trace.json.gz', recursive=True)
    with gzip.open(trace) as f:
      events = json.load(f)['traceEvents']
  spent = collections.Counter()
  count = collections.Counter()
  for e in events:
    if e.get('ph') != 'X' or e['name'].startswith(HOST):
      continue
    kind = re.sub(r'\.\d+$', '', e['name'])
    spent[kind] += e['dur'] / 1e3 / args.steps  # microseconds -> ms/step
    count[kind] += 1
  total = sum(spent.values())
  lines = [
    f'{common.cpu_model()}, {len(os.sched_getaffinity(0))} usable cores, '
    f'JAX {jax.__version__}, {mesh.size} device(s); load average '
    f'{load0:.2f}; {args.steps} traced steps, {wall:.3f} s each (with the '
    f'profiler); operation time summed over the devices: {total:.0f} ms '
    'per step.',
    '',
    '| operation kind | ms per step | share | events per step |',
    '|---|---:|---:|---:|',
  ]
  for kind, ms in spent.most_common():
    if ms / total < 0.005:
      break
    lines.append(
      f'| `{kind}` | {ms:.1f} | {ms / total:.1%} | '
      f'{count[kind] / args.steps:.0f} |'
    )
  common.emit('\n'.join(lines), args.out)


if __name__ == '__main__':
  main()
