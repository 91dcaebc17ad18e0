"""Transformer encoders over tokens (BERT-like) or sensor series, a family.

Two inputs, one family (`'encoder'`):

* `input='tokens'`: integer token ids `[batch, T]`, BERT-style: word +
  position + token-type embeddings, then a LayerNorm. Positions holding
  `pad_id` are padding: no real token attends to them and the mean pooling
  ignores them (the attention mask is derived from the ids, so a padded
  batch needs no second input). All-MiniLM-L6-v2 is this model
  (`lpjax.interop.safetensors_bert`).
* `input='series'`: float sensor windows `[batch, T, C]` (e.g. a wrist
  accelerometer and gyroscope), each time step linearly projected to the
  width, plus a learned position embedding: the wearable-sensor
  human-activity transformer of Pons et al. (2024).

Each layer is multi-head softmax self-attention and a GELU MLP of inner
width `mlp`, with residual connections and LayerNorm placed either after
each residual sum (`norm='post'`, BERT):

    y = LN(x + Attention(x));  z = LN(y + MLP(y))

or before each branch (`norm='pre'`, with a final LayerNorm):

    y = x + Attention(LN(x));  z = y + MLP(LN(y))

`pooled` is the mean over the non-padding tokens (`pool='mean'`; the
sentence-transformers pooling of MiniLM) or the first token (`pool='cls'`).
With `head=True` a Dense classifier gives the logits; with `head=False` (an
embedding model) the logits *are* the pooled features and `num_classes`
equals the width. `sentence_embeddings` L2-normalises them, as
sentence-transformers does.

`EncoderLayer` is also the ViT's layer (`lpjax.models.vit`), there with a
fused `qkv` projection.

Every layer is a candidate (floor `min_blocks_per_stage`); skipping a layer
returns its input, exactly the model without it, in both norm placements
(the norms belong to the layer). Layers are unrolled submodules `layer00`,
`layer01`, ..., so deleting one renames nothing. Filter surgery may shrink a
layer's MLP width.

FLOPs (multiply-accumulates per example, `macs`), with `T` tokens, width
`D`, MLP width `M_l` of layer `l`, `C` series channels:

    T C D                                      series projection (tokens: 0)
  + Σ_l [ 3 T D² + T² D + T² D + T D² + 2 T D M_l ]
          QKV     QKᵀ    AV    out    MLP
  + D · num_classes                            head (if any)

Padding tokens are counted (the computation runs on them); embedding
look-ups, norms, softmax, GELU, biases and additions are not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lpjax import arch as arch_lib
from lpjax.models import family as family_lib

INPUTS = ('tokens', 'series')
NORMS = ('post', 'pre')
POOLS = ('mean', 'cls')
ACTIVATIONS = ('gelu', 'gelu_tanh')
_DENSE_INIT = nn.initializers.truncated_normal(0.02)


def attention(
  q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array | None
) -> jax.Array:
  """Softmax attention, `[b, t, h, dh]` queries and keys/values.

  Args:
    q: queries `[b, tq, h, dh]`.
    k: keys `[b, tk, h, dh]`.
    v: values `[b, tk, h, dh]`.
    bias: optional additive logits bias broadcastable to `[b, h, tq, tk]`
      (a large negative number where attention is not allowed).

  Returns:
    `[b, tq, h * dh]`.
  """
  b, tq, h, dh = q.shape
  logits = jnp.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(dh).astype(q.dtype)
  if bias is not None:
    logits = logits + bias
  weights = jax.nn.softmax(logits, axis=-1)
  return jnp.einsum('bhqk,bkhd->bqhd', weights, v).reshape(b, tq, h * dh)


def padding_bias(valid: jax.Array, dtype: Any) -> jax.Array:
  """`[b, 1, 1, t]` additive bias: 0 for real tokens, very negative for pads.

  The most negative finite number (not -inf), as in the BERT reference, so
  that a softmax row never becomes 0/0.
  """
  return jnp.where(valid, 0.0, jnp.finfo(dtype).min).astype(dtype)[
    :, None, None, :
  ]


def _streams(a: jax.Array | None, rows: int) -> jax.Array | None:
  """Repeat per-example `a` `[batch, ...]` for `rows` stream-major rows."""
  if a is None or a.shape[0] == rows:
    return a
  return jnp.tile(a, (rows // a.shape[0],) + (1,) * (a.ndim - 1))


class EncoderLayer(nn.Module):
  """One transformer encoder layer (post- or pre-LN), also the ViT's.

  Submodules: `ln1`, `ln2` (LayerNorms), `query`, `key`, `value` (or one
  fused `qkv`), `out`, `fc1`, `fc2` (Dense layers with biases).

  Attributes:
    heads: attention heads.
    mlp: MLP inner width.
    norm: `'post'` or `'pre'`.
    eps: LayerNorm epsilon.
    activation: `'gelu'` (exact, erf) or `'gelu_tanh'`.
    dropout: dropout rate (training only) on the attention branch's output,
      the MLP's hidden units and the MLP branch's output.
    fused_qkv: one Dense `qkv` of width `3 D` gives queries, keys and values
      (features ordered `(3, heads, D / heads)`; the ViT's layout) instead
      of `query`, `key` and `value` (BERT's).
    kernel_init: the Dense kernels' initialiser.
  """

  heads: int
  mlp: int
  norm: str
  eps: float
  activation: str
  dropout: float
  fused_qkv: bool = False
  kernel_init: Callable[..., jax.Array] = _DENSE_INIT

  @nn.compact
  def __call__(
    self,
    x: jax.Array,
    bias: jax.Array | None,
    *,
    train: bool,
    skip: jax.Array | None = None,
    passthrough: int = 0,
  ) -> jax.Array:
    """The layer's output `[rows, T, D]`, or `x` where skipped.

    Args:
      x: tokens `[rows, T, D]`.
      bias: per-example attention bias `[batch, 1, 1, T]` (or `None`);
        repeated over the stream-major rows of a fanout pass.
      train: dropout on.
      skip: optional traced boolean scalar.
      passthrough: static; append the first `passthrough` rows of `x`
        unchanged after the output (`fanout`).
    """
    rows, t, d = x.shape
    dh = d // self.heads
    drop = nn.Dropout(self.dropout, deterministic=not train)
    ln1 = nn.LayerNorm(epsilon=self.eps, name='ln1')
    ln2 = nn.LayerNorm(epsilon=self.eps, name='ln2')

    def dense(features, name):
      return nn.Dense(features, kernel_init=self.kernel_init, name=name)

    def attend(h):
      if self.fused_qkv:
        qkv = dense(3 * d, 'qkv')(h).reshape(rows, t, 3, self.heads, dh)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
      else:
        q, k, v = (
          dense(d, n)(h).reshape(rows, t, self.heads, dh)
          for n in ('query', 'key', 'value')
        )
      return dense(d, 'out')(attention(q, k, v, _streams(bias, rows)))

    def mlp(h):
      act = nn.gelu(dense(self.mlp, 'fc1')(h), self.activation == 'gelu_tanh')
      return dense(d, 'fc2')(drop(act))

    if self.norm == 'post':
      y = ln1(x + drop(attend(x)))
      z = ln2(y + drop(mlp(y)))
    else:
      y = x + drop(attend(ln1(x)))
      z = y + drop(mlp(ln2(y)))
    return family_lib.unit_output(x, z, skip=skip, passthrough=passthrough)


class Encoder(nn.Module):
  """A (possibly pruned) encoder described by `arch` (family `'encoder'`).

  Attributes:
    arch: the network; hashable, a static attribute.
  """

  arch: arch_lib.Arch

  @nn.compact
  def __call__(
    self,
    x: jax.Array,
    *,
    train: bool = False,
    skip: jax.Array | None = None,
    fanout: bool = False,
  ) -> jax.Array:
    """Logits (or pooled features, `head=False`) for a batch.

    Args:
      x: token ids `[batch, T]` (`input='tokens'`) or series
        `[batch, T, C]` (`input='series'`).
      train: dropout on.
      skip: optional boolean mask `[len(arch.candidates)]`; may be traced.
      fanout: the unpruned model and every single-layer removal in one
        pass, stream-major rows (see `lpjax.models.resnet.ResNet`).

    Returns:
      `[batch, num_classes]` (`[(1 + L) * batch, num_classes]` with
      `fanout`).
    """
    arch = self.arch
    o = arch.options_dict()
    family_lib.check_call(arch, train=train, skip=skip, fanout=fanout)
    batch, d = x.shape[0], o['width']
    if o['input'] == 'tokens':
      if x.ndim != 2 or x.shape[1] > o['max_len']:
        raise ValueError(
          f'This encoder takes token ids [batch, T <= {o["max_len"]}]; got '
          f'shape {x.shape}.'
        )
      t = x.shape[1]
      valid = x != o['pad_id']
      h = nn.Embed(o['vocab'], d, name='tok_embed')(x)
      pos = self.param(
        'pos_embed', nn.initializers.normal(0.02), (o['max_len'], d)
      )
      types = self.param(
        'type_embed', nn.initializers.normal(0.02), (o['type_vocab'], d)
      )
      # Single-segment inputs: every token has type 0.
      h = h + pos[None, :t] + types[0]
      h = nn.LayerNorm(epsilon=o['eps'], name='embed_ln')(h)
      bias = padding_bias(valid, h.dtype)
    else:
      want = tuple(o['series_shape'])
      if tuple(x.shape[1:]) != want:
        raise ValueError(
          f'This encoder takes series {want} (steps, channels); got inputs '
          f'{tuple(x.shape[1:])}.'
        )
      t = want[0]
      valid = None
      h = nn.Dense(d, kernel_init=_DENSE_INIT, name='proj')(x)
      pos = self.param('pos_embed', nn.initializers.normal(0.02), (t, d))
      h = h + pos[None]
      bias = None
    h = nn.Dropout(o['dropout'], deterministic=not train)(h)
    self.sow('intermediates', 'stem', h)
    for block in arch.blocks:
      route = family_lib.unit_route(
        arch, block, train=train, skip=skip, fanout=fanout, batch=batch
      )
      h = EncoderLayer(
        heads=o['heads'],
        mlp=block.widths[0],
        norm=o['norm'],
        eps=o['eps'],
        activation=o['activation'],
        dropout=o['dropout'],
        name=block.name,
      )(h, bias, **route)
    if o['norm'] == 'pre':
      h = nn.LayerNorm(epsilon=o['eps'], name='norm')(h)
    pooled = pool(h, _streams(valid, h.shape[0]), o['pool'])
    self.sow('intermediates', 'pooled', pooled)
    if not o['head']:
      return pooled
    return nn.Dense(arch.num_classes, kernel_init=_DENSE_INIT, name='head')(
      pooled
    )


def pool(h: jax.Array, valid: jax.Array | None, how: str) -> jax.Array:
  """`[rows, T, D]` -> `[rows, D]`: masked mean over tokens, or the first.

  The mean divides by the number of real tokens (at least 1e-9, as
  sentence-transformers does).
  """
  if how == 'cls':
    return h[:, 0]
  if valid is None:
    return jnp.mean(h, axis=1)
  w = valid.astype(h.dtype)[..., None]
  return jnp.sum(h * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1e-9)


def sentence_embeddings(
  model: Any, variables: Any, ids: jax.Array, *, skip: jax.Array | None = None
) -> jax.Array:
  """sentence-transformers' embeddings: masked mean pooling, L2-normalised.

  Args:
    model: an encoder module with `input='tokens'`, `pool='mean'` and no
      head (its output is the mean over the real tokens).
    variables: its variables.
    ids: token ids `[n, L]`, padded with the arch's `pad_id`.
    skip: optional skip mask over the layers.

  Returns:
    `[n, width]`: each pooled row divided by its norm (at least 1e-12).
  """
  pooled = model.apply(variables, ids, train=False, skip=skip)
  norm = jnp.linalg.norm(pooled, axis=-1, keepdims=True)
  return pooled / jnp.maximum(norm, 1e-12)


def layer_name(index: int) -> str:
  """The module name of layer `index`: `layer05`."""
  return f'layer{index:02d}'


def encoder(
  *,
  input: str = 'series',
  width: int = 64,
  depth: int = 6,
  heads: int = 4,
  mlp: int = 128,
  norm: str = 'pre',
  pool: str = 'mean',
  activation: str = 'gelu',
  eps: float = 1e-6,
  dropout: float = 0.0,
  series_shape: Sequence[int] = (100, 6),
  vocab: int = 30522,
  max_len: int = 512,
  type_vocab: int = 2,
  pad_id: int = 0,
  seq_len: int = 128,
  head: bool = True,
  num_classes: int = 4,
  min_blocks_per_stage: int = 1,
) -> arch_lib.Arch:
  """An unpruned encoder.

  Args:
    input: `'tokens'` or `'series'`.
    width: model width `D`, a multiple of `heads`.
    depth: layers.
    heads: attention heads.
    mlp: MLP inner width.
    norm: `'post'` (BERT) or `'pre'` (with a final LayerNorm).
    pool: `'mean'` (masked) or `'cls'` (first token).
    activation: `'gelu'` (exact) or `'gelu_tanh'`.
    eps: LayerNorm epsilon (BERT: 1e-12).
    dropout: dropout rate (training only).
    series_shape: `(steps, channels)` of a series input.
    vocab: token vocabulary (tokens input).
    max_len: position embeddings (tokens input).
    type_vocab: token-type embeddings (tokens input; only type 0 is used).
    pad_id: the padding token id (tokens input).
    seq_len: the default sequence length for FLOPs (tokens input).
    head: a Dense classifier on the pooled features; `False`: the logits
      are the pooled features and `num_classes` is set to `width`.
    num_classes: classifier outputs (with `head`).
    min_blocks_per_stage: the fewest layers pruning may leave.
  """
  options = dict(
    input=input,
    width=int(width),
    heads=int(heads),
    norm=norm,
    pool=pool,
    activation=activation,
    eps=float(eps),
    dropout=float(dropout),
    head=bool(head),
  )
  if input == 'tokens':
    options.update(
      vocab=int(vocab),
      max_len=int(max_len),
      type_vocab=int(type_vocab),
      pad_id=int(pad_id),
      seq_len=int(seq_len),
    )
  else:
    options.update(series_shape=tuple(int(s) for s in series_shape))
  arch = arch_lib.Arch(
    family='encoder',
    stages=(
      arch_lib.Stage(
        width=int(width),
        stride=1,
        blocks=tuple(
          arch_lib.Block(1, i, (int(mlp),), layer_name(i)) for i in range(depth)
        ),
      ),
    ),
    num_classes=int(num_classes) if head else int(width),
    options=options,
    min_blocks_per_stage=min_blocks_per_stage,
  )
  _check(arch)
  return arch


def _check(arch: arch_lib.Arch) -> None:
  o = arch.options_dict()
  need = {'input', 'width', 'heads', 'norm', 'pool', 'activation', 'eps'}
  need |= {'dropout', 'head'}
  if o.get('input') not in INPUTS:
    raise ValueError(
      f'Unknown encoder input {o.get("input")!r}; valid: {INPUTS}.'
    )
  need |= (
    {'vocab', 'max_len', 'type_vocab', 'pad_id', 'seq_len'}
    if o['input'] == 'tokens'
    else {'series_shape'}
  )
  missing = need - set(o)
  if missing:
    raise ValueError(f'Encoder arch lacks options {sorted(missing)}.')
  for key, valid in (
    ('norm', NORMS),
    ('pool', POOLS),
    ('activation', ACTIVATIONS),
  ):
    if o[key] not in valid:
      raise ValueError(f'Unknown encoder {key} {o[key]!r}; valid: {valid}.')
  if o['heads'] < 1 or o['width'] % o['heads']:
    raise ValueError(
      f'Encoder width {o["width"]} must be a multiple of heads={o["heads"]}.'
    )
  if not 0.0 <= o['dropout'] < 1.0:
    raise ValueError(f'Encoder dropout must be in [0, 1); got {o["dropout"]}.')
  if o['input'] == 'tokens' and not 1 <= o['seq_len'] <= o['max_len']:
    raise ValueError(
      f'Encoder seq_len {o["seq_len"]} must be in [1, max_len={o["max_len"]}].'
    )
  if not o['head'] and arch.num_classes != o['width']:
    raise ValueError(
      'An encoder without a head returns its pooled features: num_classes '
      f'must equal the width {o["width"]}; got {arch.num_classes}.'
    )
  if len(arch.stages) != 1 or any(len(b.widths) != 1 for b in arch.blocks):
    raise ValueError('An encoder has one stage of layers with one width (mlp).')


def _input_shape(arch: arch_lib.Arch) -> tuple[int, ...]:
  o = arch.options_dict()
  if o['input'] == 'tokens':
    return (o['seq_len'],)
  return tuple(o['series_shape'])


def macs(arch: arch_lib.Arch, input_shape: Sequence[int]) -> int:
  """Multiply-accumulates per example, in closed form (module docstring).

  `input_shape` is `(T,)` for tokens and `(T, C)` for series.
  """
  o = arch.options_dict()
  d = o['width']
  if o['input'] == 'tokens':
    if len(input_shape) != 1:
      raise ValueError(f'Token inputs have shape (T,); got {input_shape}.')
    t, embed = int(input_shape[0]), 0
  else:
    if tuple(input_shape) != tuple(o['series_shape']):
      raise ValueError(
        f'This encoder takes series {tuple(o["series_shape"])}; got '
        f'{tuple(input_shape)}.'
      )
    t, c = o['series_shape']
    embed = t * c * d
  layers = sum(
    4 * t * d * d + 2 * t * t * d + 2 * t * d * b.widths[0] for b in arch.blocks
  )
  head = d * arch.num_classes if o['head'] else 0
  return embed + layers + head


def width_slices(arch, block, k):
  """The MLP width: `fc1`'s output units and `fc2`'s input rows."""
  del arch, block, k
  return (
    (('fc1', 'kernel'), -1),
    (('fc1', 'bias'), -1),
    (('fc2', 'kernel'), 0),
  )


def _from_config(config, num_classes, input_shape):
  e = config.encoder
  if len(input_shape) != 2:
    raise ValueError(
      f'model=encoder trains on series [steps, channels]; the dataset gives '
      f'examples of shape {tuple(input_shape)}.'
    )
  return encoder(
    input='series',
    series_shape=tuple(input_shape),
    width=e.width,
    depth=e.depth,
    heads=e.heads,
    mlp=e.mlp,
    norm=e.norm,
    pool=e.pool,
    dropout=e.dropout,
    num_classes=num_classes,
    min_blocks_per_stage=config.min_blocks_per_stage,
  )


def _input_dtype(arch: arch_lib.Arch) -> str:
  return 'int32' if arch.option('input') == 'tokens' else 'float32'


ENCODER = family_lib.Family(
  name='encoder',
  module=Encoder,
  input_dtype=_input_dtype,
  default_input_shape=_input_shape,
  fanout=True,
  width_slices=width_slices,
  from_config=_from_config,
  check=_check,
  macs=macs,
  batchnorm=False,
)
