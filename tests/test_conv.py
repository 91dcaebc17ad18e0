"""`lpjax.models.conv`: both convolution forms against a float64 NumPy
convolution, the fusion barrier, and a tiny ResNet under every backend.

The oracle is written here: the padded input's `kh * kw` strided windows
times the kernel, summed in float64 (`_conv64`), and the VJP of that sum
written out (`_conv64_vjp`). Tolerances follow `tests/tolerances.py`: a
convolution output sums `kh * kw * in` products, a kernel gradient
`batch * oh * ow`, an input gradient at most `kh * kw * out`; the scale is
the largest sum of absolute products (`_conv64` of the absolute values).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lpjax import errors, models
from lpjax.models import conv as conv_lib
from tests.tolerances import assert_f32_close

# (kernel, stride, padding, input size): SAME with odd and even sizes (the
# even, strided case pads only bottom/right), explicit symmetric padding,
# and the 1x1 projection shortcut.
CASES = [
  (3, 1, 'SAME', 7),
  (3, 2, 'SAME', 8),
  (3, 2, 'SAME', 7),
  (3, 2, ((1, 1), (1, 1)), 8),
  (1, 2, 'VALID', 8),
  (1, 1, 'SAME', 5),
]


def _pads(padding, size, k, s):
  if padding == 'SAME':
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return ((total // 2, total - total // 2),) * 2
  if padding == 'VALID':
    return ((0, 0), (0, 0))
  return padding


def _windows(x, k, s, pads):
  """`[kh, kw, n, oh, ow, c]` float64 strided windows of the padded x."""
  (t, b), (lf, r) = pads
  xp = np.pad(np.asarray(x, np.float64), ((0, 0), (t, b), (lf, r), (0, 0)))
  oh = (xp.shape[1] - k) // s + 1
  ow = (xp.shape[2] - k) // s + 1
  return np.stack(
    [
      np.stack(
        [
          xp[:, i : i + (oh - 1) * s + 1 : s, j : j + (ow - 1) * s + 1 : s]
          for j in range(k)
        ]
      )
      for i in range(k)
    ]
  )


def _conv64(x, w, s, pads):
  win = _windows(x, w.shape[0], s, pads)
  return np.einsum('ijnhwc,ijco->nhwo', win, np.asarray(w, np.float64))


def _conv64_vjp(x, w, s, pads, g):
  """(dL/dx, dL/dw) of `sum(g * _conv64(x, w))`, in float64."""
  k = w.shape[0]
  g = np.asarray(g, np.float64)
  win = _windows(x, k, s, pads)
  dw = np.einsum('ijnhwc,nhwo->ijco', win, g)
  (t, b), (lf, r) = pads
  n, h, wd, c = x.shape
  dxp = np.zeros((n, h + t + b, wd + lf + r, c))
  oh, ow = g.shape[1:3]
  for i in range(k):
    for j in range(k):
      dxp[:, i : i + (oh - 1) * s + 1 : s, j : j + (ow - 1) * s + 1 : s] += (
        np.einsum('nhwo,co->nhwc', g, np.asarray(w[i, j], np.float64))
      )
  return dxp[:, t : t + h, lf : lf + wd], dw


@pytest.mark.parametrize('backend', ['xla', 'matmul'])
@pytest.mark.parametrize('k,s,padding,size', CASES)
def test_conv2d_matches_float64(backend, k, s, padding, size):
  rng = np.random.default_rng(k * 100 + s * 10 + size)
  cin, cout = 3, 5
  x = rng.normal(size=(2, size, size, cin)).astype(np.float32)
  w = rng.normal(size=(k, k, cin, cout)).astype(np.float32)
  pads = _pads(padding, size, k, s)
  want = _conv64(x, w, s, pads)

  def f(x, w):
    return conv_lib.conv2d(x, w, s, padding, backend=backend)

  got, vjp = jax.jit(lambda x, w: jax.vjp(f, x, w))(x, w)
  assert got.shape == want.shape
  scale = _conv64(np.abs(x), np.abs(w), s, pads).max()
  assert_f32_close(got, want, terms=k * k * cin, scale=scale)

  g = rng.normal(size=want.shape).astype(np.float32)
  dx, dw = jax.jit(vjp)(g)
  want_dx, want_dw = _conv64_vjp(x, w, s, pads, g)
  abs_dx, abs_dw = _conv64_vjp(np.abs(x), np.abs(w), s, pads, np.abs(g))
  assert_f32_close(dx, want_dx, terms=k * k * cout, scale=abs_dx.max())
  n_out = want.shape[0] * want.shape[1] * want.shape[2]
  assert_f32_close(dw, want_dw, terms=n_out, scale=abs_dw.max())


def test_conv_module_is_flax_conv_drop_in():
  """Same variable names, shapes and initial values as `nn.Conv`."""
  x = jnp.ones((1, 6, 6, 3))
  kw = dict(features=4, kernel_size=(3, 3), strides=(2, 2), padding='SAME')
  ours = conv_lib.Conv(**kw).init(jax.random.key(0), x)
  theirs = nn.Conv(**kw).init(jax.random.key(0), x)
  assert jax.tree.structure(ours) == jax.tree.structure(theirs)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
    np.testing.assert_array_equal(a, b)


def test_fusion_barrier_is_exact_identity(monkeypatch):
  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4)), jnp.float32)
  x = x.at[0, 0].set(jnp.nan)  # the predicate's NaN branch is identity too
  monkeypatch.setenv(conv_lib.BARRIER_ENV_VAR, 'on')
  f = jax.jit(lambda x: conv_lib.fusion_barrier(x * 2.0))
  np.testing.assert_array_equal(f(x), x * 2.0)
  assert 'conditional' in f.lower(x).compile().as_text()
  g = jax.grad(lambda x: jnp.sum(conv_lib.fusion_barrier(x) * 3.0))(x)
  np.testing.assert_array_equal(g, np.full(x.shape, 3.0, np.float32))
  monkeypatch.setenv(conv_lib.BARRIER_ENV_VAR, 'off')
  text = jax.jit(conv_lib.fusion_barrier).lower(x).compile().as_text()
  assert 'conditional' not in text


def test_bad_settings_raise_user_errors(monkeypatch):
  monkeypatch.setenv(conv_lib.ENV_VAR, 'fast')
  with pytest.raises(errors.UserError, match='LPJAX_CONV'):
    conv_lib.backend_name()
  with pytest.raises(errors.UserError, match='backend argument'):
    conv_lib.backend_name('cudnn')
  monkeypatch.setenv(conv_lib.BARRIER_ENV_VAR, 'maybe')
  with pytest.raises(errors.UserError, match='LPJAX_FUSION_BARRIER'):
    conv_lib.barrier_enabled()
  monkeypatch.setenv(conv_lib.ENV_VAR, 'auto')
  assert conv_lib.backend_name() == 'xla'


def test_tiny_resnet_same_under_every_backend(monkeypatch):
  """Logits and parameter gradients of a tiny ResNet (a strided 3x3 conv,
  1x1 projections, BatchNorm in training mode) agree across the backends
  and with the barrier on and off; the variables are identical."""
  arch = models.get_arch('resnet20', width=4, blocks_per_stage=(2, 1, 1))
  x = np.random.default_rng(1).normal(size=(4, 8, 8, 3)).astype(np.float32)
  results = {}
  for backend, barrier in (('xla', 'off'), ('xla', 'on'), ('matmul', 'on')):
    monkeypatch.setenv(conv_lib.ENV_VAR, backend)
    monkeypatch.setenv(conv_lib.BARRIER_ENV_VAR, barrier)
    variables = models.init_variables(arch, 0, (8, 8, 3))
    model = models.build_model(arch)

    def loss(params, variables=variables, model=model):
      v = {**variables, 'params': params}
      logits, _ = model.apply(v, x, train=True, mutable=['batch_stats'])
      return jnp.sum(logits * jnp.arange(1.0, 11.0)), logits

    (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(
      variables['params']
    )
    results[backend, barrier] = (variables, logits, grads)
  ref_vars, ref_logits, ref_grads = results['xla', 'off']
  # 9 convolutions deep, at most 9 * 16 products per output.
  depth, terms = 9, 9 * 16
  for key, (variables, logits, grads) in results.items():
    assert jax.tree.structure(variables) == jax.tree.structure(ref_vars)
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(ref_vars)):
      np.testing.assert_array_equal(a, b)
    assert_f32_close(logits, ref_logits, terms=terms, depth=depth)
    for (path, g), r in zip(
      jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(ref_grads)
    ):
      assert_f32_close(
        g, r, terms=terms * 4 * 64, depth=depth, err_msg=f'{key} {path}'
      )


@pytest.mark.parametrize(
  'env, name',
  [({'LPJAX_CONV': 'bogus'}, 'LPJAX_CONV'),
   ({'LPJAX_FUSION_BARRIER': 'maybe'}, 'LPJAX_FUSION_BARRIER')],
)  # fmt: skip
def test_a_bad_setting_stops_a_run_before_any_work(tmp_path, env, name):
  """`main.py` prints one `error:` line naming the variable, exits 2, and
  creates no workdir."""
  import os
  import subprocess
  import sys

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  workdir = tmp_path / 'run'
  out = subprocess.run(
    [sys.executable, 'main.py', '--config=configs/quickstart.py',
     f'--workdir={workdir}'],
    env={**os.environ, **env}, cwd=root, capture_output=True, text=True,
    timeout=300,
  )  # fmt: skip
  said = [s for s in out.stderr.splitlines() if s.startswith('error:')]
  assert out.returncode == 2, out.stderr[-2000:]
  assert len(said) == 1 and name in said[0]
  assert not workdir.exists()
