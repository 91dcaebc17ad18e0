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
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from lpjax import arch as arch_lib

# Keras' he_normal for convolutions (truncated normal, fan-in, scale 2).
_CONV_INIT = nn.initializers.variance_scaling(2.0, 'fan_in', 'truncated_normal')


def _layers(style: arch_lib.Style, train: bool):
  conv = functools.partial(
    nn.Conv, use_bias=style.conv_bias, kernel_init=_CONV_INIT
  )
  norm = functools.partial(
    nn.BatchNorm,
    use_running_average=not train,
    momentum=style.bn_momentum,
    epsilon=style.bn_epsilon,
  )
  return conv, norm


def _pad3x3(style: arch_lib.Style, stride: int):
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
  style: arch_lib.Style

  @nn.compact
  def __call__(
    self,
    x: jax.Array,
    *,
    train: bool,
    skip: jax.Array | None = None,
    passthrough: int = 0,
  ) -> jax.Array:
    """The block's output, or its input where skipped.

    Args:
      x: input `[batch, height, width, channels]`.
      train: BatchNorm mode.
      skip: optional traced boolean scalar; true returns `x` unchanged (only
        valid for identity blocks).
      passthrough: static; if positive, the first `passthrough` rows of `x`
        are appended unchanged after the output rows (the shared-prefix
        evaluation of `ResNet(..., fanout=True)`).
    """
    conv, norm = _layers(self.style, train)
    y = self._residual(x, conv, norm)
    y = nn.relu(y + self._shortcut(x, conv, norm))
    if skip is not None:
      y = jnp.where(skip, x, y)
    if passthrough:
      y = jnp.concatenate([y, x[:passthrough]])
    return y

  def _residual(self, x, conv, norm):
    s = (self.stride, self.stride)
    pad = _pad3x3(self.style, self.stride)
    y = conv(self.inner, (3, 3), strides=s, padding=pad, name='conv1')(x)
    y = nn.relu(norm(name='bn1')(y))
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

  def _residual(self, x, conv, norm):
    on3 = self.style.bottleneck_stride_on_3x3
    s1 = (1, 1) if on3 else (self.stride, self.stride)
    s3 = (self.stride, self.stride) if on3 else (1, 1)
    pad = _pad3x3(self.style, s3[0])
    y = conv(self.inner, (1, 1), strides=s1, padding='VALID', name='conv1')(x)
    y = nn.relu(norm(name='bn1')(y))
    y = conv(self.inner2, (3, 3), strides=s3, padding=pad, name='conv2')(y)
    y = nn.relu(norm(name='bn2')(y))
    y = conv(self.width, (1, 1), padding='VALID', name='conv3')(y)
    return norm(name='bn3')(y)


BLOCK_TYPES = (BasicBlock, Bottleneck)


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

    Returns:
      Logits `[batch, num_classes]` (`[(1 + K) * batch, num_classes]` with
      `fanout`).
    """
    arch = self.arch
    cands = arch.candidates
    if skip is not None and jnp.shape(skip) != (len(cands),):
      raise ValueError(
        f'skip must have shape ({len(cands)},) = one entry per candidate '
        f'block {list(cands)}; got shape {jnp.shape(skip)}.'
      )
    if fanout and (train or skip is not None):
      raise ValueError(
        'fanout evaluates every single-block removal of the eval-mode model; '
        'it cannot be combined with train=True (BatchNorm would mix the '
        'streams) or with a skip mask.'
      )
    batch = x.shape[0]
    conv, norm = _layers(arch.style, train)
    if arch.family == 'resnet_cifar':
      x = conv(arch.stem_width, (3, 3), padding='SAME', name='stem_conv')(x)
      x = nn.relu(norm(name='stem_bn')(x))
    else:
      x = conv(
        arch.stem_width,
        (7, 7),
        strides=(2, 2),
        padding=((3, 3), (3, 3)),
        name='stem_conv',
      )(x)
      x = nn.relu(norm(name='stem_bn')(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

    in_width = arch.stem_width
    for stage in arch.stages:
      for block in stage.blocks:
        first = block.index == 0
        stride = stage.stride if first else 1
        kw = dict(
          width=stage.width,
          inner=block.widths[0],
          stride=stride,
          project=first and (stride != 1 or in_width != stage.width),
          style=arch.style,
          name=block.name,
        )
        route = dict(train=train)
        if skip is not None and not first:
          route['skip'] = skip[cands.index(block.name)]
        if fanout and not first:
          route['passthrough'] = batch  # the unpruned stream comes first
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
