"""LLaMA-style decoder-only language models, as an lpjax family.

Token ids `[batch, T]` are embedded, then each layer is pre-norm with
RMSNorm (Zhang & Sennrich 2019), causal grouped-query attention with rotary
position embeddings (RoPE, Su et al. 2021), and a SwiGLU MLP:

    y = x + Wo · Attention(RoPE(Wq h), RoPE(Wk h), Wv h),  h = RMSNorm(x)
    z = y + Wdown · (SiLU(Wgate g) ⊙ Wup g),               g = RMSNorm(y)

with `heads` query heads sharing `kv_heads` key/value heads (each key/value
head serves `heads / kv_heads` query heads). A final RMSNorm gives the
hidden states; the logits are their product with the token embedding matrix
(`tied=True`, SmolLM2) or with a separate `lm_head`. RoPE rotates the two
halves of each head's features (the Hugging Face layout; the GGUF importer
undoes llama.cpp's interleaved row order, `lpjax.interop.gguf_llama`).

Representations: every layer's output `[batch, T, D]`; `pooled`, the mean
over tokens of the final normed hidden states; `last`, the last token's
final normed hidden state (what next-token prediction reads); `logits`
`[batch, T, vocab]`. There is no padding: calibration and evaluation text
is cut into full-length windows.

Every layer is a candidate (floor `min_blocks_per_stage`); skipping one
returns its input, the model with that layer deleted. Filter surgery may
shrink a layer's MLP width (`gate`/`up` outputs, `down` inputs).

FLOPs (multiply-accumulates per sequence of `T` tokens, `macs`), width `D`,
`H` query and `G` key/value heads of `D / H` features, MLP width `M_l`:

    Σ_l [ T D² + 2 T D (D G / H) + T² D + T² D + T D² + 3 T D M_l ]
          Wq     Wk, Wv            QKᵀ    AV     Wo     SwiGLU
  + T D V                                          logits (V: vocabulary)

The attention products are counted in full (T², as computed; the causal
mask, and a sliding window, discard some of them). Bias additions are not
multiply-accumulates. Norms, RoPE, softmax, SiLU and the embedding
look-up are not counted.

Held-out evaluation and the next-token loss (perplexity, agreement,
chunked logits) are in `lpjax.models.next_token`.

LoRA healing (`lpjax.healing`) adapts the MLP kernels `gate`, `up` and
`down` of every layer (`lora_targets`). It differentiates a decoder built
with `remat=True`: each layer is rematerialised (`remat_layer`), so the
gradient keeps every layer's input rather than every layer's attention
weights and MLP activations (scoring and evaluation never differentiate
and leave it off).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lpjax import arch as arch_lib
from lpjax.models import encoder as encoder_lib
from lpjax.models import family as family_lib

_DENSE_INIT = nn.initializers.normal(0.02)
_MLP_KERNELS = ('gate', 'up', 'down')


class RMSNorm(nn.Module):
  """`x / sqrt(mean(x²) + eps) * scale`, computed in float32."""

  eps: float

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param('scale', nn.initializers.ones, (x.shape[-1],))
    x32 = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    return (x32 * jax.lax.rsqrt(var + self.eps)).astype(x.dtype) * scale


ROPE_SCALINGS = ('linear', 'dynamic', 'llama3')
# Arch options of RoPE scaling, absent without it: the type, its factor and
# the type's own numbers (see `inverse_frequencies`).
_ROPE_OPTIONS = (
  'rope_scaling',
  'rope_factor',
  'rope_low_freq_factor',
  'rope_high_freq_factor',
  'rope_original_max_len',
  'rope_max_len',
)


def inverse_frequencies(
  dh: int, theta: float, scaling: Any = (), t: int = 0
) -> np.ndarray:
  """RoPE's `dh / 2` inverse frequencies (float64), scaled as transformers
  defines each type (`modeling_rope_utils.py`, transformers 5.24.0).

  Unscaled: `inv_i = theta^(-2i/dh)`. With `scaling` (pairs or a mapping of
  the decoder's `rope_*` options, `f = rope_factor`):

  * `linear` (`_compute_linear_scaling_rope_parameters`): `inv_i / f`;
  * `dynamic` (NTK, `_compute_dynamic_ntk_parameters`): for an input of
    `t` positions longer than `L = rope_max_len` (the checkpoint's
    `max_position_embeddings`) the base becomes
    `theta · (f t / L − (f − 1))^(dh / (dh − 2))`; for `t <= L` the
    frequencies are unscaled. transformers recomputes them in the forward
    from the longest position seen (`dynamic_rope_update`) and keeps the
    larger frequencies cached across calls; this is its result for a fresh
    model on one input of `t` positions;
  * `llama3` (`_compute_llama3_parameters`): with `O =
    rope_original_max_len`, `lo`, `hi` the low/high frequency factors and
    wavelength `λ_i = 2π / inv_i`: unchanged where `λ_i < O / hi`, `inv_i
    / f` where `λ_i > O / lo`, and in between `(1 − s) inv_i / f + s inv_i`
    with `s = (O / λ_i − lo) / (hi − lo)`.

  None of these types scales the cosines and sines (transformers'
  `attention_factor` is 1 for them).
  """
  inv = 1.0 / (theta ** (np.arange(0, dh, 2, dtype=np.float64) / dh))
  o = dict(scaling)
  kind = o.get('rope_scaling')
  if kind is None:
    return inv
  f = float(o['rope_factor'])
  if kind == 'linear':
    return inv / f
  if kind == 'dynamic':
    max_len = int(o['rope_max_len'])
    if t <= max_len:
      return inv
    base = theta * ((f * t / max_len) - (f - 1)) ** (dh / (dh - 2))
    return 1.0 / (base ** (np.arange(0, dh, 2, dtype=np.float64) / dh))
  if kind == 'llama3':
    lo = float(o['rope_low_freq_factor'])
    hi = float(o['rope_high_freq_factor'])
    old = float(o['rope_original_max_len'])
    wavelen = 2 * np.pi / inv
    scaled = np.where(wavelen > old / lo, inv / f, inv)
    smooth = (old / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * scaled / f + smooth * scaled
    medium = (wavelen >= old / hi) & (wavelen <= old / lo)
    return np.where(medium, smoothed, scaled)
  raise ValueError(f'Unknown RoPE scaling {kind!r}; valid: {ROPE_SCALINGS}.')


def rope(x: jax.Array, theta: float, scaling: Any = ()) -> jax.Array:
  """Rotary position embedding of `[b, t, h, dh]`, halves layout.

  Feature `i < dh/2` pairs with `i + dh/2`; the pair at position `p` turns
  by the angle `p · inv_i`, `inv_i = theta^(-2i/dh)` unless `scaling` (the
  decoder's `rope_*` options) scales it (`inverse_frequencies`).
  """
  _, t, _, dh = x.shape
  inv = inverse_frequencies(dh, theta, scaling, t)
  angles = np.arange(t, dtype=np.float64)[:, None] * inv[None]
  cos = jnp.asarray(np.cos(angles), x.dtype)[None, :, None]
  sin = jnp.asarray(np.sin(angles), x.dtype)[None, :, None]
  x1, x2 = x[..., : dh // 2], x[..., dh // 2 :]
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def causal_bias(t: int, dtype: Any, window: int = 0) -> jax.Array:
  """`[1, 1, t, t]`: 0 where key <= query (and, with a sliding `window`,
  key > query − window), the most negative number elsewhere."""
  allowed = np.tril(np.ones((t, t), bool))
  if window:
    allowed &= np.triu(np.ones((t, t), bool), k=1 - window)
  return jnp.where(allowed, 0.0, jnp.finfo(dtype).min).astype(dtype)[None, None]


class DecoderLayer(nn.Module):
  """One LLaMA layer.

  Attributes:
    heads: query heads.
    kv_heads: key/value heads (divides `heads`).
    mlp: SwiGLU inner width.
    eps: RMSNorm epsilon.
    theta: RoPE base.
    rope_scaling: the decoder's `rope_*` scaling options as sorted pairs
      (empty: unscaled; `inverse_frequencies`).
    window: sliding attention window (0: every earlier key).
    qkv_bias: biases on the query, key and value projections.
  """

  heads: int
  kv_heads: int
  mlp: int
  eps: float
  theta: float
  rope_scaling: tuple[tuple[str, Any], ...] = ()
  window: int = 0
  qkv_bias: bool = False

  @nn.compact
  def __call__(
    self,
    x: jax.Array,
    *,
    train: bool,
    skip: jax.Array | None = None,
    passthrough: int = 0,
  ) -> jax.Array:
    """The layer's output `[rows, T, D]`, or `x` where skipped.

    Args:
      x: hidden states `[rows, T, D]`.
      train: unused (no dropout); part of the family contract.
      skip: optional traced boolean scalar.
      passthrough: static; append the first `passthrough` rows of `x`
        unchanged after the output (`fanout`).
    """
    del train
    rows, t, d = x.shape
    dh = d // self.heads

    def dense(features, name, bias=False):
      return nn.Dense(
        features, use_bias=bias, kernel_init=_DENSE_INIT, name=name
      )

    h = RMSNorm(self.eps, name='attn_norm')(x)
    kv, qb = self.kv_heads * dh, self.qkv_bias
    q = dense(d, 'q', qb)(h).reshape(rows, t, self.heads, dh)
    k = dense(kv, 'k', qb)(h).reshape(rows, t, self.kv_heads, dh)
    v = dense(kv, 'v', qb)(h).reshape(rows, t, self.kv_heads, dh)
    q = rope(q, self.theta, self.rope_scaling)
    k = rope(k, self.theta, self.rope_scaling)
    group = self.heads // self.kv_heads
    k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
    bias = causal_bias(t, x.dtype, self.window)
    if x.dtype == jnp.float32:
      attended = encoder_lib.attention(q, k, v, bias)
    else:
      attended = _attention_f32_softmax(q, k, v, bias)
    y = x + dense(d, 'o')(attended)

    g = RMSNorm(self.eps, name='mlp_norm')(y)
    gated = nn.silu(dense(self.mlp, 'gate')(g)) * dense(self.mlp, 'up')(g)
    z = y + dense(d, 'down')(gated)
    return family_lib.unit_output(x, z, skip=skip, passthrough=passthrough)


def remat_layer(
  layer: DecoderLayer,
  params: Any,
  x: jax.Array,
  *,
  train: bool,
  skip: jax.Array | None = None,
  passthrough: int = 0,
) -> jax.Array:
  """`layer.apply({'params': params}, x, ...)`, rematerialised: its
  gradient keeps only `params`, `x` and `skip`, and recomputes the layer's
  internals (attention weights, MLP activations) in the backward pass.

  `jax.checkpoint` (`nn.remat`) alone does not bound the memory: nothing
  orders a recomputation after the backward pass of the layers above (its
  `optimization_barrier` only stops common-subexpression elimination, and
  XLA removes it before scheduling), and XLA's CPU scheduler was measured
  to run every recomputation during the forward pass and hold them all: a
  healing step's temporaries did not shrink. Here the backward rule makes
  the recomputation depend on the incoming cotangent `g`: it runs on
  `x + 0 · g[0]` (`x` exactly, up to the sign of a zero; XLA does not fold
  a float product with zero), so a layer is recomputed only once the
  gradient of its output exists, one layer at a time. Same formulas as
  the plain layer; the gradients differ from its by float rounding only.
  """

  def run(p, h, s):
    return layer.apply(
      {'params': p}, h, train=train, skip=s, passthrough=passthrough
    )

  @jax.custom_vjp
  def call(p, h, s):
    return run(p, h, s)

  def forward(p, h, s):
    return run(p, h, s), (p, h, s)

  def backward(saved, g):
    p, h, s = saved
    h = h + jnp.zeros((), h.dtype) * g.reshape(-1)[0].astype(h.dtype)
    _, vjp = jax.vjp(run, p, h, s)
    return vjp(g)

  call.defvjp(forward, backward)
  return call(params, x, skip)


def _attention_f32_softmax(q, k, v, bias):
  """`encoder.attention` for low-precision (bfloat16) `q, k, v`: the scores
  are accumulated, biased and normalised in float32; the weights are cast
  back to `v`'s dtype for the weighted sum (accumulated in float32)."""
  b, tq, h, dh = q.shape
  scores = jnp.einsum(
    'bqhd,bkhd->bhqk', q, k, preferred_element_type=jnp.float32
  ) / np.float32(np.sqrt(dh))
  scores = scores + bias.astype(jnp.float32)
  weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  out = jnp.einsum(
    'bhqk,bkhd->bqhd', weights, v, preferred_element_type=jnp.float32
  )
  return out.astype(v.dtype).reshape(b, tq, h * dh)


class Decoder(nn.Module):
  """A (possibly pruned) decoder described by `arch` (family `'decoder'`).

  Attributes:
    arch: the network; hashable, a static attribute.
    remat: rematerialise each layer under differentiation (`remat_layer`):
      a gradient keeps only every layer's input `[batch, T, D]` and
      recomputes one layer's internals at a time in the backward pass,
      instead of keeping every layer's attention weights and MLP
      activations (healing turns it on, `lpjax.healing`; a forward alone
      is unchanged). Same parameters, same values up to float32 rounding.
  """

  arch: arch_lib.Arch
  remat: bool = False

  @nn.compact
  def __call__(
    self,
    x: jax.Array,
    *,
    train: bool = False,
    skip: jax.Array | None = None,
    fanout: bool = False,
    head: bool = True,
  ) -> jax.Array:
    """Next-token logits `[batch, T, vocab]` for token ids `[batch, T]`.

    Args:
      x: token ids `[batch, T]`.
      train: no dropout; accepted for the family contract.
      skip: optional boolean mask `[len(arch.candidates)]`; may be traced.
      fanout: the unpruned model and every single-layer removal in one
        pass, stream-major rows (see `lpjax.models.resnet.ResNet`).
      head: False returns the final normed hidden states `[batch, T, D]`
        instead of the logits (`next_token_stats` turns them into losses a
        chunk of positions at a time, never holding every logit).
    """
    arch = self.arch
    o = arch.options_dict()
    family_lib.check_call(arch, train=train, skip=skip, fanout=fanout)
    if x.ndim != 2:
      raise ValueError(f'A decoder takes token ids [batch, T]; got {x.shape}.')
    batch, d = x.shape[0], o['width']
    embed = nn.Embed(
      o['vocab'], d, embedding_init=_DENSE_INIT, name='tok_embed'
    )
    h = embed(x)
    self.sow('intermediates', 'stem', h)
    scaling = tuple(sorted((k, o[k]) for k in _ROPE_OPTIONS if k in o))
    for block in arch.blocks:
      route = family_lib.unit_route(
        arch, block, train=train, skip=skip, fanout=fanout, batch=batch
      )
      layer = DecoderLayer(
        heads=o['heads'],
        kv_heads=o['kv_heads'],
        mlp=block.widths[0],
        eps=o['eps'],
        theta=o['rope_theta'],
        rope_scaling=scaling,
        window=o.get('sliding_window', 0),
        qkv_bias=o.get('qkv_bias', False),
        name=block.name,
      )
      if self.remat and not self.is_initializing():
        params = self.variables['params'][block.name]
        h = remat_layer(layer.clone(parent=None), params, h, **route)
      else:
        h = layer(h, **route)
    h = RMSNorm(o['eps'], name='norm')(h)
    # The compared states are float32 whatever the compute dtype.
    self.sow('intermediates', 'pooled', jnp.mean(h.astype(jnp.float32), 1))
    self.sow('intermediates', 'last', h[:, -1].astype(jnp.float32))
    if not head:
      return h
    if o['tied']:
      return embed.attend(h)
    return nn.Dense(
      o['vocab'], use_bias=False, kernel_init=_DENSE_INIT, name='lm_head'
    )(h)


def layer_name(index: int) -> str:
  """The module name of layer `index`: `layer05`."""
  return f'layer{index:02d}'


def decoder(
  *,
  vocab: int = 49152,
  width: int = 576,
  depth: int = 30,
  heads: int = 9,
  kv_heads: int = 3,
  mlp: int = 1536,
  rope_theta: float = 100000.0,
  eps: float = 1e-5,
  tied: bool = True,
  seq_len: int = 256,
  min_blocks_per_stage: int = 1,
  rope_scaling: Mapping[str, Any] | None = None,
  sliding_window: int | None = None,
  qkv_bias: bool = False,
) -> arch_lib.Arch:
  """An unpruned decoder (defaults: SmolLM2-135M's shape).

  Args:
    vocab: vocabulary size (also `num_classes`: the logits' width).
    width: model width `D`, a multiple of `heads`.
    depth: layers.
    heads: query heads.
    kv_heads: key/value heads, dividing `heads`.
    mlp: SwiGLU inner width.
    rope_theta: RoPE base.
    eps: RMSNorm epsilon.
    tied: logits from the token embedding matrix (no `lm_head`).
    seq_len: the default sequence length for FLOPs.
    min_blocks_per_stage: the fewest layers pruning may leave.
    rope_scaling: `None` (unscaled RoPE) or `{'type': 'linear', 'factor':
      f}`, `{'type': 'dynamic', 'factor': f, 'max_len': L}` (`L`: the
      checkpoint's `max_position_embeddings`) or `{'type': 'llama3',
      'factor': f, 'low_freq_factor': lo, 'high_freq_factor': hi,
      'original_max_len': O}` (`inverse_frequencies`).
    sliding_window: `None` (every earlier key) or `W >= 1`: each query
      attends to itself and the `W − 1` keys before it.
    qkv_bias: biases on the query, key and value projections.
  """
  options = dict(
    vocab=int(vocab),
    width=int(width),
    heads=int(heads),
    kv_heads=int(kv_heads),
    rope_theta=float(rope_theta),
    eps=float(eps),
    tied=bool(tied),
    seq_len=int(seq_len),
  )
  # The relatives' options are stored only where they are not the default,
  # so a plain LLaMA's Arch (its hash, its saved form) is what it was.
  options.update(_rope_options(rope_scaling))
  if sliding_window is not None:
    options['sliding_window'] = int(sliding_window)
  if qkv_bias:
    options['qkv_bias'] = True
  arch = arch_lib.Arch(
    family='decoder',
    stages=(
      arch_lib.Stage(
        width=int(width),
        stride=1,
        blocks=tuple(
          arch_lib.Block(1, i, (int(mlp),), layer_name(i)) for i in range(depth)
        ),
      ),
    ),
    num_classes=int(vocab),
    options=options,
    min_blocks_per_stage=min_blocks_per_stage,
  )
  _check(arch)
  return arch


# RoPE scaling type -> its numbers beside `factor` (`decoder`'s keys).
_ROPE_KEYS = {
  'linear': (),
  'dynamic': ('max_len',),
  'llama3': ('low_freq_factor', 'high_freq_factor', 'original_max_len'),
}


def _rope_options(scaling: Mapping[str, Any] | None) -> dict[str, Any]:
  """`decoder`'s `rope_scaling` argument as `rope_*` Arch options."""
  if scaling is None:
    return {}
  scaling = dict(scaling)
  kind = scaling.pop('type', None)
  if kind not in _ROPE_KEYS:
    raise ValueError(
      f'rope_scaling type {kind!r} is not one of {ROPE_SCALINGS}.'
    )
  want = {'factor', *_ROPE_KEYS[kind]}
  if set(scaling) != want:
    raise ValueError(
      f'rope_scaling of type {kind!r} takes exactly {sorted(want)}; got '
      f'{sorted(scaling)}.'
    )
  out: dict[str, Any] = {'rope_scaling': kind}
  for key, value in scaling.items():
    is_int = key.endswith('max_len')
    out[f'rope_{key}'] = int(value) if is_int else float(value)
  return out


def _check(arch: arch_lib.Arch) -> None:
  o = arch.options_dict()
  need = {'vocab', 'width', 'heads', 'kv_heads', 'rope_theta', 'eps', 'tied'}
  missing = need.union({'seq_len'}) - set(o)
  if missing:
    raise ValueError(f'Decoder arch lacks options {sorted(missing)}.')
  if (
    o['heads'] < 1 or o['width'] % o['heads'] or (o['width'] // o['heads']) % 2
  ):
    raise ValueError(
      f'Decoder width {o["width"]} must be a multiple of heads={o["heads"]} '
      'with an even head size (RoPE rotates feature pairs).'
    )
  if o['kv_heads'] < 1 or o['heads'] % o['kv_heads']:
    raise ValueError(
      f'kv_heads={o["kv_heads"]} must divide heads={o["heads"]}.'
    )
  if arch.num_classes != o['vocab']:
    raise ValueError(
      f'A decoder predicts tokens: num_classes must equal vocab={o["vocab"]};'
      f' got {arch.num_classes}.'
    )
  if len(arch.stages) != 1 or any(len(b.widths) != 1 for b in arch.blocks):
    raise ValueError('A decoder has one stage of layers with one width (mlp).')
  _check_relatives(o)


def _check_relatives(o: Mapping[str, Any]) -> None:
  """The RoPE scaling, sliding window and bias options, where present."""
  window = o.get('sliding_window', 1)
  if isinstance(window, bool) or not isinstance(window, int) or window < 1:
    raise ValueError(f'sliding_window must be an integer >= 1; got {window!r}.')
  if not isinstance(o.get('qkv_bias', False), bool):
    raise ValueError(f'qkv_bias must be a bool; got {o["qkv_bias"]!r}.')
  rope = {k: o[k] for k in _ROPE_OPTIONS if k in o}
  if not rope:
    return
  kind = rope.get('rope_scaling')
  if kind not in _ROPE_KEYS:
    raise ValueError(
      f'rope_scaling {kind!r} is not one of {ROPE_SCALINGS} (options '
      f'{sorted(rope)}).'
    )
  want = {'rope_scaling', 'rope_factor'}
  want |= {f'rope_{k}' for k in _ROPE_KEYS[kind]}
  if set(rope) != want:
    raise ValueError(
      f'RoPE scaling {kind!r} needs the options {sorted(want)}; got '
      f'{sorted(rope)}.'
    )
  if not np.isfinite(rope['rope_factor']) or rope['rope_factor'] <= 0:
    raise ValueError(
      f'rope_factor must be a positive number; got {rope["rope_factor"]!r}.'
    )
  for key in ('rope_max_len', 'rope_original_max_len'):
    if key in rope and rope[key] < 1:
      raise ValueError(f'{key} must be >= 1; got {rope[key]!r}.')
  if kind == 'dynamic' and o['width'] // o['heads'] <= 2:
    raise ValueError('Dynamic RoPE scaling needs a head size above 2.')
  if kind == 'llama3':
    lo, hi = rope['rope_low_freq_factor'], rope['rope_high_freq_factor']
    if not 0 < lo < hi:
      raise ValueError(
        'llama3 RoPE scaling needs 0 < rope_low_freq_factor < '
        f'rope_high_freq_factor; got {lo!r} and {hi!r}.'
      )


def macs(arch: arch_lib.Arch, input_shape: Sequence[int]) -> int:
  """Multiply-accumulates per sequence of `input_shape = (T,)` tokens."""
  if len(input_shape) != 1:
    raise ValueError(f'Decoder inputs have shape (T,); got {input_shape}.')
  o = arch.options_dict()
  t, d = int(input_shape[0]), o['width']
  kv = d * o['kv_heads'] // o['heads']
  layers = sum(
    2 * t * d * d + 2 * t * d * kv + 2 * t * t * d + 3 * t * d * b.widths[0]
    for b in arch.blocks
  )
  return layers + t * d * o['vocab']


def width_slices(arch, block, k):
  """The SwiGLU width: `gate`/`up` output units and `down` input rows."""
  del arch, block, k
  return (
    (('gate', 'kernel'), -1),
    (('up', 'kernel'), -1),
    (('down', 'kernel'), 0),
  )


def lora_targets(arch: arch_lib.Arch) -> tuple[tuple[str, str, str], ...]:
  """Every layer's SwiGLU MLP kernels, `gate`, `up`, `down`, layer by layer."""
  return tuple(
    (b.name, name, 'kernel') for b in arch.blocks for name in _MLP_KERNELS
  )


def _from_config(config, num_classes, input_shape):
  del config, num_classes, input_shape
  raise ValueError(
    'model=decoder: lpjax prunes pretrained decoders, built from their '
    'weights (lpjax.interop.gguf_llama.load_gguf_llama, '
    'lpjax.interop.hf_llama.load_hf_llama), not trained from a config.'
  )


DECODER = family_lib.Family(
  name='decoder',
  module=Decoder,
  input_dtype='int32',
  default_input_shape=lambda arch: (arch.option('seq_len'),),
  fanout=True,
  width_slices=width_slices,
  from_config=_from_config,
  check=_check,
  macs=macs,
  batchnorm=False,
  representations=('last',),
  lora_targets=lora_targets,
)
