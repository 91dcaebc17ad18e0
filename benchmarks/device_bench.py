"""ResNet-56 on the default device: latency pruned vs unpruned, train steps.

Side by side in one process, on random CIFAR-shaped inputs (the cost does
not depend on the values) and fresh weights:

* latency of the jitted eval-mode forward (`lpjax.evaluate.latency`:
  compile excluded, warm-up, median and IQR of `--runs` calls) of the
  unpruned ResNet-56 ([9, 9, 9] blocks) and of the pruned [2, 2, 2] one
  (the CKA paper's 21-block removal, 78.80 % fewer FLOPs), at each batch of
  `--batches`; the speed-up beside the FLOPs ratio;
* training throughput of the unpruned ResNet-56: images per second of the
  jitted SGD train step (`lpjax.train.jit_train_step`, BatchNorm, L2) at
  batch `--train_batch`, median over `--train_steps` steps after compile.

  python benchmarks/device_bench.py [--runs 20] [--batches 1,256]

Writes a markdown table to stdout (and `--out`). On 2 CPU cores about 3
minutes; seconds on a GPU.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from lpjax import flops, models, sharding, train
from lpjax.evaluate import latency


def pruned_222(arch):
  """`arch` with every stage cut to its first 2 blocks."""
  drop = [
    b.name for stage in arch.stages for b in stage.blocks[2:]
  ]  # fmt: skip
  return arch.without(drop)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--runs', type=int, default=20)
  p.add_argument('--batches', default='1,256')
  p.add_argument('--train_batch', type=int, default=128)
  p.add_argument('--train_steps', type=int, default=10)
  p.add_argument('--out', default=None)
  args = p.parse_args(argv)
  full = models.get_arch('resnet56')
  small = pruned_222(full)
  ratio = flops.cost(full).macs / flops.cost(small).macs
  shape = (32, 32, 3)
  rng = np.random.default_rng(0)
  dev = latency.device_description()
  lines = [
    f'Device: {dev["device"]} ({dev["backend"]}, {dev["devices"]} device(s), '
    f'{dev["cpu_threads"]} CPU threads).',
    '',
    '| batch | unpruned ms (IQR) | [2, 2, 2] ms (IQR) | speed-up | FLOPs '
    'ratio | speed-up / FLOPs ratio |',
    '|---:|---:|---:|---:|---:|---:|',
  ]
  fns = {}
  for name, arch in (('full', full), ('small', small)):
    variables = models.init_variables(arch, 0, shape)
    model = models.build_model(arch)
    fns[name] = jax.jit(
      lambda x, model=model, variables=variables: model.apply(
        variables, x, train=False
      )
    )
  for b in [int(v) for v in args.batches.split(',') if v]:
    x = jax.numpy.asarray(rng.normal(size=(b, *shape)).astype(np.float32))
    # The unpruned model's runs, then the pruned one's, at each batch.
    r_full = latency.measure(fns['full'], x, runs=args.runs)
    r_small = latency.measure(fns['small'], x, runs=args.runs)
    s = latency.speedup(r_small, r_full)
    lines.append(
      f'| {b} | {r_full["median_ms"]:.2f} ({r_full["iqr_ms"]:.2f}) | '
      f'{r_small["median_ms"]:.2f} ({r_small["iqr_ms"]:.2f}) | {s:.2f}× | '
      f'{ratio:.2f}× | {s / ratio:.2f} |'
    )
  # Train-step throughput of the unpruned model.
  mesh = sharding.make_mesh()
  model = models.build_model(full)
  tx = train.make_optimizer(learning_rate=0.1, total_steps=1000)
  state = train.create_train_state(
    model, models.init_variables(full, 0, shape), tx
  )
  step = train.jit_train_step(weight_decay=1e-4, mesh=mesh)
  n = args.train_batch
  batch = {
    'image': rng.normal(size=(n, *shape)).astype(np.float32),
    'label': rng.integers(0, 10, n).astype(np.int32),
  }
  # Placed as `lpjax.train.fit` places them, then two untimed steps (the
  # compile, and one more with the step's own output state).
  state = sharding.replicate(state, mesh)
  batch = sharding.shard_batch(batch, mesh)
  for _ in range(2):
    state, m = step(state, batch)
    jax.block_until_ready(m)
  times = []
  for _ in range(args.train_steps):
    t0 = time.perf_counter()
    state, m = step(state, batch)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
  med = float(np.median(times))
  lines += [
    '',
    f'ResNet-56 train step at batch {n}: median {med * 1e3:.1f} ms over '
    f'{args.train_steps} steps, {n / med:.0f} images/s.',
  ]
  md = '\n'.join(lines)
  print(md)
  if args.out:
    with open(args.out, 'w') as f:
      f.write(md + '\n')


if __name__ == '__main__':
  main()
