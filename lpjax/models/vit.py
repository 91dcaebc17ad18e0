"""Vision Transformer (Dosovitskiy et al. 2021), pre-LN, as an lpjax family.

The image is cut into `patch x patch` patches, each linearly embedded
(a strided convolution), a learned class token is prepended (`pool='cls'`)
and learned position embeddings are added. Each encoder layer is pre-LN:

    y = x + Dropout(Attention(LayerNorm(x)))
    z = y + Dropout(MLP(LayerNorm(y)))

with multi-head softmax attention (`heads` heads of `width / heads`
dimensions) and a GELU MLP of inner width `mlp`: the encoder family's
`EncoderLayer` (`lpjax.models.encoder`) with the ViT's settings
(`encoder_layer`: one fused `qkv` projection, tanh GELU, Xavier kernels).
A final LayerNorm, then the class token (or the mean over tokens,
`pool='mean'`) is `pooled` and a Dense layer gives the logits.

Every encoder layer is a candidate (floor: `min_blocks_per_stage`, default
1). Skipping a layer turns off both residual branches, so it returns its
input: exactly the model with the layer deleted. Layers are unrolled, one
named submodule per layer (`layer00`, `layer01`, ...), so deleting one
renames nothing. Filter surgery may shrink a layer's MLP width (`fc1`'s
outputs and `fc2`'s inputs).

FLOPs (multiply-accumulates per example, `macs`): with `N` patches, `T`
tokens (`N + 1` with a class token), width `D`, patch size `p`, `C` input
channels and MLP width `M_l` in layer `l`:

    N p² C D                                   patch embedding
  + Σ_l [ 3 T D²  + T² D  + T² D  + T D²  + 2 T D M_l ]
          QKV      scores  weighted  out   MLP
                   QKᵀ     sum AV    proj
  + D · num_classes                            head

LayerNorms, softmax, GELU, biases, additions and the position embedding
are not counted (as BatchNorm, ReLU and biases are not for the ResNets).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lpjax import arch as arch_lib
from lpjax.models import encoder as encoder_lib
from lpjax.models import family as family_lib

POOLS = ('cls', 'mean')
_DENSE_INIT = nn.initializers.xavier_uniform()


def encoder_layer(
  *, heads: int, mlp: int, dropout: float, name: str | None = None
) -> encoder_lib.EncoderLayer:
  """The ViT's layer: the encoder family's `EncoderLayer`, pre-LN.

  One fused `qkv` projection, tanh-approximated GELU, LayerNorm epsilon
  1e-6 and Xavier-uniform kernels; called as `layer(x, None, train=...,
  skip=..., passthrough=...)` (no attention mask).

  Args:
    heads: attention heads.
    mlp: inner width of the MLP.
    dropout: dropout rate after attention and in/after the MLP.
    name: the submodule's name (the unit's stable id).
  """
  return encoder_lib.EncoderLayer(
    heads=heads,
    mlp=mlp,
    norm='pre',
    eps=1e-6,
    activation='gelu_tanh',
    dropout=dropout,
    fused_qkv=True,
    kernel_init=_DENSE_INIT,
    name=name,
  )


class ViT(nn.Module):
  """A (possibly pruned) ViT described by `arch`.

  Attributes:
    arch: the network (family `'vit'`); hashable, a static attribute.
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
    """Logits for a batch of images.

    Args:
      x: images `[batch, height, width, channels]`.
      train: dropout on.
      skip: optional boolean mask `[len(arch.candidates)]` (one entry per
        layer); a true entry turns that layer into the identity. May be
        traced.
      fanout: evaluate the unpruned model and every single-layer removal in
        one pass; rows are stream-major, `[(1 + L) * batch, ...]` (see
        `lpjax.models.resnet.ResNet`). Eval mode only.

    Returns:
      Logits `[batch, num_classes]` (`[(1 + L) * batch, num_classes]` with
      `fanout`).
    """
    arch = self.arch
    o = arch.options_dict()
    family_lib.check_call(arch, train=train, skip=skip, fanout=fanout)
    if tuple(x.shape[1:]) != tuple(o['image_shape']):
      raise ValueError(
        f'This ViT was built for images {tuple(o["image_shape"])} '
        f'(position embeddings per patch); got inputs {x.shape[1:]}.'
      )
    batch, p, d = x.shape[0], o['patch'], o['width']
    x = nn.Conv(d, (p, p), strides=(p, p), padding='VALID', name='embed')(x)
    x = x.reshape(batch, -1, d)
    if o['pool'] == 'cls':
      cls = self.param('cls', nn.initializers.zeros, (1, 1, d), x.dtype)
      x = jnp.concatenate([jnp.broadcast_to(cls, (batch, 1, d)), x], axis=1)
    pos = self.param(
      'pos', nn.initializers.normal(0.02), (1, *x.shape[1:]), x.dtype
    )
    x = nn.Dropout(o['dropout'], deterministic=not train)(x + pos)
    self.sow('intermediates', 'stem', x)
    for block in arch.blocks:
      route = family_lib.unit_route(
        arch, block, train=train, skip=skip, fanout=fanout, batch=batch
      )
      x = encoder_layer(
        heads=o['heads'],
        mlp=block.widths[0],
        dropout=o['dropout'],
        name=block.name,
      )(x, None, **route)
    x = nn.LayerNorm(name='norm')(x)
    pooled = x[:, 0] if o['pool'] == 'cls' else jnp.mean(x, axis=1)
    self.sow('intermediates', 'pooled', pooled)
    return nn.Dense(arch.num_classes, kernel_init=_DENSE_INIT, name='head')(
      pooled
    )


def layer_name(index: int) -> str:
  """The module name of encoder layer `index`: `layer05`."""
  return f'layer{index:02d}'


def vit(
  *,
  image_shape: Sequence[int] = (32, 32, 3),
  patch: int = 4,
  width: int = 192,
  depth: int = 12,
  heads: int = 3,
  mlp: int = 768,
  pool: str = 'cls',
  dropout: float = 0.0,
  num_classes: int = 10,
  min_blocks_per_stage: int = 1,
) -> arch_lib.Arch:
  """An unpruned ViT (defaults: ViT-Ti/4 for 32x32 images).

  Args:
    image_shape: `[height, width, channels]` of the inputs; both sides must
      be multiples of `patch`.
    patch: patch side in pixels.
    width: token width `D`; a multiple of `heads`.
    depth: encoder layers.
    heads: attention heads.
    mlp: MLP inner width.
    pool: `'cls'` (class token) or `'mean'` (mean over patch tokens).
    dropout: dropout rate (training only).
    num_classes: classifier outputs.
    min_blocks_per_stage: the fewest layers pruning may leave.

  Returns:
    The unpruned `Arch`.
  """
  arch = arch_lib.Arch(
    family='vit',
    stages=(
      arch_lib.Stage(
        width=int(width),
        stride=1,
        blocks=tuple(
          arch_lib.Block(1, i, (int(mlp),), layer_name(i)) for i in range(depth)
        ),
      ),
    ),
    num_classes=num_classes,
    options=dict(
      image_shape=tuple(int(s) for s in image_shape),
      patch=int(patch),
      width=int(width),
      heads=int(heads),
      pool=pool,
      dropout=float(dropout),
    ),
    min_blocks_per_stage=min_blocks_per_stage,
  )
  _check(arch)
  return arch


def _check(arch: arch_lib.Arch) -> None:
  o = arch.options_dict()
  missing = {'image_shape', 'patch', 'width', 'heads', 'pool', 'dropout'} - set(
    o
  )
  if missing:
    raise ValueError(f'ViT arch lacks options {sorted(missing)}.')
  h, w, _ = o['image_shape']
  if o['patch'] < 1 or h % o['patch'] or w % o['patch']:
    raise ValueError(
      f'Image sides {h}x{w} must be multiples of the patch size {o["patch"]}.'
    )
  if o['heads'] < 1 or o['width'] % o['heads']:
    raise ValueError(
      f'ViT width {o["width"]} must be a multiple of heads={o["heads"]}.'
    )
  if o['pool'] not in POOLS:
    raise ValueError(f'Unknown ViT pool {o["pool"]!r}; valid: {POOLS}.')
  if not 0.0 <= o['dropout'] < 1.0:
    raise ValueError(f'ViT dropout must be in [0, 1); got {o["dropout"]}.')
  if len(arch.stages) != 1 or any(len(b.widths) != 1 for b in arch.blocks):
    raise ValueError('A ViT has one stage of layers with one width (mlp).')


def tokens(arch: arch_lib.Arch) -> int:
  """Tokens per example: patches, plus the class token with `pool='cls'`."""
  o = arch.options_dict()
  h, w, _ = o['image_shape']
  return (h // o['patch']) * (w // o['patch']) + (o['pool'] == 'cls')


def macs(arch: arch_lib.Arch, input_shape: Sequence[int]) -> int:
  """Multiply-accumulates per example, in closed form (module docstring)."""
  o = arch.options_dict()
  if tuple(input_shape) != tuple(o['image_shape']):
    raise ValueError(
      f'This ViT takes images {tuple(o["image_shape"])}; got {input_shape}.'
    )
  h, w, c = o['image_shape']
  p, d = o['patch'], o['width']
  n = (h // p) * (w // p)
  t = tokens(arch)
  embed = n * p * p * c * d
  layers = sum(
    4 * t * d * d + 2 * t * t * d + 2 * t * d * b.widths[0] for b in arch.blocks
  )
  return embed + layers + d * arch.num_classes


def _from_config(config, num_classes, input_shape):
  v = config.vit
  return vit(
    image_shape=tuple(input_shape),
    patch=v.patch,
    width=v.width,
    depth=v.depth,
    heads=v.heads,
    mlp=v.mlp,
    pool=v.pool,
    dropout=v.dropout,
    num_classes=num_classes,
    min_blocks_per_stage=config.min_blocks_per_stage,
  )


VIT = family_lib.Family(
  name='vit',
  module=ViT,
  input_dtype='float32',
  default_input_shape=lambda arch: tuple(arch.option('image_shape')),
  fanout=True,
  width_slices=encoder_lib.width_slices,
  from_config=_from_config,
  check=_check,
  macs=macs,
  batchnorm=False,
)
