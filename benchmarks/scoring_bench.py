"""One-call candidate scoring vs a loop of per-candidate forwards.

ResNet-56 (CIFAR, 32x32), all 24 candidates, N calibration images (default
5,000). Both sides compute the same scores (checked):

* `one_call`: `lpjax.scoring.score_candidates`: one jitted XLA computation
  (forwards vmapped over the 24 skip masks, lax.map over data batches, CKA
  fused in);
* `loop`: for each candidate, surgery to delete the block, then a jitted
  forward of the smaller model in data batches and a CKA on the host: the way
  the papers' Keras code does it (one model per candidate). Each smaller model
  is a different shape, so its compile is part of the loop's cost; it is
  reported separately.
* `loop_masked`: for each candidate, the same jitted full-model forward with
  a different skip mask (one compile), then CKA.

  python benchmarks/scoring_bench.py --n=5000 --repeats=3

Medians of `--repeats` timed runs after one warm-up (compile) run.
"""

import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lpjax import arch as arch_lib
from lpjax import cka, models, scoring, surgery

_N = flags.DEFINE_integer('n', 5000, 'Calibration images.')
_BATCH = flags.DEFINE_integer('batch', 500, 'Images per forward.')
_CHUNK = flags.DEFINE_integer('chunk', 0, 'Candidate chunk (0 = all).')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed repeats.')
_DEPTH = flags.DEFINE_integer('depth', 56, 'CIFAR ResNet depth.')


def _time(fn, repeats):
  t0 = time.perf_counter()
  first = fn()
  compile_and_run = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - t0)
  return first, out, compile_and_run, statistics.median(times)


def main(argv):
  del argv
  arch = arch_lib.resnet_cifar(_DEPTH.value)
  variables = models.init_variables(arch, 0, (32, 32, 3))
  x = np.random.default_rng(0).normal(size=(_N.value, 32, 32, 3))
  x = x.astype(np.float32)
  b = _BATCH.value
  chunk = _CHUNK.value or None

  def one_call():
    return scoring.score_candidates(
      arch, variables, x, data_batch_size=b, candidate_chunk=chunk
    )

  model = models.build_model(arch)
  pooled = jax.jit(
    lambda v, x, s: models.representations(model, v, x, ['pooled'], skip=s)[
      'pooled'
    ]
  )

  def features(fn, v, *args):
    return jnp.concatenate(
      [fn(v, x[i : i + b], *args) for i in range(0, len(x), b)]
    )

  def loop_masked():
    ref = features(pooled, variables, None)
    out = {}
    for name in arch.candidates:
      mask = jnp.asarray(arch.skip_mask([name]))
      out[name] = float(
        1 - cka.linear_cka(ref, features(pooled, variables, mask))
      )
    return out

  def loop_surgery():
    ref = features(pooled, variables, None)
    out = {}
    for name in arch.candidates:
      small_arch, small_vars = surgery.remove_blocks(arch, variables, [name])
      small = models.build_model(small_arch)
      fn = _surgery_fns.setdefault(
        small_arch,
        jax.jit(
          lambda v, x, s, m=small: models.representations(m, v, x, ['pooled'])[
            'pooled'
          ]
        ),
      )
      out[name] = float(1 - cka.linear_cka(ref, features(fn, small_vars, None)))
    return out

  _surgery_fns: dict = {}
  r = _REPEATS.value
  print(
    f'ResNet-{_DEPTH.value}, {len(arch.candidates)} candidates, n={_N.value}, '
    f'batch {b}, jax {jax.__version__}, {jax.devices()[0].device_kind}, '
    f'{os.cpu_count()} cores, {platform.processor() or platform.machine()}',
    flush=True,
  )
  rows = []
  for name, fn in (
    ('one_call', one_call),
    ('loop_masked', loop_masked),
    ('loop_surgery', loop_surgery),
  ):
    _first, out, cold, warm = _time(fn, r)
    rows.append((name, cold, warm, out))
    print(f'{name:>13}: first call {cold:.2f}s, median {warm:.2f}s', flush=True)
  ref = np.array(list(rows[0][3].values()))
  for name, _, _, out in rows[1:]:
    diff = np.max(np.abs(ref - np.array(list(out.values()))))
    print(f'max |score difference| one_call vs {name}: {diff:.2e}')
  print('\n| method | first call (s) | median (s) | one_call speed-up |')
  print('|---|---|---|---|')
  for name, cold, warm, _ in rows:
    print(f'| {name} | {cold:.2f} | {warm:.2f} | {warm / rows[0][2]:.2f}x |')


if __name__ == '__main__':
  app.run(main)
