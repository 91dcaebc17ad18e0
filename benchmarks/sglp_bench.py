"""SGLP's CKA matrix: one compiled call against a loop of pairwise CKA.

ResNet-56 (CIFAR layout, 27 blocks + stem = 28 representations, random
init: the timing does not depend on the weights) on `--n` random 32x32x3
images. The methods (`--methods`, in order; `--full` / `--pairwise` add
theirs):

  * `minibatch`: `lpjax.methods.sglp.unit_cka_matrix`, SGLP's default
    (forward + minibatch CKA accumulation over `--batch`-image batches, one
    `lax.scan`);
  * `full`: the same call with the full-batch biased estimator
    (`estimator='full'`; memory `n * 274,432` floats);
  * `cka_matrix`: one compiled forward capturing the 28 outputs (in
    `--batch`-image batches), then `lpjax.cka.cka_matrix` (jitted) once on
    all of them: the matrix without SGLP's fused call (the same memory as
    `full`, the same estimator);
  * `pairwise`: the same forward, then `lpjax.cka.linear_cka` (jitted) on
    each of the 378 pairs i < j, which recomputes both sides' Gram or
    feature products for every pair.

Timing: each method's first call (compilation included) once, in order;
then `--repeats` rounds that call every method once, the order reversing
round by round (A B C, C B A, ...), so load changes on the shared machine
hit all alike. The table gives the median [quartiles] of the warm times
and of the per-round ratios of each method's time to `minibatch`'s and to
`cka_matrix`'s in the same round. It checks that `full`, `cka_matrix` and
`pairwise` agree, and prints the CPU model, jax version, date and the load
average at the start and the end.

  python benchmarks/sglp_bench.py --n=500 --batch=250 \
      --methods=minibatch,full,cka_matrix --repeats=5
  python benchmarks/sglp_bench.py --n=500 --batch=250 \
      --methods=minibatch,cka_matrix,pairwise --repeats=1

`--part=digits`: SGLP against other criteria at equal FLOPs on digits,
through the pipeline (`main.py`'s code path): per seed one baseline
(`configs/quickstart.py` with `--model`, or `configs/vit_digits.py` for
`--model=vit`), then every criterion removes `--target_blocks` units, one
per iteration with `--finetune_epochs` of fine-tuning; test accuracy per
iteration, mean and std over seeds. Resumable.

  python benchmarks/sglp_bench.py --part=digits --model=resnet32 \
      --seeds=0,1,2 --criteria=sglp,cka,random --out=/tmp/lpjax_sglp_r32
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time

import jax
import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import digits_runs

from configs import quickstart, vit_digits
from lpjax import cka, models, report
from lpjax.methods import sglp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common

_PART = flags.DEFINE_enum('part', 'cka', ['cka', 'digits'], 'Part.')
_OUT = flags.DEFINE_string('out', '/tmp/lpjax_sglp', 'Output dir (digits).')
_MODEL = flags.DEFINE_string('model', 'resnet32', 'resnet20.. or vit.')
_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds.')
_CRITERIA = flags.DEFINE_list('criteria', ['sglp', 'cka', 'random'], '.')
_TARGET = flags.DEFINE_integer('target_blocks', 3, 'Units removed.')
_BASE_EPOCHS = flags.DEFINE_integer('baseline_epochs', 0, '0: config.')
_FT_EPOCHS = flags.DEFINE_integer('finetune_epochs', 3, 'Epochs.')
_N = flags.DEFINE_integer('n', 500, 'Calibration images.')
_BATCH = flags.DEFINE_integer('batch', 500, 'Images per batch.')
_REPEATS = flags.DEFINE_integer('repeats', 2, 'Warm rounds.')
_METHODS = flags.DEFINE_list(
  'methods',
  ['minibatch'],
  'Methods in order: minibatch, full, cka_matrix, pairwise.',
)
_FULL = flags.DEFINE_bool('full', False, 'Also time the full estimator.')
_PAIRWISE = flags.DEFINE_bool('pairwise', False, 'Also time the pair loop.')
_ALL_METHODS = ('minibatch', 'full', 'cka_matrix', 'pairwise')


def _timed(fn):
  t0 = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - t0


def time_alternating(methods, names, repeats):
  """First calls in order, then `repeats` rounds in alternating order.

  Returns:
    `(outputs, first-call seconds, per-round warm seconds)`, dicts by name;
    the warm lists are aligned by round.
  """
  outs, first = {}, {}
  for name in names:
    outs[name], first[name] = _timed(methods[name])
    print(f'{name:>10}: first call {first[name]:.1f}s', flush=True)
  warm = {name: [] for name in names}
  for r in range(repeats):
    for name in names if r % 2 == 0 else names[::-1]:
      _, t = _timed(methods[name])
      warm[name].append(t)
      print(f'{name:>10}: round {r}, {t:.1f}s', flush=True)
  return outs, first, warm


def _load():
  return ', '.join(f'{v:.2f}' for v in os.getloadavg())


def _config(seed, criterion):
  if _MODEL.value == 'vit':
    c = vit_digits.get_config()
  else:
    c = quickstart.get_config()
    c.model = _MODEL.value
  c.seed = seed
  if _BASE_EPOCHS.value:
    c.baseline.epochs = _BASE_EPOCHS.value
  c.prune.finetune_epochs = _FT_EPOCHS.value
  c.prune.criterion = criterion
  c.prune.target_blocks = _TARGET.value
  return c


def digits():
  out = os.path.abspath(_OUT.value)
  t0 = time.time()
  runs = digits_runs.run_criteria(
    out, list(map(int, _SEEDS.value)), _CRITERIA.value, _config
  )
  summary = {k: report.aggregate(v) for k, v in runs.items()}
  with open(os.path.join(out, 'summary.json'), 'w') as f:
    json.dump(summary, f, indent=1)
  first = summary[_CRITERIA.value[0]]
  print(
    f'\n{_MODEL.value} on digits, {len(_SEEDS.value)} seeds, '
    f'{_FT_EPOCHS.value} fine-tuning epochs per removal\n'
  )
  print(
    '| units removed | FLOPs ↓ % | '
    + ' | '.join(f'{k} acc % (mean ± std)' for k in runs)
    + ' |'
  )
  print('| ---: | ---: |' + ' ---: |' * len(runs))
  for i, it in enumerate(first['iteration']):
    flops = [s['flops_reduction_mean'][i] for s in summary.values()]
    cells = [
      f'{100 * s["accuracy_mean"][i]:.2f} ± {100 * s["accuracy_std"][i]:.2f}'
      for s in summary.values()
    ]
    print(
      f'| {it} | {min(flops):.2f}–{max(flops):.2f} | '
      + ' | '.join(cells)
      + ' |'
    )
  print(f'total {time.time() - t0:.0f}s')


def main(argv):
  del argv
  if _PART.value == 'digits':
    digits()
    return
  names = list(_METHODS.value)
  names += [
    m for m, on in (('full', _FULL), ('pairwise', _PAIRWISE)) if on.value
  ]
  names = list(dict.fromkeys(names))
  unknown = sorted(set(names) - set(_ALL_METHODS))
  if unknown:
    raise app.UsageError(f'Unknown methods {unknown}; use {_ALL_METHODS}.')
  load0 = _load()
  arch = models.get_arch('resnet56')
  variables = models.init_variables(arch, 0)
  x = np.random.default_rng(0).normal(size=(_N.value, 32, 32, 3))
  x = x.astype(np.float32)
  labels = sglp.representation_labels(arch)
  b = _BATCH.value

  def one_call(estimator):
    return sglp.unit_cka_matrix(
      arch, variables, x, estimator=estimator, data_batch_size=b
    )

  model = models.build_model(arch)
  forward = jax.jit(lambda v, x: models.representations(model, v, x, labels))
  pair = jax.jit(cka.linear_cka)
  matrix = jax.jit(cka.cka_matrix)

  def reps():
    out = [forward(variables, x[i : i + b]) for i in range(0, len(x), b)]
    return [
      jax.numpy.concatenate([o[k] for o in out]).reshape(len(x), -1)
      for k in labels
    ]

  def cka_matrix():
    return np.asarray(matrix(reps()), np.float64)

  def loop():
    flat = reps()
    m = np.eye(len(labels))
    for i in range(len(labels)):
      for j in range(i + 1, len(labels)):
        m[i, j] = m[j, i] = float(pair(flat[i], flat[j]))
    return m

  methods = {
    'minibatch': lambda: one_call('minibatch'),
    'full': lambda: one_call('full'),
    'cka_matrix': cka_matrix,
    'pairwise': loop,
  }
  head = (
    f'ResNet-56, n = {_N.value}, batch {b}, {jax.devices()[0].platform}, '
    f'{os.cpu_count()} CPUs, CPU {common.cpu_model()}, jax {jax.__version__}, '
    f'{datetime.date.today().isoformat()}; load average (1, 5, 15 min) at '
    f'the start {load0}'
  )
  print(head, flush=True)
  r = _REPEATS.value
  outs, first, warm = time_alternating(methods, names, r)
  exact = [k for k in ('full', 'cka_matrix', 'pairwise') if k in outs]
  for k in exact[1:]:
    diff = np.max(np.abs(outs[exact[0]] - outs[k]))
    print(f'max |{exact[0]} - {k}| = {diff:.2e}')
  print(f'load average at the end {_load()}\n')
  bases = [k for k in ('minibatch', 'cka_matrix') if k in names]
  print(
    f'| computation | first call (s) | warm (s), median of {r} [quartiles] | '
    + ' | '.join(f'warm / {k}, paired' for k in bases)
    + ' |'
  )
  print('| :--- | ---: | ---: |' + ' ---: |' * len(bases))
  for name in names:
    ratios = [
      common.median_quartiles(
        [a / c for a, c in zip(warm[name], warm[k])], 2, '×'
      )
      for k in bases
    ]
    print(
      f'| {name} | {first[name]:.1f} | {common.median_quartiles(warm[name], 2)} | '
      + ' | '.join(ratios)
      + ' |'
    )


if __name__ == '__main__':
  app.run(main)
