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
"""

import os
import platform
import sys
import time

import jax
import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lpjax import cka, models
from lpjax.methods import sglp

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


def main(argv):
  del argv
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
