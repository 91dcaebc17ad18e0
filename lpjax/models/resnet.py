"""Flax linen ResNets built from an `Arch`.

One module, `ResNet`, covers the CIFAR family (basic blocks, 3x3 stem) and the
ImageNet family (bottleneck blocks, 7x7 stem + max-pool). Block submodules are
named from their stable ids (`stage2_block07`), so deleting a block deletes its
variables and renames nothing.

`skip` is a traced `[len(arch.candidates)]` boolean mask: a skipped block
passes its input through unchanged, exactly as if it had been deleted (every
candidate has an identity shortcut and its input is already a ReLU output, so
ReLU(x + 0) = x). One compiled function therefore evaluates any skip set, and
`jax.vmap` over masks evaluates many. `fanout=True` evaluates the unpruned
model and every single-candidate removal in one pass that shares the layers
before each candidate (about half the work of the masked forwards).

The model returns logits `[batch, num_classes]` and sows the pooled features
`[batch, width]` into the `intermediates` collection as `pooled`; every block's
output (its input, if skipped) can be captured with `capture_intermediates`
(see `lpjax.models.representations`).

Convolutions are `lpjax.models.conv.Conv` (`flax.linen.Conv`'s variables;
`LPJAX_CONV` picks how they are computed), and every block's output (and the
stem's) passes through `conv.fusion_barrier`, which stops XLA:CPU from
recomputing the residual chain inside later fusions (on by default on the
CPU; `LPJAX_FUSION_BARRIER=off` turns it off).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lpjax import arch as arch_lib
from lpjax.models import conv as conv_lib
from lpjax.models import family as family_lib


@dataclasses.dataclass(frozen=True)
class Style:
  """Layer details that differ between the papers' Keras models and PyTorch.

  Attributes:
    conv_bias: every convolution has a bias (Keras models: True).
    bn_epsilon: BatchNorm epsilon (Keras 1e-3, PyTorch 1e-5).
    bn_momentum: BatchNorm running-average momentum (Keras 0.99, PyTorch 0.9).
    projection_bn: the projection shortcut has a BatchNorm after its 1x1 conv.
    bottleneck_stride_on_3x3: in a bottleneck the stride sits on the 3x3 conv
      (torchvision "v1.5") instead of the first 1x1 conv (Keras ResNet50).
    symmetric_padding: pad strided 3x3 convolutions by one pixel on every
      side (PyTorch `padding=1`) instead of TensorFlow's "SAME", which pads
      only the bottom/right when the input size is even.
  """

  conv_bias: bool = True
  bn_epsilon: float = 1e-3
  bn_momentum: float = 0.99
  projection_bn: bool = False
  bottleneck_stride_on_3x3: bool = False
  symmetric_padding: bool = False


# The papers' Keras CIFAR ResNets (template_architectures.py in their code).
KERAS_STYLE = Style()
# Keras' ResNet50 (keras.applications): conv bias, BN after the projection.
KERAS_IMAGENET_STYLE = Style(bn_epsilon=1.001e-5, projection_bn=True)
PYTORCH_STYLE = Style(
  conv_bias=False,
  bn_epsilon=1e-5,
  bn_momentum=0.9,
  projection_bn=True,
  bottleneck_stride_on_3x3=True,
  symmetric_padding=True,
)
STYLES = {
  'keras': KERAS_STYLE,
  'keras_imagenet': KERAS_IMAGENET_STYLE,
  'pytorch': PYTORCH_STYLE,
}


# Keras' he_normal for convolutions (truncated normal, fan-in, scale 2).
_CONV_INIT = nn.initializers.variance_scaling(2.0, 'fan_in', 'truncated_normal')


def _layers(style: Style, train: bool):
  conv = functools.partial(
    conv_lib.Conv, use_bias=style.conv_bias, kernel_init=_CONV_INIT
  )
  norm = functools.partial(
    nn.BatchNorm,
    use_running_average=not train,
    momentum=style.bn_momentum,
    epsilon=style.bn_epsilon,
  )
  return conv, norm


def _pad3x3(style: Style, stride: int):
  if stride > 1 and style.symmetric_padding:
    return ((1, 1), (1, 1))
  return 'SAME'


class BasicBlock(nn.Module):
  """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, + shortcut, -> ReLU.

  Attributes:
    width: output channels.
    inner: output channels of the first conv (filter pruning shrinks it).
    stride: stride of the first conv (and of the projection).
    project: the shortcut is a strided 1x1 conv (else identity).
    style: layer details.
  """

  width: int
  inner: int
  stride: int
  project: bool
  style: Style

  @nn.compact
  def __call__(
    self,
    x: jax.Array,
    *,
    train: bool,
    skip: jax.Array | None = None,
    passthrough: int = 0,
    filter_masks: Sequence[jax.Array] | None = None,
  ) -> jax.Array:
    """The block's output, or its input where skipped.

    Args:
      x: input `[batch, height, width, channels]`.
      train: BatchNorm mode.
      skip: optional traced boolean scalar; true returns `x` unchanged (only
        valid for identity blocks).
      filter_masks: optional, one `[inner width k]` array per inner conv but
        the last: multiplies conv `k+1`'s activation (after BN and ReLU), so
        a zero entry is that filter removed (`lpjax.surgery`).
      passthrough: static; if positive, the first `passthrough` rows of `x`
        are appended unchanged after the output rows (the shared-prefix
        evaluation of `ResNet(..., fanout=True)`).
    """
    conv, norm = _layers(self.style, train)
    y = self._residual(x, conv, norm, _Inner(self, filter_masks))
    y = nn.relu(y + self._shortcut(x, conv, norm))
    y = family_lib.unit_output(x, y, skip=skip, passthrough=passthrough)
    return conv_lib.fusion_barrier(y, _token(self))

  def _residual(self, x, conv, norm, inner):
    s = (self.stride, self.stride)
    pad = _pad3x3(self.style, self.stride)
    y = conv(self.inner, (3, 3), strides=s, padding=pad, name='conv1')(x)
    y = inner(0, nn.relu(norm(name='bn1')(y)))
    y = conv(self.width, (3, 3), padding='SAME', name='conv2')(y)
    return norm(name='bn2')(y)

  def _shortcut(self, x, conv, norm):
    if not self.project:
      return x
    s = (self.stride, self.stride)
    x = conv(self.width, (1, 1), strides=s, padding='VALID', name='proj_conv')(
      x
    )
    return norm(name='proj_bn')(x) if self.style.projection_bn else x


class Bottleneck(BasicBlock):
  """1x1 -> 3x3 -> 1x1 (x4 width) bottleneck, each conv followed by BN.

  Attributes:
    inner2: output channels of the 3x3 conv.
  """

  inner2: int = 0

  def _residual(self, x, conv, norm, inner):
    on3 = self.style.bottleneck_stride_on_3x3
    s1 = (1, 1) if on3 else (self.stride, self.stride)
    s3 = (self.stride, self.stride) if on3 else (1, 1)
    pad = _pad3x3(self.style, s3[0])
    y = conv(self.inner, (1, 1), strides=s1, padding='VALID', name='conv1')(x)
    y = inner(0, nn.relu(norm(name='bn1')(y)))
    y = conv(self.inner2, (3, 3), strides=s3, padding=pad, name='conv2')(y)
    y = inner(1, nn.relu(norm(name='bn2')(y)))
    y = conv(self.width, (1, 1), padding='VALID', name='conv3')(y)
    return norm(name='bn3')(y)


BLOCK_TYPES = (BasicBlock, Bottleneck)


def _token(module: nn.Module) -> jax.Array | None:
  """A replicated, unbatched scalar for `conv.fusion_barrier`'s predicate:
  the first entry of the module's first parameter (a bias or BN scale)."""
  leaves = jax.tree.leaves(module.variables.get('params', {}))
  return leaves[0] if leaves else None


class _Inner:
  """Sows inner activation `k` as `inner{k}` and applies its filter mask."""

  def __init__(self, block: nn.Module, masks: Sequence[jax.Array] | None):
    self.block, self.masks = block, masks

  def __call__(self, k: int, y: jax.Array) -> jax.Array:
    if self.masks is not None:
      y = y * self.masks[k].astype(y.dtype)
    self.block.sow('intermediates', f'inner{k}', y)
    return y


class ResNet(nn.Module):
  """A (possibly pruned) ResNet described by `arch`.

  Attributes:
    arch: the network; hashable, so it is a static part of the module.
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
    filter_mask: jax.Array | None = None,
  ) -> jax.Array:
    """Logits for a batch of images.

    Args:
      x: images `[batch, height, width, channels]`.
      train: BatchNorm uses batch statistics and updates `batch_stats`.
      skip: optional boolean mask `[len(arch.candidates)]`; a true entry
        turns that candidate block into the identity. May be traced.
      fanout: evaluate the unpruned model and, at once, the model without
        each single candidate block, computing what they share only once:
        at every candidate the running batch gains `batch` rows that carry
        the unpruned model's input to that block past it. Eval mode only.
        The output is stream-major, `[(1 + K) * batch, ...]` for K
        candidates: rows `[0, batch)` are the unpruned model, rows
        `[(1 + i) * batch, (2 + i) * batch)` the model without candidate i.
        Blocks before candidate i are evaluated once for all of them, so the
        work is about half that of K + 1 masked forwards.
      filter_mask: optional `[num_prunable_filters]` multiplier of the
        prunable filters' activations, in `prunable_filters(arch)` order
        (a block's inner conv 1, then 2, ...); a zero entry equals that
        filter removed by surgery. May be traced.

    Returns:
      Logits `[batch, num_classes]` (`[(1 + K) * batch, num_classes]` with
      `fanout`).
    """
    arch = self.arch
    family_lib.check_call(arch, train=train, skip=skip, fanout=fanout)
    masks = _split_filter_mask(arch, filter_mask)
    batch = x.shape[0]
    style = style_of(arch)
    stem_width = arch.option('stem_width')
    conv, norm = _layers(style, train)
    if arch.family == 'resnet_cifar':
      x = conv(stem_width, (3, 3), padding='SAME', name='stem_conv')(x)
      x = nn.relu(norm(name='stem_bn')(x))
    else:
      x = conv(
        stem_width,
        (7, 7),
        strides=(2, 2),
        padding=((3, 3), (3, 3)),
        name='stem_conv',
      )(x)
      x = nn.relu(norm(name='stem_bn')(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

    x = conv_lib.fusion_barrier(x, _token(self))
    self.sow('intermediates', 'stem', x)
    in_width = stem_width
    for stage in arch.stages:
      for block in stage.blocks:
        first = block.index == 0
        stride = stage.stride if first else 1
        kw = dict(
          width=stage.width,
          inner=block.widths[0],
          stride=stride,
          project=first and (stride != 1 or in_width != stage.width),
          style=style,
          name=block.name,
        )
        route = family_lib.unit_route(
          arch, block, train=train, skip=skip, fanout=fanout, batch=batch
        )
        if masks is not None:
          route['filter_masks'] = masks[block.name]
        if arch.family == 'resnet_cifar':
          x = BasicBlock(**kw)(x, **route)
        else:
          x = Bottleneck(inner2=block.widths[1], **kw)(x, **route)
        in_width = stage.width

    pooled = jnp.mean(x, axis=(1, 2))
    self.sow('intermediates', 'pooled', pooled)
    return nn.Dense(
      arch.num_classes,
      kernel_init=nn.initializers.glorot_uniform(),
      name='head',
    )(pooled)


# --- Architectures as data --------------------------------------------------


def block_name(stage: int, index: int) -> str:
  """The module name of a block: `stage2_block07`."""
  return f'stage{stage}_block{index:02d}'


def make_block(stage: int, index: int, widths: Sequence[int]) -> arch_lib.Block:
  """A ResNet block; the papers' rule decides whether it is a candidate.

  A block is removable iff its shortcut is an identity and it has a
  predecessor in its stage, i.e. it is not the first block of its stage (the
  first block of stage 1 has no predecessor; every other first block
  downsamples or projects). Pons et al. 2024, their `rebuild_layers.py`.
  """
  return arch_lib.Block(
    stage=stage,
    index=index,
    widths=tuple(int(w) for w in widths),
    name=block_name(stage, index),
    candidate=index > 0,
  )


def style_of(arch: arch_lib.Arch) -> Style:
  """The `Style` recorded in a ResNet `Arch`'s options."""
  fields = {f.name for f in dataclasses.fields(Style)}
  return Style(**{k: v for k, v in arch.options if k in fields})


def _options(style: Style, stem_width: int) -> dict[str, Any]:
  return {**dataclasses.asdict(style), 'stem_width': int(stem_width)}


def make_arch(
  family: str,
  stages: Sequence[arch_lib.Stage],
  *,
  num_classes: int,
  stem_width: int,
  style: Style,
  min_blocks_per_stage: int = arch_lib.DEFAULT_MIN_BLOCKS_PER_STAGE,
) -> arch_lib.Arch:
  """A ResNet `Arch` from its stages (e.g. read from a Keras file).

  Raises:
    ValueError: for stages a ResNet cannot have (a stage without its first
      block, the wrong number of inner widths).
  """
  arch = arch_lib.Arch(
    family=family,
    stages=tuple(stages),
    num_classes=num_classes,
    options=_options(style, stem_width),
    min_blocks_per_stage=min_blocks_per_stage,
  )
  _check(arch)
  return arch


def resnet_cifar(
  depth: int = 56,
  *,
  num_classes: int = 10,
  width: int = 16,
  style: Style = KERAS_STYLE,
  blocks_per_stage: Sequence[int] | None = None,
  min_blocks_per_stage: int = arch_lib.DEFAULT_MIN_BLOCKS_PER_STAGE,
) -> arch_lib.Arch:
  """The CIFAR ResNet of He et al. 2016 (depth = 6n + 2), as in the papers.

  Args:
    depth: 20, 32, 44, 56, 110, ... (any 6n + 2); ignored when
      `blocks_per_stage` is given.
    num_classes: classifier outputs.
    width: stem and first-stage width; stages are width, 2x, 4x.
    style: layer details (default: the papers' Keras models).
    blocks_per_stage: explicit blocks per stage (tiny test models).
    min_blocks_per_stage: pruning floor.

  Returns:
    The unpruned `Arch`.
  """
  if blocks_per_stage is None:
    if depth < 8 or (depth - 2) % 6:
      raise ValueError(
        f'CIFAR ResNet depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, '
        f'110, ...); got {depth}.'
      )
    blocks_per_stage = [(depth - 2) // 6] * 3
  widths = [width, 2 * width, 4 * width]
  stages = tuple(
    arch_lib.Stage(
      width=w,
      stride=st,
      blocks=tuple(make_block(s, i, (w,)) for i in range(n)),
    )
    for s, (w, st, n) in enumerate(
      zip(widths, [1, 2, 2], blocks_per_stage), start=1
    )
  )
  return make_arch(
    'resnet_cifar',
    stages,
    num_classes=num_classes,
    stem_width=width,
    style=style,
    min_blocks_per_stage=min_blocks_per_stage,
  )


_IMAGENET_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


def resnet_imagenet(
  depth: int = 50,
  *,
  num_classes: int = 1000,
  width: int = 64,
  style: Style = KERAS_IMAGENET_STYLE,
  blocks_per_stage: Sequence[int] | None = None,
  min_blocks_per_stage: int = arch_lib.DEFAULT_MIN_BLOCKS_PER_STAGE,
) -> arch_lib.Arch:
  """The bottleneck ImageNet ResNet (50/101/152) of He et al. 2016.

  Stage `s` has bottleneck width `width * 2**(s-1)` and output width four
  times that; the first block of every stage projects.

  Args:
    depth: 50, 101 or 152; ignored when `blocks_per_stage` is given.
    num_classes: classifier outputs.
    width: stem width and first-stage bottleneck width.
    style: layer details (default: Keras' ResNet50).
    blocks_per_stage: explicit blocks per stage (tiny test models).
    min_blocks_per_stage: pruning floor.

  Returns:
    The unpruned `Arch`.
  """
  if blocks_per_stage is None:
    if depth not in _IMAGENET_DEPTHS:
      raise ValueError(
        f'ImageNet ResNet depth must be one of {sorted(_IMAGENET_DEPTHS)}; '
        f'got {depth}.'
      )
    blocks_per_stage = _IMAGENET_DEPTHS[depth]
  inner = [width * 2**s for s in range(len(blocks_per_stage))]
  stages = tuple(
    arch_lib.Stage(
      width=4 * w,
      stride=1 if s == 1 else 2,
      blocks=tuple(make_block(s, i, (w, w)) for i in range(n)),
    )
    for s, (w, n) in enumerate(zip(inner, blocks_per_stage), start=1)
  )
  return make_arch(
    'resnet_imagenet',
    stages,
    num_classes=num_classes,
    stem_width=width,
    style=style,
    min_blocks_per_stage=min_blocks_per_stage,
  )


def get_arch(name: str, **kwargs: Any) -> arch_lib.Arch:
  """An unpruned ResNet by name: `resnet20` ... `resnet110`, `resnet50` ...

  CIFAR names accept any depth 6n + 2 (`resnet_cifar(depth)`), ImageNet names
  50/101/152 (`resnet_imagenet(depth)`). Keyword arguments go to the
  constructor (`num_classes`, `width`, `style`, `blocks_per_stage`, ...).

  Raises:
    KeyError: for an unknown name, listing the valid ones.
  """
  if name.startswith('resnet') and name[6:].isdigit():
    depth = int(name[6:])
    if depth in _IMAGENET_DEPTHS:
      return resnet_imagenet(depth, **kwargs)
    if depth >= 8 and (depth - 2) % 6 == 0:
      return resnet_cifar(depth, **kwargs)
  raise KeyError(f'Unknown model {name!r}; valid models: {NAMES}.')


NAMES = (
  'resnet{6n+2} (resnet20, resnet32, resnet44, resnet56, resnet110)',
  'resnet50',
  'resnet101',
  'resnet152',
)


def _check(arch: arch_lib.Arch) -> None:
  expected = 2 if arch.family == 'resnet_imagenet' else 1
  if arch.option('stem_width') is None:
    raise ValueError(f'{arch.summary()} has no stem_width option.')
  for s, stage in enumerate(arch.stages, start=1):
    if stage.blocks[0].index != 0:
      raise ValueError(
        f'Stage {s} lost its first block ({block_name(s, 0)}); the first '
        'block of a stage is never removable.'
      )
    for block in stage.blocks:
      if len(block.widths) != expected:
        raise ValueError(
          f'{block.name} has inner widths {block.widths}; a {arch.family} '
          f'block needs {expected}.'
        )


def _prunable_filters(arch: arch_lib.Arch) -> tuple[tuple[str, int, int], ...]:
  """`(block, k, width)` of every inner conv whose filters may be pruned.

  Every inner conv of every block but the last (whose outputs join the
  shortcut): the first 3x3 conv of a basic block, the 1x1 and 3x3 convs of
  a bottleneck, down-sampling blocks included (Nascimento et al. 2025, the
  CIFAR code's prunable layers).
  """
  return tuple(
    (block.name, k, w)
    for block in arch.blocks
    for k, w in enumerate(block.widths)
  )


def _num_filters(arch: arch_lib.Arch) -> int:
  """Output channels of every convolution: stem, inner, last, projection.

  ResNet-56 (Keras style) has 2,128: 16 + 9 x (16 + 16) + 9 x (32 + 32) +
  9 x (64 + 64) plus the two projections' 32 + 64 (Nascimento et al. 2025
  count "filters" this way).
  """
  total = arch.option('stem_width')
  in_width = total
  for stage in arch.stages:
    for block in stage.blocks:
      total += sum(block.widths) + stage.width
      if block.index == 0 and (stage.stride != 1 or in_width != stage.width):
        total += stage.width
      in_width = stage.width
  return total


def _split_filter_mask(arch, filter_mask):
  """`[F]` -> `{block: [mask of inner width k, ...]}`, checked."""
  if filter_mask is None:
    return None
  units = _prunable_filters(arch)
  total = sum(w for _, _, w in units)
  if jnp.shape(filter_mask) != (total,):
    raise ValueError(
      f'filter_mask must have shape ({total},) = one entry per prunable '
      f'filter; got shape {jnp.shape(filter_mask)}.'
    )
  out, start = {}, 0
  for name, _, w in units:
    out.setdefault(name, []).append(filter_mask[start : start + w])
    start += w
  return out


def _width_slices(arch, block, k):
  """Inner conv `k+1`'s outputs: its kernel and bias, its BN, the next conv."""
  del arch, block
  conv_out, bn, conv_in = f'conv{k + 1}', f'bn{k + 1}', f'conv{k + 2}'
  return (
    ((conv_out, 'kernel'), -1),
    ((conv_out, 'bias'), -1),
    ((bn, '*'), 0),
    ((conv_in, 'kernel'), 2),
  )


def _from_config(config, num_classes, input_shape):
  del input_shape
  if config.style not in STYLES:
    raise KeyError(
      f'Unknown style {config.style!r}; valid styles: {sorted(STYLES)}.'
    )
  kwargs: dict[str, Any] = dict(
    num_classes=num_classes,
    style=STYLES[config.style],
    min_blocks_per_stage=config.min_blocks_per_stage,
  )
  if config.width:
    kwargs['width'] = config.width
  if config.blocks_per_stage:
    kwargs['blocks_per_stage'] = tuple(config.blocks_per_stage)
  return get_arch(config.model, **kwargs)


def _family(name: str, input_shape: tuple[int, ...]) -> family_lib.Family:
  return family_lib.Family(
    name=name,
    module=ResNet,
    input_dtype='float32',
    default_input_shape=lambda arch: input_shape,
    fanout=True,
    width_slices=_width_slices,
    prunable_filters=_prunable_filters,
    num_filters=_num_filters,
    from_config=_from_config,
    check=_check,
  )


CIFAR = _family('resnet_cifar', (32, 32, 3))
IMAGENET = _family('resnet_imagenet', (224, 224, 3))
