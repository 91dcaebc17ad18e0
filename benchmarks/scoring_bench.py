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
  a different skip mask, then CKA; the reference forward uses the same
  function with an all-false mask, so the method traces and compiles once.

  python benchmarks/scoring_bench.py --n=1000 --repeats=3 \
      --methods=one_call,loop_masked
  python benchmarks/scoring_bench.py --depth=20 --n=500 --batch=250

`first call` includes compilation: what a pruning iteration pays, since each
removal changes the arch (one compile for `one_call` and `loop_masked`, one
per candidate for `loop_surgery`); the first calls run once each, in the
order of `--methods`. Then `--repeats` rounds call every method once, the
order reversing round by round (A B, B A, A B, ...), so a change of load on
the shared machine hits every method alike; the table gives each method's
median warm time and the median [quartiles] of the per-round ratio to the
first method's time in the same round. Every method has its own jitted
functions, so none reuses another's compile. Images are random normal (the
cost does not depend on the values); the weights are a fresh init. The
header gives the CPU model, jax version, date and the load average at the
start and the end.
"""

from __future__ import annotations

import datetime
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lpjax import cka, models, scoring, surgery
from lpjax.models import resnet

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common

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


def _timed(fn):
  t0 = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - t0


def time_alternating(methods, names, repeats):
  """First calls in order, then `repeats` rounds in alternating order.

  Returns:
    `(outputs, first-call seconds, per-round warm seconds)`, each a dict by
    name; the warm lists are aligned by round.
  """
  outs, first = {}, {}
  for name in names:
    outs[name], first[name] = _timed(methods[name])
    print(f'{name:>15}: first call {first[name]:.2f}s', flush=True)
  warm = {name: [] for name in names}
  for r in range(repeats):
    for name in names if r % 2 == 0 else names[::-1]:
      outs[name], t = _timed(methods[name])
      warm[name].append(t)
      print(f'{name:>15}: round {r}, {t:.2f}s', flush=True)
  return outs, first, warm


def _load():
  return ', '.join(f'{v:.2f}' for v in os.getloadavg())


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
  # The unpruned model for loop_surgery's reference: its own function, so
  # that neither loop reuses the other's compile.
  pooled_full = jax.jit(
    lambda v, x, s: models.representations(model, v, x, ['pooled'])['pooled']
  )
  no_skip = jnp.asarray(arch.skip_mask([]))

  def features(fn, v, *args):
    return jnp.concatenate(
      [fn(v, x[i : i + b], *args) for i in range(0, len(x), b)]
    )

  def loop_masked():
    # All-false mask: the same trace as the candidates' (skip=None would be
    # a second trace and compile).
    ref = features(pooled, variables, no_skip)
    out = {}
    for name in arch.candidates:
      mask = jnp.asarray(arch.skip_mask([name]))
      out[name] = float(
        1 - cka.linear_cka(ref, features(pooled, variables, mask))
      )
    return out

  def loop_surgery():
    ref = features(pooled_full, variables, None)
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
  names = list(_METHODS.value)
  print(
    f'ResNet-{_DEPTH.value}, {len(arch.candidates)} candidates, n={_N.value}, '
    f'batch {b}, jax {jax.__version__}, {jax.devices()[0].device_kind}, '
    f'{os.cpu_count()} cores, CPU {common.cpu_model()}, '
    f'{datetime.date.today().isoformat()}; load average (1, 5, 15 min) at '
    f'the start {_load()}',
    flush=True,
  )
  outs, first, warm = time_alternating(methods, names, r)
  if 'loop_masked' in names and hasattr(pooled, '_cache_size'):
    print(f'loop_masked forward: {pooled._cache_size()} compiled version(s)')
  ref = np.array(list(outs[names[0]].values()))
  for name in names[1:]:
    diff = np.max(np.abs(ref - np.array(list(outs[name].values()))))
    print(f'max |score difference| {names[0]} vs {name}: {diff:.2e}')
  print(f'load average at the end {_load()}')
  base = names[0]
  print(
    f'\n| method | first call (s) | first call / {base} | median of {r} '
    f'warm (s) [quartiles] | warm / {base}, paired per round: median '
    '[quartiles] |'
  )
  print('|---|---:|---:|---:|---:|')
  for name in names:
    w = warm[name]
    ratios = [a / c for a, c in zip(w, warm[base])]
    print(
      f'| {name} | {first[name]:.2f} | {first[name] / first[base]:.2f}x | '
      f'{common.median_quartiles(w, 2)} | '
      f'{common.median_quartiles(ratios, 2, "x")} |'
    )


if __name__ == '__main__':
  app.run(main)
