"""ResNet-56 forward on the CPU: lpjax against TensorFlow/Keras, side by side.

The authors' ResNet-56 (`resnet56_baseline.json` / `.h5` of the shared
reference folder), 1,000 random 32×32×3 images (the cost does not depend on
the values), the whole set forwarded in eval mode. Every variant runs in its
own process (JAX's device count is fixed at start-up); the variants take
turns, `--rounds` times, so load changes hit all of them alike. Each process
warms up (compiles), then times `--passes` passes over the 1,000 images and
reports the median wall time and the CPU time it used per wall second
(2.0 = both cores of a 2-core machine busy).

* `keras_predict`: `tf_keras` `model.predict(x, batch_size=256)`, as the
  papers' scripts run it.
* `tf_function`: `tf.function(model(x, training=False))`, batches of 500
  (TensorFlow's graph runtime: oneDNN convolutions).
* `tf_xla`: the same with `jit_compile=True` (TensorFlow through XLA:CPU).
* `lpjax`: the imported model (`lpjax.interop.load_keras_model`), jitted
  `model.apply(..., train=False)`, batches of 500, one CPU device (JAX's
  default).
* `lpjax_sharded`: the same program with `JAX_NUM_CPU_DEVICES` = the number
  of usable cores (or the largest count below it that divides 500) and
  every batch split over them (`NamedSharding`, as `lpjax.train` shards a
  data-parallel batch).

`--convs` adds single 3×3 convolutions of each ResNet-56 stage shape
(batch 500) under `jax.jit`, one device: wall time and CPU use.

  pip install -e . tensorflow-cpu==2.21.0 tf-keras==2.21.0
  python benchmarks/cpu_forward_tf.py --convs [--out FILE]

About 4 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common

REFERENCE = (
  Path(__file__).resolve().parents[2] / 'shared' / 'reference' / 'keras'
)
N, IMAGE = 1000, (32, 32, 3)
VARIANTS = ('keras_predict', 'tf_function', 'tf_xla', 'lpjax', 'lpjax_sharded')


def _images():
  import numpy as np

  return np.random.default_rng(0).normal(size=(N, *IMAGE)).astype(np.float32)


def _time(fn, passes):
  """Median wall seconds of `passes` calls, and CPU seconds per wall second."""
  fn()  # Warm-up: compiles.
  walls, cpus = [], []
  for _ in range(passes):
    t, c = time.perf_counter(), time.process_time()
    fn()
    walls.append(time.perf_counter() - t)
    cpus.append(time.process_time() - c)
  return statistics.median(walls), sum(cpus) / sum(walls)


def _keras(stem):
  import tf_keras

  model = tf_keras.models.model_from_json(
    (stem.with_suffix('.json')).read_text()
  )
  model.load_weights(str(stem.with_suffix('.h5')))
  return model


def run_variant(name: str, stem: Path, passes: int) -> dict:
  x = _images()
  if name.startswith(('keras', 'tf')):
    import tensorflow as tf

    model = _keras(stem)
    if name == 'keras_predict':
      fn = lambda: model.predict(x, batch_size=256, verbose=0)  # noqa: E731
    else:
      f = tf.function(
        lambda t: model(t, training=False), jit_compile=name == 'tf_xla'
      )
      xs = [tf.constant(x[i : i + 500]) for i in range(0, N, 500)]
      fn = lambda: [f(t).numpy() for t in xs]  # noqa: E731
    out = model.predict(x[:8], verbose=0)
    version = f'TensorFlow {tf.__version__}'
  else:
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from lpjax import models
    from lpjax.interop import load_keras_model

    arch, variables = load_keras_model(
      stem.with_suffix('.json'), stem.with_suffix('.h5')
    )
    model = models.build_model(arch)
    mesh = Mesh(np.array(jax.devices()), ('data',))
    variables = jax.device_put(variables, NamedSharding(mesh, PartitionSpec()))
    rows = NamedSharding(mesh, PartitionSpec('data'))
    f = jax.jit(lambda v, t: model.apply(v, t, train=False))
    xs = [jax.device_put(x[i : i + 500], rows) for i in range(0, N, 500)]
    fn = lambda: [np.asarray(f(variables, t)) for t in xs]  # noqa: E731
    # The Keras model ends in a softmax: compare probabilities.
    out = np.asarray(jax.nn.softmax(f(variables, jax.device_put(x[:8]))))
    version = f'JAX {jax.__version__}, {jax.device_count()} CPU device(s)'
  wall, cpu = _time(fn, passes)
  return {
    'wall_s': wall,
    'cpu_per_wall': cpu,
    'version': version,
    'logits8': out.tolist(),
  }


def run_convs(passes: int) -> list[dict]:
  import jax
  import numpy as np
  from jax import lax

  rows = []
  rng = np.random.default_rng(0)
  for width, size in ((16, 32), (32, 16), (64, 8)):
    x = jax.device_put(rng.random((500, size, size, width), np.float32))
    k = jax.device_put(rng.random((3, 3, width, width), np.float32))
    conv = jax.jit(
      lambda x, k: lax.conv_general_dilated(
        x, k, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
      )
    )
    wall, cpu = _time(
      lambda conv=conv, x=x, k=k: conv(x, k).block_until_ready(), passes * 10
    )
    rows.append({'width': width, 'size': size, 'ms': wall * 1e3, 'cpu': cpu})
  return rows


def _child(args) -> None:
  stem = Path(args.reference) / 'resnet56_baseline'
  if args.variant == 'convs':
    out = run_convs(args.passes)
  else:
    out = run_variant(args.variant, stem, args.passes)
  common.send_result(out)


def sharded_devices() -> int:
  """The most CPU devices, at most one per usable core, that split a batch
  of 500 evenly."""
  cores = len(os.sched_getaffinity(0))
  return max(d for d in range(1, cores + 1) if 500 % d == 0)


def _spawn(variant: str, args) -> dict | list:
  env = dict(os.environ)
  env.pop('JAX_NUM_CPU_DEVICES', None)
  if variant == 'lpjax_sharded':
    env['JAX_NUM_CPU_DEVICES'] = str(sharded_devices())
  cmd = [
    sys.executable,
    __file__,
    '--child',
    f'--variant={variant}',
    f'--passes={args.passes}',
    f'--reference={args.reference}',
  ]
  return common.child_result(cmd, env, variant)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--rounds', type=int, default=3)
  p.add_argument('--passes', type=int, default=3)
  p.add_argument('--reference', default=str(REFERENCE))
  p.add_argument('--convs', action='store_true')
  p.add_argument('--out', default=None)
  p.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
  p.add_argument('--variant', default=None, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.child:
    _child(args)
    return
  import numpy as np

  load0 = os.getloadavg()[0]
  runs = {v: [] for v in VARIANTS}
  versions = {}
  logits = {}
  for r in range(args.rounds):
    for v in VARIANTS:
      out = _spawn(v, args)
      runs[v].append(out)
      versions[v] = out['version']
      logits[v] = np.asarray(out['logits8'])
      print(
        f'round {r}: {v:>14} {out["wall_s"]:.3f} s, CPU use '
        f'{out["cpu_per_wall"]:.2f}',
        flush=True,
      )
  diff = max(
    float(np.max(np.abs(logits[v] - logits['keras_predict']))) for v in VARIANTS
  )
  ref = statistics.median(r['wall_s'] for r in runs['tf_function'])
  lines = [
    f'{platform.processor() or platform.machine()}, '
    f'{len(os.sched_getaffinity(0))} usable cores; '
    f'{versions["tf_function"]}; {versions["lpjax"]} (sharded: '
    f'{versions["lpjax_sharded"]}). Load average at start / end: '
    f'{load0:.2f} / {os.getloadavg()[0]:.2f}. Medians over {args.rounds} '
    f'rounds of {args.passes} passes; all variants agree on the class '
    f'probabilities of 8 images within {diff:.1e}.',
    '',
    '| variant | 1,000 images, s | CPU use (cores busy) | vs tf_function |',
    '|---|---:|---:|---:|',
  ]
  for v in VARIANTS:
    wall = statistics.median(r['wall_s'] for r in runs[v])
    cpu = statistics.median(r['cpu_per_wall'] for r in runs[v])
    lines.append(f'| `{v}` | {wall:.2f} | {cpu:.2f} | {wall / ref:.2f}× |')
  if args.convs:
    lines += [
      '',
      'One 3×3 convolution per ResNet-56 stage shape, batch 500, jitted, one '
      'device:',
      '',
      '| stage shape | ms | CPU use (cores busy) |',
      '|---|---:|---:|',
    ]
    for row in _spawn('convs', args):
      lines.append(
        f'| {row["size"]}×{row["size"]}×{row["width"]} → {row["width"]} | '
        f'{row["ms"]:.1f} | {row["cpu"]:.2f} |'
      )
  text = '\n'.join(lines) + '\n'
  print(text)
  if args.out:
    Path(args.out).write_text(text)


if __name__ == '__main__':
  main()
