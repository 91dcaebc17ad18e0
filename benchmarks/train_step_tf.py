"""ResNet-56 SGD train step on the CPU: lpjax against TensorFlow/Keras.

The authors' ResNet-56 (`resnet56_baseline.json` / `.h5` of the shared
reference folder), one batch of 128 random 32×32×3 images with random
labels (the cost does not depend on the values), one training step: forward
with BatchNorm in training mode, backward, L2 1e-4 on the convolution
kernels (the model's `kernel_regularizer`; `lpjax.train`'s `'conv_kernels'`
penalty) and SGD with Nesterov momentum 0.9 (the papers' recipe;
`lpjax.train.make_optimizer`).

Every variant runs in its own process; the variants take turns,
`--rounds` times, so load changes (the machine may be shared) hit all of
them alike. Each process does one step from the loaded weights (which also
compiles), records that step's loss and the updated stem kernel, warms up
for `--warmup` more steps, then times `--steps` steps and reports the
median wall time and the CPU seconds it used per wall second (2.0 = both
cores of a 2-core machine busy).

* `keras_graph`: `tf_keras` `model.train_on_batch` (TensorFlow's graph
  runtime; oneDNN convolutions), run by `--tf_python`.
* `lpjax`: the imported model (`lpjax.interop.load_keras_model`) trained by
  `lpjax.train.jit_train_step` with lpjax's defaults (its CPU device count,
  `LPJAX_CONV=auto`: XLA's convolutions, `LPJAX_FUSION_BARRIER=auto`: a
  fusion barrier after every block on the CPU; see `lpjax.models.conv`).
* `lpjax_xla`: the same with `LPJAX_CONV=xla LPJAX_FUSION_BARRIER=off`
  (lpjax before the barrier).
* `lpjax_matmul` (only with `--variants`): `LPJAX_CONV=matmul`, convolutions
  as patches × matmul.

Per round, `lpjax / keras_graph` is a paired ratio (both measured minutes
apart under the same load); the summary gives its median and quartiles.

  python3 -m venv /tmp/tfvenv
  /tmp/tfvenv/bin/pip install tensorflow-cpu==2.21.0 tf-keras==2.21.0 h5py
  python benchmarks/train_step_tf.py --tf_python /tmp/tfvenv/bin/python \
    [--rounds 5] [--out FILE]

About 6 minutes on an idle 2-core machine with the defaults (17 minutes
at load 4 to 14).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common

REFERENCE = (
  Path(__file__).resolve().parents[2] / 'shared' / 'reference' / 'keras'
)
BATCH, IMAGE, CLASSES = 128, (32, 32, 3), 10
LEARNING_RATE, MOMENTUM, WEIGHT_DECAY = (
  common.LEARNING_RATE,
  common.MOMENTUM,
  common.WEIGHT_DECAY,
)
VARIANTS = ('keras_graph', 'lpjax', 'lpjax_xla')


def _batch():
  import numpy as np

  rng = np.random.default_rng(0)
  x = rng.normal(size=(BATCH, *IMAGE)).astype(np.float32)
  y = rng.integers(0, CLASSES, size=BATCH).astype(np.int32)
  return x, y


def _cpu_seconds() -> float:
  # Every thread of the process (oneDNN's, Eigen's, XLA's pool).
  return time.process_time()


def _time(step, steps: int, warmup: int):
  """Median wall seconds of `steps` calls after `warmup` calls, and the
  CPU seconds per wall second over the timed calls."""
  for _ in range(warmup):
    step()
  walls = []
  c0, t0 = _cpu_seconds(), time.perf_counter()
  for _ in range(steps):
    t = time.perf_counter()
    step()
    walls.append(time.perf_counter() - t)
  cpu = (_cpu_seconds() - c0) / (time.perf_counter() - t0)
  return statistics.median(walls), cpu


def _keras(stem: Path, steps: int, warmup: int) -> dict:
  import numpy as np
  import tensorflow as tf
  import tf_keras

  x, y = _batch()
  model = tf_keras.models.model_from_json(stem.with_suffix('.json').read_text())
  model.load_weights(str(stem.with_suffix('.h5')))
  model.compile(
    optimizer=tf_keras.optimizers.SGD(
      learning_rate=LEARNING_RATE, momentum=MOMENTUM, nesterov=True
    ),
    # The model ends in a softmax: cross-entropy of probabilities.
    loss='sparse_categorical_crossentropy',
  )
  stem_conv = next(
    layer for layer in model.layers if layer.__class__.__name__ == 'Conv2D'
  )
  # `train_on_batch` returns the loss of the step: cross-entropy plus the
  # kernel regularisers' penalty.
  loss = float(model.train_on_batch(x, y))
  kernel = np.asarray(stem_conv.kernel.numpy(), np.float64)

  def step():
    model.train_on_batch(x, y)

  wall, cpu = _time(step, steps, warmup)
  return {
    'wall_s': wall,
    'cpu_per_wall': cpu,
    'version': f'TensorFlow {tf.__version__}',
    'loss1': loss,
    'stem_kernel1': kernel.ravel().tolist(),
  }


def _lpjax(stem: Path, steps: int, warmup: int) -> dict:
  import jax
  import numpy as np

  from lpjax import models, train
  from lpjax.interop import load_keras_model
  from lpjax.models import conv

  x, y = _batch()
  arch, variables = load_keras_model(
    stem.with_suffix('.json'), stem.with_suffix('.h5')
  )
  state, step_fn, mesh = common.sgd_train_step(
    models.build_model(arch), variables
  )
  batch = train.shard_batch({'image': x, 'label': y}, mesh)
  state1, metrics = step_fn(state, batch)
  loss = float(metrics['loss']) + WEIGHT_DECAY * float(metrics['l2'])
  kernel = np.asarray(state1.params['stem_conv']['kernel'], np.float64)
  holder = [state1]

  def step():
    holder[0], m = step_fn(holder[0], batch)
    jax.block_until_ready(m)

  wall, cpu = _time(step, steps, warmup)
  return {
    'wall_s': wall,
    'cpu_per_wall': cpu,
    'version': (
      f'JAX {jax.__version__}, {jax.device_count()} CPU device(s), '
      f'conv backend {conv.backend_name()!r}, fusion barrier '
      f'{"on" if conv.barrier_enabled() else "off"}'
    ),
    'loss1': loss,
    'stem_kernel1': kernel.ravel().tolist(),
  }


def _child(args) -> None:
  stem = Path(args.reference) / 'resnet56_baseline'
  if args.variant == 'keras_graph':
    out = _keras(stem, args.steps, args.warmup)
  else:
    out = _lpjax(stem, args.steps, args.warmup)
  common.send_result(out)


def _spawn(variant: str, args) -> dict:
  env = dict(os.environ)
  env.pop('JAX_NUM_CPU_DEVICES', None)
  env['LPJAX_CONV'] = {'lpjax_xla': 'xla', 'lpjax_matmul': 'matmul'}.get(
    variant, 'auto'
  )
  env['LPJAX_FUSION_BARRIER'] = 'off' if variant == 'lpjax_xla' else 'auto'
  python = args.tf_python if variant == 'keras_graph' else sys.executable
  env['TF_CPP_MIN_LOG_LEVEL'] = '2'
  cmd = [
    python,
    __file__,
    '--child',
    f'--variant={variant}',
    f'--steps={args.steps}',
    f'--warmup={args.warmup}',
    f'--reference={args.reference}',
  ]
  return common.child_result(cmd, env, variant)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--rounds', type=int, default=5)
  p.add_argument('--steps', type=int, default=5)
  p.add_argument('--warmup', type=int, default=2)
  p.add_argument('--reference', default=str(REFERENCE))
  p.add_argument(
    '--tf_python',
    default=sys.executable,
    help='interpreter with tensorflow and tf_keras (default: this one)',
  )
  p.add_argument(
    '--variants',
    default=','.join(VARIANTS),
    help='comma-separated; also lpjax_matmul',
  )
  p.add_argument('--out', default=None)
  p.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
  p.add_argument('--variant', default=None, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.child:
    _child(args)
    return
  import numpy as np

  variants = [v for v in args.variants.split(',') if v]
  load0 = os.getloadavg()[0]
  runs = {v: [] for v in variants}
  for r in range(args.rounds):
    for v in variants:
      out = _spawn(v, args)
      runs[v].append(out)
      print(
        f'round {r}: {v:>12} {out["wall_s"]:.3f} s, CPU use '
        f'{out["cpu_per_wall"]:.2f}',
        flush=True,
      )
  ref = 'keras_graph'
  first = {v: runs[v][0] for v in variants}
  loss_diff = max(abs(first[v]['loss1'] - first[ref]['loss1']) for v in first)
  kernel_ref = np.asarray(first[ref]['stem_kernel1'])
  kernel_diff = max(
    float(np.max(np.abs(np.asarray(first[v]['stem_kernel1']) - kernel_ref)))
    for v in first
  )
  lines = [
    f'{common.cpu_model()}, {len(os.sched_getaffinity(0))} usable cores; '
    + '; '.join(f'{v}: {first[v]["version"]}' for v in variants)
    + f'. Load average at start / end: {load0:.2f} / '
    f'{os.getloadavg()[0]:.2f}. {args.rounds} rounds, each process the '
    f'median of {args.steps} steps after {args.warmup + 1} warm-up steps. '
    f'After the first step from the same weights the variants agree on the '
    f'loss ({first[ref]["loss1"]:.6f}) within {loss_diff:.1e} and on the '
    f'updated stem kernel within {kernel_diff:.1e}.',
    '',
    '| variant | step, s (median) | CPU use (cores busy) | '
    'paired ratio to keras_graph: median [q1, q3] |',
    '|---|---:|---:|---:|',
  ]
  for v in variants:
    wall = statistics.median(r['wall_s'] for r in runs[v])
    cpu = statistics.median(r['cpu_per_wall'] for r in runs[v])
    ratios = [a['wall_s'] / b['wall_s'] for a, b in zip(runs[v], runs[ref])]
    q1, q2, q3 = common.quartiles(ratios)
    lines.append(
      f'| `{v}` | {wall:.3f} | {cpu:.2f} | {q2:.2f}× [{q1:.2f}, {q3:.2f}] |'
    )
  text = '\n'.join(lines) + '\n'
  print(text)
  if args.out:
    Path(args.out).write_text(text)


if __name__ == '__main__':
  main()
