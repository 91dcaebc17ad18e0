"""ResNet-56's 3×3 convolutions on the CPU, op by op: lpjax (XLA) against
TensorFlow.

Where the ResNet-56 train step's gap to TF-Keras (`train_step_tf.py`) lies:
for the stride-1 3×3 convolution of each of ResNet-56's three stages at
batch 128 (32×32×16 → 16, 16×16×32 → 32, 8×8×64 → 64; 18 of the model's
57 convolutions run at each), the three operations a train step computes:

* `fwd`: the convolution;
* `dx`: its input gradient (the backward pass to the layer below);
* `dw`: its kernel gradient.

Variants, each in its own process, taking turns `--rounds` times:

* `tf`: TensorFlow's kernels (`Conv2D`, `Conv2DBackpropInput`,
  `Conv2DBackpropFilter` in a `tf.function`, TensorFlow's default threads:
  what `tf_keras` runs), by `--tf_python`.
* `lpjax`: `lpjax.models.conv.conv2d` (XLA's convolution) and its `jax.vjp`,
  jitted, the batch split over lpjax's default CPU devices (one per core),
  as `train_step_tf.py`'s lpjax train step splits it.
* `lpjax_one_device`: the same on one CPU device (`JAX_NUM_CPU_DEVICES=1`).

Each op is timed as the median of `--steps` calls after `--warmup` calls,
with the CPU seconds its process used per wall second (2.0 = both cores of
a 2-core machine busy). All variants compute from the same NumPy inputs;
the first round's results are compared (largest difference relative to
the largest magnitude, printed). Per round, `variant / tf` is a paired
ratio; the table gives its median and quartiles over rounds.

  python benchmarks/conv_ops_tf.py --tf_python /tmp/tfvenv/bin/python \
    [--rounds 5] [--out FILE]

(`/tmp/tfvenv`: `python3 -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install
tensorflow-cpu==2.21.0`.) About 2 minutes per round on an idle 2-core
machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common

BATCH = 128
# (height, width, in channels, out channels) of each stage's stride-1 conv.
SHAPES = ((32, 32, 16, 16), (16, 16, 32, 32), (8, 8, 64, 64))
OPS = ('fwd', 'dx', 'dw')
VARIANTS = ('tf', 'lpjax', 'lpjax_one_device')


def _inputs(shape):
  import numpy as np

  h, w, cin, cout = shape
  rng = np.random.default_rng(h * 1000 + cin)
  x = rng.standard_normal((BATCH, h, w, cin), np.float32)
  kernel = (rng.standard_normal((3, 3, cin, cout)) / np.sqrt(9 * cin)).astype(
    np.float32
  )
  g = rng.standard_normal((BATCH, h, w, cout), np.float32)
  return x, kernel, g


def _time(call, steps: int, warmup: int) -> tuple[float, float]:
  """Median wall seconds of `steps` calls after `warmup`, and the CPU
  seconds per wall second over the timed calls."""
  import numpy as np

  for _ in range(warmup):
    call()
  walls = []
  cpu0, t0 = time.process_time(), time.perf_counter()
  for _ in range(steps):
    s = time.perf_counter()
    call()
    walls.append(time.perf_counter() - s)
  cpu = (time.process_time() - cpu0) / (time.perf_counter() - t0)
  return float(np.median(walls)), cpu


def _tf_ops(shape):
  import tensorflow as tf

  x, kernel, g = (tf.constant(a) for a in _inputs(shape))
  strides = [1, 1, 1, 1]
  fwd = tf.function(lambda: tf.nn.conv2d(x, kernel, 1, 'SAME'))
  dx = tf.function(
    lambda: tf.raw_ops.Conv2DBackpropInput(
      input_sizes=tf.shape(x),
      filter=kernel,
      out_backprop=g,
      strides=strides,
      padding='SAME',
    )
  )
  dw = tf.function(
    lambda: tf.raw_ops.Conv2DBackpropFilter(
      input=x,
      filter_sizes=tf.shape(kernel),
      out_backprop=g,
      strides=strides,
      padding='SAME',
    )
  )
  # `.numpy()` waits for the result, as `block_until_ready` does in JAX.
  return {
    name: (lambda f=f: f().numpy()) for name, f in zip(OPS, (fwd, dx, dw))
  }, f'TensorFlow {tf.__version__}'


def _lpjax_ops(shape):
  import jax
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  from lpjax import sharding
  from lpjax.models import conv

  mesh = sharding.make_mesh()
  rows = NamedSharding(mesh, P(sharding.DATA_AXIS))
  whole = NamedSharding(mesh, P())
  x, kernel, g = _inputs(shape)
  x, g = jax.device_put(x, rows), jax.device_put(g, rows)
  kernel = jax.device_put(kernel, whole)

  def f(x, kernel):
    return conv.conv2d(x, kernel, 1, 'SAME', backend='xla')

  fwd = jax.jit(f)
  dx = jax.jit(lambda x, k, g: jax.vjp(f, x, k)[1](g)[0])
  dw = jax.jit(lambda x, k, g: jax.vjp(f, x, k)[1](g)[1])
  # Timed until the result exists, not copied to the host (a sharded
  # result would be gathered); `_child` converts it once to save it.
  calls = {
    'fwd': lambda: jax.block_until_ready(fwd(x, kernel)),
    'dx': lambda: jax.block_until_ready(dx(x, kernel, g)),
    'dw': lambda: jax.block_until_ready(dw(x, kernel, g)),
  }
  return calls, f'JAX {jax.__version__}, {mesh.size} CPU device(s)'


def _child(args) -> None:
  ops = _tf_ops if args.variant == 'tf' else _lpjax_ops
  out = {'times': {}, 'cpu': {}}
  for shape in SHAPES:
    calls, out['version'] = ops(shape)
    for op, call in calls.items():
      key = f'{shape}/{op}'
      if args.save:
        import numpy as np

        np.save(
          Path(args.save) / f'{args.variant}_{len(out["times"])}',
          np.asarray(call()),
        )
      out['times'][key], out['cpu'][key] = _time(call, args.steps, args.warmup)
  common.send_result(out)


def _spawn(variant: str, args, save: str | None) -> dict:
  env = common.quiet_env(TF_CPP_MIN_LOG_LEVEL='2')
  if variant == 'lpjax_one_device':
    env['JAX_NUM_CPU_DEVICES'] = '1'
  python = args.tf_python if variant == 'tf' else sys.executable
  cmd = [
    python,
    __file__,
    '--child',
    f'--variant={variant}',
    f'--steps={args.steps}',
    f'--warmup={args.warmup}',
  ]
  if save:
    cmd.append(f'--save={save}')
  return common.child_result(cmd, env, variant)


def _agreement(folder: str, variants) -> float:
  """The largest |variant - tf| over every op's result, relative to the
  largest |tf| of that op."""
  import numpy as np

  worst = 0.0
  for i in range(len(SHAPES) * len(OPS)):
    ref = np.load(Path(folder) / f'tf_{i}.npy').astype(np.float64)
    for v in variants:
      got = np.load(Path(folder) / f'{v}_{i}.npy').astype(np.float64)
      worst = max(worst, float(np.max(np.abs(got - ref)) / np.max(np.abs(ref))))
  return worst


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--rounds', type=int, default=5)
  p.add_argument('--steps', type=int, default=20)
  p.add_argument('--warmup', type=int, default=3)
  p.add_argument(
    '--tf_python',
    default=sys.executable,
    help='interpreter with tensorflow (default: this one)',
  )
  p.add_argument('--out', default=None, help='also write the report here')
  p.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
  p.add_argument('--variant', default=None, help=argparse.SUPPRESS)
  p.add_argument('--save', default=None, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.rounds < 1:
    p.error('--rounds must be at least 1.')
  if args.steps < 1:
    p.error('--steps must be at least 1.')
  if args.child:
    _child(args)
    return
  load0 = os.getloadavg()[0]
  runs = {v: [] for v in VARIANTS}
  with tempfile.TemporaryDirectory() as folder:
    for r in range(args.rounds):
      for v in VARIANTS:
        runs[v].append(_spawn(v, args, folder if r == 0 else None))
        total = sum(runs[v][-1]['times'].values())
        print(f'round {r}: {v:>16} nine ops {total * 1e3:.1f} ms', flush=True)
    agreement = _agreement(folder, VARIANTS[1:])
  keys = list(runs['tf'][0]['times'])

  def cell(v, key):
    walls = [run['times'][key] * 1e3 for run in runs[v]]
    cpus = [run['cpu'][key] for run in runs[v]]
    _, wall, _ = common.quartiles(walls)
    _, cpu, _ = common.quartiles(cpus)
    return f'{wall:.2f} ({cpu:.2f})'

  def ratio(v, key):
    return common.median_quartiles(
      [a['times'][key] / b['times'][key] for a, b in zip(runs[v], runs['tf'])],
      2,
      '×',
    )

  lines = [
    f'{common.cpu_model()}, {len(os.sched_getaffinity(0))} usable cores; '
    + '; '.join(f'{v}: {runs[v][0]["version"]}' for v in VARIANTS)
    + f'. Load average at start / end: {load0:.2f} / '
    f'{os.getloadavg()[0]:.2f}. {args.rounds} rounds, each op the median '
    f'of {args.steps} calls after {args.warmup} warm-up calls. Results '
    f"agree with TensorFlow's within {agreement:.1e} of each op's largest "
    'magnitude.',
    '',
    '| stage shape, op | tf: ms (cores busy) | lpjax: ms (cores busy) | '
    'lpjax one device: ms (cores busy) | lpjax / tf | '
    'lpjax one device / tf |',
    '|---|---:|---:|---:|---:|---:|',
  ]
  for key in keys:
    shape, op = key.rsplit('/', 1)
    h, w, cin, cout = json.loads(shape.replace('(', '[').replace(')', ']'))
    lines.append(
      f'| {h}×{w}×{cin} → {cout}, `{op}` | '
      + ' | '.join(cell(v, key) for v in VARIANTS)
      + f' | {ratio("lpjax", key)} | {ratio("lpjax_one_device", key)} |'
    )
  sums = {v: [sum(run['times'].values()) for run in runs[v]] for v in VARIANTS}
  lines.append(
    '| all nine, summed | '
    + ' | '.join(f'{common.quartiles(sums[v])[1] * 1e3:.1f}' for v in VARIANTS)
    + ' | '
    + ' | '.join(
      common.median_quartiles(
        [a / b for a, b in zip(sums[v], sums['tf'])], 2, '×'
      )
      for v in VARIANTS[1:]
    )
    + ' |'
  )
  common.emit('\n'.join(lines), args.out)


if __name__ == '__main__':
  main()
