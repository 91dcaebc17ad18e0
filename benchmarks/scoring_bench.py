"""One-call candidate scoring vs loops of per-candidate forwards.

A CIFAR ResNet (default ResNet-56, 32x32 inputs, all 24 candidates), N
calibration images (default 5,000). Every method computes the same scores
(checked against the first):

* `one_call`: `lpjax.scoring.score_candidates` with its default shared-prefix
  pass: one jitted XLA computation (the model with `fanout=True`, lax.map over
  data batches, CKA fused in);
* `one_call_masked`: the same call with `candidate_chunk` = all masks (or
  `--chunk`): the full forward vmapped over the 1 + K skip masks;
* `loop_surgery`: for each candidate, surgery to delete the block, then a
  jitted forward of the smaller model in data batches and a CKA: the way the
  papers' Keras code does it (one model per candidate). Each smaller model is
  a different shape, so it compiles once per candidate; the first call
  includes that;
* `loop_masked`: for each candidate, the same jitted full-model forward with
  a different skip mask (one compile), then CKA.

  python benchmarks/scoring_bench.py --n=5000 --repeats=0
  python benchmarks/scoring_bench.py --depth=20 --n=500 --batch=250

`first call` includes compilation: what a pruning iteration pays, since each
removal changes the arch (one compile for `one_call`, one per candidate for
`loop_surgery`). `median` is over `--repeats` further calls (0: first calls
only). Images are random normal (the cost does not depend on the values);
the weights are a fresh init.
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

from lpjax import cka, models, scoring, surgery
from lpjax.models import resnet

_N = flags.DEFINE_integer('n', 5000, 'Calibration images.')
_BATCH = flags.DEFINE_integer('batch', 500, 'Images per forward.')
_CHUNK = flags.DEFINE_integer(
  'chunk', 0, 'Masks per vmap in one_call_masked (0 = all at once).'
)
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed repeats.')
_DEPTH = flags.DEFINE_integer('depth', 56, 'CIFAR ResNet depth.')
_METHODS = flags.DEFINE_list(
  'methods',
  'one_call,one_call_masked,loop_surgery,loop_masked',
  'Which methods, in order (the first is the reference for scores).',
)


def _time(fn, repeats):
  """(result, first-call seconds, median of `repeats` more calls or None)."""
  t0 = time.perf_counter()
  out = fn()
  first = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - t0)
  return out, first, statistics.median(times) if times else None


def main(argv):
  del argv
  arch = resnet.resnet_cifar(_DEPTH.value)
  variables = models.init_variables(arch, 0, (32, 32, 3))
  x = np.random.default_rng(0).normal(size=(_N.value, 32, 32, 3))
  x = x.astype(np.float32)
  b = _BATCH.value
  chunk = _CHUNK.value

  def one_call():
    return scoring.score_candidates(arch, variables, x, data_batch_size=b)

  def one_call_masked():
    return scoring.score_candidates(
      arch,
      variables,
      x,
      data_batch_size=b,
      candidate_chunk=chunk or len(arch.candidates) + 1,
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
      small_arch, small_vars = surgery.remove_blocks(
        arch, variables, [name], enforce_floor=False
      )
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
  methods = {
    'one_call': one_call,
    'one_call_masked': one_call_masked,
    'loop_surgery': loop_surgery,
    'loop_masked': loop_masked,
  }
  unknown = set(_METHODS.value) - set(methods)
  if unknown:
    raise app.UsageError(f'Unknown methods {sorted(unknown)}; {list(methods)}')
  r = _REPEATS.value
  print(
    f'ResNet-{_DEPTH.value}, {len(arch.candidates)} candidates, n={_N.value}, '
    f'batch {b}, jax {jax.__version__}, {jax.devices()[0].device_kind}, '
    f'{os.cpu_count()} cores, {platform.processor() or platform.machine()}, '
    f'load average {os.getloadavg()[0]:.2f}',
    flush=True,
  )
  rows = []
  for name in _METHODS.value:
    out, cold, warm = _time(methods[name], r)
    rows.append((name, cold, warm, out))
    print(f'{name:>15}: first call {cold:.2f}s, median {_s(warm)}', flush=True)
  ref = np.array(list(rows[0][3].values()))
  for name, _, _, out in rows[1:]:
    diff = np.max(np.abs(ref - np.array(list(out.values()))))
    print(f'max |score difference| {rows[0][0]} vs {name}: {diff:.2e}')
  print(f'load average at the end {os.getloadavg()[0]:.2f}')
  base = rows[0]
  print(
    f'\n| method | first call (s) | median of {r} more (s) | '
    f'first call / {base[0]} | median / {base[0]} |'
  )
  print('|---|---|---|---|---|')
  for name, cold, warm, _ in rows:
    ratio = None if warm is None else warm / base[2]
    print(
      f'| {name} | {cold:.2f} | {_s(warm, "")} | {cold / base[1]:.2f}x | '
      f'{_s(ratio, "x")} |'
    )


def _s(value, unit='s'):
  return '-' if value is None else f'{value:.2f}{unit}'


if __name__ == '__main__':
  app.run(main)
