"""SGLP's CKA matrix: one compiled call against a loop of pairwise CKA.

ResNet-56 (CIFAR layout, 27 blocks + stem = 28 representations, random
init: the timing does not depend on the weights) on `--n` random 32x32x3
images. Times, first call (compilation included) and the best of
`--repeats` warm calls:

  * `minibatch`: `lpjax.methods.sglp.unit_cka_matrix` (forward + minibatch
    CKA accumulation over `--batch`-image batches, one `lax.scan`);
  * `full`: the same call with the full-batch biased estimator
    (`--full`; memory `n * 274,432` floats);
  * `pairwise`: one compiled forward capturing the 28 outputs, then
    `lpjax.cka.linear_cka` (jitted) on each of the 378 pairs i < j
    (`--pairwise`; the same memory as `full`).

It checks that `full` equals the pairwise matrix and prints a Markdown
table.

  python benchmarks/sglp_bench.py --n=5000 --repeats=1
  python benchmarks/sglp_bench.py --n=500 --full --pairwise --repeats=2

`--part=digits`: SGLP against other criteria at equal FLOPs on digits,
through the pipeline (`main.py`'s code path): per seed one baseline
(`configs/quickstart.py` with `--model`, or `configs/vit_digits.py` for
`--model=vit`), then every criterion removes `--target_blocks` units, one
per iteration with `--finetune_epochs` of fine-tuning; test accuracy per
iteration, mean and std over seeds. Resumable.

  python benchmarks/sglp_bench.py --part=digits --model=resnet32 \
      --seeds=0,1,2 --criteria=sglp,cka,random --out=/tmp/lpjax_sglp_r32
"""

import json
import os
import platform
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
_REPEATS = flags.DEFINE_integer('repeats', 2, 'Warm calls.')
_FULL = flags.DEFINE_bool('full', False, 'Also time the full estimator.')
_PAIRWISE = flags.DEFINE_bool('pairwise', False, 'Also time the pair loop.')


def _timed(fn, repeats):
  t0 = time.perf_counter()
  out = fn()
  first = time.perf_counter() - t0
  warm = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    warm.append(time.perf_counter() - t0)
  return out, first, min(warm) if warm else float('nan')


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
  arch = models.get_arch('resnet56')
  variables = models.init_variables(arch, 0)
  x = np.random.default_rng(0).normal(size=(_N.value, 32, 32, 3))
  x = x.astype(np.float32)
  labels = sglp.representation_labels(arch)
  rows = []

  def one_call(estimator):
    return sglp.unit_cka_matrix(
      arch, variables, x, estimator=estimator, data_batch_size=_BATCH.value
    )

  _, first, warm = _timed(lambda: one_call('minibatch'), _REPEATS.value)
  rows.append(('one call, minibatch CKA', first, warm))
  if _FULL.value:
    full, first, warm = _timed(lambda: one_call('full'), _REPEATS.value)
    rows.append(('one call, full-batch CKA', first, warm))
  if _PAIRWISE.value:
    model = models.build_model(arch)
    forward = jax.jit(lambda v, x: models.representations(model, v, x, labels))
    pair = jax.jit(cka.linear_cka)

    def loop():
      reps = forward(variables, x)
      flat = [reps[n].reshape(x.shape[0], -1) for n in labels]
      m = np.eye(len(labels))
      for i in range(len(labels)):
        for j in range(i + 1, len(labels)):
          m[i, j] = m[j, i] = float(pair(flat[i], flat[j]))
      return m

    pairwise, first, warm = _timed(loop, _REPEATS.value)
    rows.append(('forward + 378 pairwise linear_cka', first, warm))
    if _FULL.value:
      print(f'max |full - pairwise| = {np.max(np.abs(full - pairwise)):.2e}')
  print(
    f'ResNet-56, n = {_N.value}, batch {_BATCH.value}, '
    f'{jax.devices()[0].platform}, {os.cpu_count()} CPUs, '
    f'{platform.processor() or platform.machine()}, jax {jax.__version__}\n'
  )
  print('| computation | first call (s) | warm (s) |')
  print('| :--- | ---: | ---: |')
  for name, first, warm in rows:
    print(f'| {name} | {first:.1f} | {warm:.1f} |')


if __name__ == '__main__':
  app.run(main)
