r"""Filter scoring: every filter's KL in one compiled call vs a Python loop of
masked forwards, and the other filter criteria, side by side in one run.

  python benchmarks/filter_scoring_bench.py --model=resnet32 --n=200

A ResNet on 8x8 digits-shaped inputs with random weights (the cost does not
depend on the weights); times are wall seconds, median of `--repeats` warm
calls, the first call (compile included) reported apart.
"""

import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lpjax import methods, models
from lpjax.methods import filters

_MODEL = flags.DEFINE_string('model', 'resnet32', 'CIFAR ResNet.')
_N = flags.DEFINE_integer('n', 200, 'Calibration images.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Warm calls per variant.')
_CHUNK = flags.DEFINE_integer('chunk', 16, 'Masked forwards at a time.')


def _time(fn, repeats):
  t0 = time.perf_counter()
  out = fn()
  first = time.perf_counter() - t0
  warm = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    warm.append(time.perf_counter() - t0)
  return first, float(np.median(warm)), out


def main(argv):
  del argv
  shape = (8, 8, 1)
  arch = models.get_arch(_MODEL.value, num_classes=10)
  variables = models.init_variables(arch, 0, shape)
  x = np.asarray(jax.random.normal(jax.random.key(1), (_N.value, *shape)))
  ctx = methods.Context(
    arch=arch,
    variables=variables,
    inputs=x,
    labels=np.zeros(_N.value, np.int32),
    hparams={'filter_chunk': _CHUNK.value},
    data_batch_size=_N.value,
  )
  total = sum(w for *_, w in models.prunable_filters(arch))
  model = models.build_model(arch)
  forward = jax.jit(lambda v, x, m: model.apply(v, x, filter_mask=m))

  def loop():
    logp = jax.nn.log_softmax(forward(variables, x, jnp.ones(total)))
    out = []
    for i in range(total):
      mask = jnp.ones(total).at[i].set(0.0)
      logq = jax.nn.log_softmax(forward(variables, x, mask))
      out.append(jnp.mean(jnp.sum(jnp.exp(logp) * (logp - logq), -1)))
    return np.asarray(jnp.stack(out))

  rows = []
  one = _time(lambda: filters.kl_scores(ctx), _REPEATS.value)
  many = _time(loop, _REPEATS.value)
  got = np.concatenate(list(one[2].values()))
  diff = float(np.max(np.abs(got - many[2])))
  rows.append(('kl, one compiled call', one[0], one[1]))
  rows.append(('kl, loop of masked forwards', many[0], many[1]))
  for name in ('hrank', 'l1'):
    t = _time(lambda n=name: filters.FILTER_CRITERIA[n](ctx), _REPEATS.value)
    rows.append((name, t[0], t[1]))
  print(
    f'{_MODEL.value}, {total} prunable filters, {_N.value} images 8x8, '
    f'chunk {_CHUNK.value}, {jax.device_count()} {jax.devices()[0].platform} '
    f'device(s), {os.cpu_count()} CPUs; max |one call - loop| = {diff:.2e}'
  )
  print('| filter scores | first call s | warm s (median) |')
  print('| :--- | ---: | ---: |')
  for name, first, warm in rows:
    print(f'| {name} | {first:.2f} | {warm:.2f} |')
  print(f'loop / one call (warm): {many[1] / one[1]:.2f}x')


if __name__ == '__main__':
  app.run(main)
