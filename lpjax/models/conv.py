"""2-D convolutions for the model families, and a fusion barrier for XLA:CPU.

`Conv` is a drop-in for `flax.linen.Conv` (NHWC inputs, a `kernel`
`[kh, kw, in, out]` and a `bias` `[out]` parameter, the same names, shapes
and initialisers), so checkpoints, surgery and the Keras importer and
exporter see the same variables. How the convolution is computed is a
process-wide choice, `LPJAX_CONV=auto|xla|matmul` (read when a model is
traced; `Conv(backend=...)` overrides it for one layer):

* `'xla'`: `lax.conv_general_dilated`, XLA's convolution.
* `'matmul'`: the `kh * kw` shifted (strided) slices of the padded input
  concatenated along the channels into patches `[batch, oh, ow, kh * kw *
  in]`, times the kernel reshaped to `[kh * kw * in, out]` (one
  `dot_general`); its gradients are matmuls, pads and adds.
* `'auto'` (default): `'xla'` on every backend. On a 2-core AVX-512 EPYC the
  patches form made the ResNet-56 train step about 2x slower than XLA's
  convolution (XLA:CPU's matmuls with 16 output channels run at 20-30
  GFLOP/s), so it is kept only as an option and a cross-check.

Both forms sum the same products in different orders: they agree to float32
rounding.

`fusion_barrier(x)` is the identity, computed so that XLA cannot fuse
through it (`LPJAX_FUSION_BARRIER=auto|on|off`, `'auto'`: on for the CPU).
Without it, XLA:CPU fuses the whole chain of residual additions, BatchNorms
and ReLUs that produced a ResNet block's input into every element-wise
consumer of that input (the transposed copies that convolution weight
gradients read, the patches above), recomputing it there: work that grows
with the square of the depth. ResNet-56's train step ran 2.1x faster with a
barrier after every block (`benchmarks/train_step_tf.py`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from lpjax import errors

BACKENDS = ('auto', 'xla', 'matmul')
ENV_VAR = 'LPJAX_CONV'
BARRIER_MODES = ('auto', 'on', 'off')
BARRIER_ENV_VAR = 'LPJAX_FUSION_BARRIER'

Padding = str | Sequence[tuple[int, int]]


def _check_backend(name: str, where: str) -> str:
  if name not in BACKENDS:
    raise errors.UserError(
      f'Unknown convolution backend {name!r} in {where}; valid backends: '
      f'{", ".join(BACKENDS)} (e.g. {ENV_VAR}=auto).'
    )
  return name


def backend_name(backend: str | None = None) -> str:
  """The backend a convolution uses: `'xla'` or `'matmul'`.

  Args:
    backend: `'auto'`, `'xla'` or `'matmul'`; `None` reads `LPJAX_CONV`
      (default `'auto'`).

  Raises:
    UserError: for an unknown backend name.
  """
  if backend is None:
    backend = _check_backend(
      os.environ.get(ENV_VAR, 'auto').strip().lower() or 'auto',
      f'the environment variable {ENV_VAR}',
    )
  else:
    backend = _check_backend(backend, 'the backend argument')
  if backend == 'auto':
    return 'xla'
  return backend


def check_environment() -> None:
  """Refuses unknown `LPJAX_CONV` / `LPJAX_FUSION_BARRIER` values (a run
  calls it before any work).

  Raises:
    UserError: naming the variable and its valid values.
  """
  backend_name()
  barrier_enabled()


def barrier_enabled() -> bool:
  """Whether `fusion_barrier` acts (`LPJAX_FUSION_BARRIER`, default auto:
  on where JAX's default backend is the CPU).

  Raises:
    UserError: for an unknown `LPJAX_FUSION_BARRIER` value.
  """
  mode = os.environ.get(BARRIER_ENV_VAR, 'auto').strip().lower() or 'auto'
  if mode not in BARRIER_MODES:
    raise errors.UserError(
      f'Unknown {BARRIER_ENV_VAR}={mode!r}; valid values: '
      f'{", ".join(BARRIER_MODES)}.'
    )
  if mode == 'auto':
    return jax.default_backend() == 'cpu'
  return mode == 'on'


def _unfusible_identity(x: jax.Array, token: jax.Array) -> jax.Array:
  # A conditional is never fused, and XLA cannot drop it: its predicate
  # (false only where `token` is NaN) is known only at run time. Both
  # branches return `x` unchanged (`t * 1` is exact), so the result is `x`,
  # materialised once for all its consumers.
  return lax.cond(token == token, lambda t: t, lambda t: t * 1, x)


@jax.custom_vjp
def _barrier(x: jax.Array, token: jax.Array) -> jax.Array:
  return _unfusible_identity(x, token)


def _barrier_fwd(x, token):
  return _unfusible_identity(x, token), token


def _barrier_bwd(token, g):
  return _unfusible_identity(g, token), jnp.zeros_like(token)


_barrier.defvjp(_barrier_fwd, _barrier_bwd)


def fusion_barrier(x: jax.Array, token: jax.Array | None = None) -> jax.Array:
  """`x`, materialised so that XLA cannot fuse its producers into its
  consumers (nor, under `jax.grad`, its cotangent's), where
  `barrier_enabled()`; else `x` itself.

  Args:
    x: any array.
    token: a scalar the predicate is computed from, best a replicated,
      unbatched value such as a parameter entry: a predicate read from a
      batch-sharded `x` costs a cross-device broadcast per barrier, and one
      from a `vmap`-batched `x` turns the conditional into a select (no
      barrier). Default: the first element of `x`. It gets a zero gradient.

  Reverse-mode differentiable (a `custom_vjp`: forward-mode `jax.jvp`
  through it raises; set `LPJAX_FUSION_BARRIER=off` for that).
  """
  if not barrier_enabled() or x.size == 0:
    return x
  token = x.reshape(-1)[0] if token is None else jnp.reshape(token, (-1,))[0]
  return _barrier(x, lax.stop_gradient(token).astype(jnp.float32))


def _pairs(value: int | Sequence[int], n: int = 2) -> tuple[int, ...]:
  if isinstance(value, int):
    return (value,) * n
  return tuple(int(v) for v in value)


def explicit_padding(
  padding: Padding,
  in_size: Sequence[int],
  kernel: Sequence[int],
  strides: Sequence[int],
) -> tuple[tuple[int, int], ...]:
  """`((low, high), ...)` per spatial dimension for a padding spec.

  `'SAME'` pads `max((out - 1) * stride + k - size, 0)` in total, the
  smaller half first (TensorFlow's rule, as `lax.padtype_to_pads`);
  `'VALID'` pads nothing.
  """
  if isinstance(padding, str):
    return tuple(
      tuple(p) for p in lax.padtype_to_pads(in_size, kernel, strides, padding)
    )
  return tuple((int(lo), int(hi)) for lo, hi in padding)


def conv2d(
  x: jax.Array,
  kernel: jax.Array,
  strides: int | Sequence[int] = 1,
  padding: Padding = 'SAME',
  *,
  backend: str | None = None,
) -> jax.Array:
  """A 2-D convolution, NHWC input, HWIO kernel, NHWC output, no bias.

  Args:
    x: `[batch, height, width, in]`.
    kernel: `[kh, kw, in, out]`.
    strides: an int or `(sh, sw)`.
    padding: `'SAME'`, `'VALID'` or `((top, bottom), (left, right))`.
    backend: `'auto'`, `'xla'` or `'matmul'` (see the module docstring);
      `None` reads `LPJAX_CONV`.

  Returns:
    `[batch, out_height, out_width, out]` in the result dtype of `x` and
    `kernel`.
  """
  strides = _pairs(strides)
  kh, kw, cin, cout = kernel.shape
  pads = explicit_padding(padding, x.shape[1:3], (kh, kw), strides)
  if backend_name(backend) == 'xla':
    return lax.conv_general_dilated(
      x, kernel, strides, pads, dimension_numbers=('NHWC', 'HWIO', 'NHWC')
    )
  n, h, w, _ = x.shape
  (t, b), (lf, r) = pads
  oh = (h + t + b - kh) // strides[0] + 1
  ow = (w + lf + r - kw) // strides[1] + 1
  if (kh, kw) == (1, 1) and t + b + lf + r == 0:
    patches = x[:, : (oh - 1) * strides[0] + 1 : strides[0]]
    patches = patches[:, :, : (ow - 1) * strides[1] + 1 : strides[1]]
  else:
    xp = lax.pad(
      x, jnp.zeros((), x.dtype), ((0, 0, 0), (t, b, 0), (lf, r, 0), (0, 0, 0))
    )
    cols = [
      lax.slice(
        xp,
        (0, i, j, 0),
        (n, i + (oh - 1) * strides[0] + 1, j + (ow - 1) * strides[1] + 1, cin),
        (1, strides[0], strides[1], 1),
      )
      for i in range(kh)
      for j in range(kw)
    ]
    patches = jnp.concatenate(cols, axis=-1)
  # Patch channel order (i, j, c) matches the kernel's row-major layout.
  y = lax.dot_general(
    patches.reshape(n * oh * ow, kh * kw * cin),
    kernel.reshape(kh * kw * cin, cout),
    (((1,), (0,)), ((), ())),
  )
  return y.reshape(n, oh, ow, cout)


class Conv(nn.Module):
  """`flax.linen.Conv`'s 2-D NHWC case, computed by `conv2d`.

  Attributes:
    features: output channels.
    kernel_size: `(kh, kw)`.
    strides: an int or `(sh, sw)`.
    padding: `'SAME'`, `'VALID'` or `((top, bottom), (left, right))`.
    use_bias: add a `bias` parameter.
    dtype: computation dtype (`None`: inferred from input and params).
    param_dtype: parameter dtype.
    kernel_init: initialiser of `kernel` `[kh, kw, in, out]`.
    bias_init: initialiser of `bias` `[out]`.
    backend: `'auto'`, `'xla'` or `'matmul'`; `None` reads `LPJAX_CONV`.
  """

  features: int
  kernel_size: Sequence[int]
  strides: int | Sequence[int] = 1
  padding: Padding = 'SAME'
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros_init()
  backend: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kh, kw = _pairs(self.kernel_size)
    kernel = self.param(
      'kernel',
      self.kernel_init,
      (kh, kw, x.shape[-1], self.features),
      self.param_dtype,
    )
    bias = (
      self.param('bias', self.bias_init, (self.features,), self.param_dtype)
      if self.use_bias
      else None
    )
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = conv2d(x, kernel, self.strides, self.padding, backend=self.backend)
    if bias is not None:
      y = y + bias
    return y
