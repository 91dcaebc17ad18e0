"""Robustness, latency and energy evaluation (lpjax.evaluate).

The attacks run on a classifier trained here on scikit-learn's digits (a
one-hidden-layer MLP, 300 full-batch Adam steps: 97 %+ test accuracy in a
second), through the digits dataset's own normalisation, so the pixel
space is the pipeline's. Checks: ε = 0 is the clean input bitwise; every
adversarial input lies in the ε-ball and the valid pixel range; accuracy
under PGD ≤ under FGSM ≤ clean; FGSM against a closed form on a linear
model; PGD is deterministic given its key.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from tolerances import f32_atol

from lpjax import data
from lpjax.evaluate import adversarial, energy, latency


def _arrays(ds, split):
  batches = list(ds.eval_batches(split=split, batch_size=2000))
  (b,) = batches
  keep = b['mask'] > 0
  return b['image'][keep], b['label'][keep]


@pytest.fixture(scope='module')
def digits():
  ds = data.load('digits')
  x_train, y_train = _arrays(ds, 'train')
  x_test, y_test = _arrays(ds, 'test')
  key = jax.random.PRNGKey(0)
  k1, k2 = jax.random.split(key)
  d = int(np.prod(x_train.shape[1:]))
  params = {
    'w1': jax.random.normal(k1, (d, 64)) / np.sqrt(d),
    'b1': jnp.zeros(64),
    'w2': jax.random.normal(k2, (64, 10)) / 8.0,
    'b2': jnp.zeros(10),
  }

  def apply(params, x):
    h = jax.nn.relu(x.reshape(x.shape[0], -1) @ params['w1'] + params['b1'])
    return h @ params['w2'] + params['b2']

  tx = optax.adam(1e-2)

  @jax.jit
  def step(params, opt):
    def loss(p):
      logp = jax.nn.log_softmax(apply(p, x_train))
      return -jnp.mean(logp[jnp.arange(len(y_train)), y_train])

    g = jax.grad(loss)(params)
    updates, opt = tx.update(g, opt)
    return optax.apply_updates(params, updates), opt

  opt = tx.init(params)
  for _ in range(300):
    params, opt = step(params, opt)
  logits_fn = jax.jit(lambda x: apply(params, x))
  space = adversarial.PixelSpace.of_dataset(ds)
  return logits_fn, x_test, y_test, space


EPS = 0.1  # pixel units (pixels in [0, 1])


def test_eps_zero_is_the_clean_input(digits):
  f, x, y, space = digits
  np.testing.assert_array_equal(adversarial.fgsm(f, x, y, 0.0, space), x)
  adv = adversarial.pgd(f, x, y, 0.0, key=jax.random.PRNGKey(1), space=space)
  np.testing.assert_array_equal(adv, x)
  assert adversarial.accuracy(f, adv, y) == adversarial.accuracy(f, x, y)


def test_accuracy_in_short_batches_counts_every_row_once(digits):
  """A short last batch is padded to the compiled shape (one compile) and
  its padding is not counted (oracle: one NumPy argmax)."""
  f, x, y, _ = digits
  logits = np.asarray(f(x))
  right = np.argmax(logits, -1) == y
  # End on a correctly classified row, so that counting the copies of the
  # last row that pad the last batch would raise the accuracy.
  end = int(np.flatnonzero(right)[-1]) + 1
  x, y, logits, right = x[:end], y[:end], logits[:end], right[:end]
  assert end % 100 != 0
  # Rows whose top two logits are within float32 rounding of each other
  # (64 + 64 products through two layers: `f32_atol`) could go either way
  # in a program compiled for another batch shape.
  top2 = np.sort(logits, -1)[:, -2:]
  tie = 2 * f32_atol(64, float(np.abs(logits).max()), 2)
  ties = int(np.sum(top2[:, 1] - top2[:, 0] <= tie))
  compiled = f._cache_size()
  got = adversarial.accuracy(f, x, y, batch=100)
  assert abs(got - right.mean()) <= ties / len(y), (got, right.mean(), ties)
  assert f._cache_size() - compiled <= 1  # the batch of 100 only
  assert adversarial.pad_rows(x[:3], 5).shape == (5, *x.shape[1:])
  np.testing.assert_array_equal(adversarial.pad_rows(x[:3], 5)[3:], x[[2, 2]])


def test_attacks_stay_in_the_ball_and_the_valid_range(digits):
  f, x, y, space = digits
  mean, std = np.asarray(space.mean), np.asarray(space.std)
  p = x * std + mean
  # q and p each take three float32 roundings of values of magnitude <= 1.
  ulp = f32_atol(3, 1.0)
  for adv in (
    adversarial.fgsm(f, x, y, EPS, space),
    adversarial.pgd(f, x, y, EPS, key=jax.random.PRNGKey(1), space=space),
  ):
    q = np.asarray(adv) * std + mean
    assert np.abs(q - p).max() <= EPS + ulp
    assert q.min() >= -ulp and q.max() <= 1 + ulp
    assert np.abs(q - p).max() >= EPS - ulp  # the budget is used


def test_pgd_is_at_most_fgsm_is_at_most_clean(digits):
  f, x, y, space = digits
  clean = adversarial.accuracy(f, x, y)
  fgsm = adversarial.accuracy(f, adversarial.fgsm(f, x, y, EPS, space), y)
  adv = adversarial.pgd(f, x, y, EPS, key=jax.random.PRNGKey(1), space=space)
  pgd = adversarial.accuracy(f, adv, y)
  assert clean > 0.9  # a trained model
  assert pgd <= fgsm < clean, (pgd, fgsm, clean)
  # Deterministic given the key.
  again = adversarial.pgd(f, x, y, EPS, key=jax.random.PRNGKey(1), space=space)
  np.testing.assert_array_equal(adv, again)


def test_fgsm_equals_the_closed_form_of_a_linear_model():
  # Logits W x: the cross-entropy's gradient in pixels is (softmax − onehot)
  # W / std, whose sign with the range clip gives δ exactly.
  rng = np.random.default_rng(0)
  w = rng.normal(size=(6, 3)).astype(np.float32)
  x = rng.uniform(-1, 1, size=(5, 6)).astype(np.float32)
  y = np.array([0, 1, 2, 0, 1], np.int32)
  # Pixels p = 0.5 x + 0.5 span [0, 1]: the range clip acts near the ends.
  space = adversarial.PixelSpace(mean=0.5, std=0.5)
  f = jax.jit(lambda v: v @ w)
  z = x.astype(np.float64) @ w
  s = np.exp(z - z.max(1, keepdims=True))
  s /= s.sum(1, keepdims=True)
  s[np.arange(5), y] -= 1
  g = s @ w.T.astype(np.float64)
  p = x.astype(np.float64) * 0.5 + 0.5
  delta = np.clip(np.clip(0.2 * np.sign(g), -p, 1 - p), -0.2, 0.2)
  assert np.any(np.abs(delta) < 0.2)  # the clip acted somewhere
  got = np.asarray(adversarial.fgsm(f, x, y, 0.2, space))
  np.testing.assert_allclose(got, x + delta / 0.5, rtol=0, atol=f32_atol(3))
  # One PGD step of size ε from the clean input is FGSM.
  one = adversarial.pgd(
    f, x, y, 0.2, steps=1, step_size=0.2, random_start=False, space=space
  )
  np.testing.assert_allclose(one, got, rtol=0, atol=f32_atol(3))


def test_bad_attack_arguments_are_refused():
  f = jax.jit(lambda v: v)
  x, y = np.zeros((2, 3), np.float32), np.zeros(2, np.int32)
  with pytest.raises(ValueError, match='eps'):
    adversarial.fgsm(f, x, y, -0.1)
  with pytest.raises(ValueError, match='key'):
    adversarial.pgd(f, x, y, 0.1)
  with pytest.raises(ValueError, match='steps'):
    adversarial.pgd(f, x, y, 0.1, steps=0, key=jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match='std'):
    adversarial.PixelSpace(std=0.0)


def test_latency_excludes_compile_and_records_the_device():
  f = jax.jit(lambda v: jnp.tanh(v @ v.T).sum())
  x = jnp.ones((64, 64))
  r = latency.measure(f, x, runs=5, warmup=1)
  assert r['runs'] == 5 and r['batch'] == 64
  assert 0 < r['min_ms'] <= r['median_ms'] and r['iqr_ms'] >= 0
  assert r['backend'] == jax.default_backend() and r['cpu_threads'] >= 1
  assert latency.speedup(r, r) == 1.0
  with pytest.raises(ValueError, match='batch'):
    latency.speedup(r, {**r, 'batch': 1})


def test_energy_is_never_an_estimate_without_a_counter():
  r = energy.measure(
    jax.jit(lambda v: v + 1), jnp.ones(3), runs=2, min_seconds=0.5
  )
  backend = jax.default_backend()
  if backend != 'gpu':
    assert r == {
      'measured': False,
      'reason': f'no GPU (JAX backend {backend!r})',
    }
    assert energy.describe(r).startswith('not measured')
  elif r['measured']:  # a GPU draws power even idle: > 0 over 0.5 s
    assert r['joules_per_call'] > 0 and r['runs'] >= 2
  else:
    assert r['reason']


def test_latency_times_the_compile_apart_from_the_runs():
  """`measure` times the first call (trace and compile) as `compile_s` and
  only later calls as runs. Tracing here sleeps 0.5 s (a compile made
  slow, deterministically: it runs on the first call only) and every run
  sleeps 20 ms in a host callback (work that `block_until_ready` waits
  for). With one run and no warm-up, a first call counted among the runs
  would make the median ≥ 500 ms; a compile timed elsewhere would leave
  `compile_s` < 0.5 s."""
  import time

  traces = []

  def host(v):
    time.sleep(0.02)
    return v + 1

  def fn(v):
    traces.append(1)
    time.sleep(0.5)
    out = jax.ShapeDtypeStruct(v.shape, v.dtype)
    return jax.pure_callback(host, out, v)

  f = jax.jit(fn)
  x = jnp.ones(3)
  r = latency.measure(f, x, runs=1, warmup=0)
  assert len(traces) == 1
  assert r['compile_s'] >= 0.5, r
  assert 20 <= r['min_ms'] <= r['median_ms'] < 500, r
  # Compiled already: no trace, so the first call is a run's length.
  again = latency.measure(f, x, runs=3, warmup=1)
  assert len(traces) == 1
  assert 0.02 <= again['compile_s'] < 0.5, again
  assert 20 <= again['median_ms'] < 500, again
