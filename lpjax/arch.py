"""`Arch`: a network described as data.

An `Arch` names the model family, the style options that decide its exact
layers, and, per stage, the residual blocks that exist. Every block carries a
**stable id** (its stage and its position in the original, unpruned stage) and
its inner width(s). The unpruned network and every pruned one are `Arch`
values, so a pruned model can be rebuilt from its `Arch` alone (`to_json` /
`from_json`), and removing a block renames nothing: module names come from the
ids (`stage2_block07`).

Candidates (the rule of the papers' code, Pons et al. 2024): a block is
removable iff its shortcut is an identity and it has a predecessor in its
stage, i.e. it is not the first block of its stage (the first block of stage 1
has no predecessor; every other first block downsamples or projects). A per-stage floor keeps at least `min_blocks_per_stage` blocks in
every stage (the papers: 2).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from typing import Any

FAMILIES = ('resnet_cifar', 'resnet_imagenet')

# The papers' floor: "given k layers within a stage, the pruning can remove at
# most k-2" (Pons et al. 2024, App. A.4).
DEFAULT_MIN_BLOCKS_PER_STAGE = 2


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


@dataclasses.dataclass(frozen=True)
class Block:
  """One residual block.

  Attributes:
    stage: 1-based stage index.
    index: 0-based position in the original, unpruned stage (the stable id).
    widths: output channels of the block's inner convolutions, i.e. all but
      the last: `(c1,)` for a basic block, `(c1, c2)` for a bottleneck. Filter
      pruning shrinks these; the block's output width is the stage's.
  """

  stage: int
  index: int
  widths: tuple[int, ...]

  @property
  def name(self) -> str:
    return block_name(self.stage, self.index)


@dataclasses.dataclass(frozen=True)
class Stage:
  """One stage: blocks that share an output width and resolution.

  Attributes:
    width: output channels of every block in the stage.
    stride: stride of the stage's first block (1 or 2).
    blocks: the blocks that exist, in network order.
  """

  width: int
  stride: int
  blocks: tuple[Block, ...]


@dataclasses.dataclass(frozen=True)
class Arch:
  """A ResNet as data: family, style, stem, stages and head.

  Attributes:
    family: one of `FAMILIES`.
    stages: the stages in network order.
    num_classes: classifier outputs.
    stem_width: channels of the stem convolution.
    style: layer details, see `Style`.
    min_blocks_per_stage: the per-stage floor pruning must respect.
  """

  family: str
  stages: tuple[Stage, ...]
  num_classes: int
  stem_width: int
  style: Style = KERAS_STYLE
  min_blocks_per_stage: int = DEFAULT_MIN_BLOCKS_PER_STAGE

  def __post_init__(self):
    if self.family not in FAMILIES:
      raise ValueError(
        f'Unknown family {self.family!r}; valid families: {FAMILIES}.'
      )
    expected = 2 if self.family == 'resnet_imagenet' else 1
    for s, stage in enumerate(self.stages, start=1):
      if not stage.blocks:
        raise ValueError(f'Stage {s} has no blocks; every stage needs one.')
      if stage.blocks[0].index != 0:
        raise ValueError(
          f'Stage {s} lost its first block ({block_name(s, 0)}); the '
          'first block of a stage is never removable.'
        )
      for block in stage.blocks:
        if block.stage != s:
          raise ValueError(f'{block.name} is listed under stage {s}.')
        if len(block.widths) != expected or min(block.widths) < 1:
          raise ValueError(
            f'{block.name} has inner widths {block.widths}; a '
            f'{self.family} block needs {expected} positive width(s).'
          )
      ids = [b.index for b in stage.blocks]
      if ids != sorted(set(ids)):
        raise ValueError(f'Stage {s} block ids {ids} are not increasing.')

  # --- Blocks ---------------------------------------------------------------

  @property
  def blocks(self) -> tuple[Block, ...]:
    """Every existing block, in network order."""
    return tuple(b for stage in self.stages for b in stage.blocks)

  @property
  def blocks_per_stage(self) -> tuple[int, ...]:
    return tuple(len(stage.blocks) for stage in self.stages)

  def block(self, name: str) -> Block:
    """The block called `name`; `KeyError` listing the existing ones."""
    for b in self.blocks:
      if b.name == name:
        return b
    raise KeyError(
      f'No block {name!r} in this network; existing blocks: '
      f'{[b.name for b in self.blocks]}.'
    )

  def is_candidate(self, name: str) -> bool:
    """Whether `name` is a removable block (identity shortcut)."""
    return self.block(name).index > 0

  @property
  def candidates(self) -> tuple[str, ...]:
    """Names of every removable block, in network order (floor ignored).

    This order defines the `skip` mask the models take.
    """
    return tuple(b.name for b in self.blocks if b.index > 0)

  def removable(self) -> tuple[str, ...]:
    """Candidates whose removal keeps every stage above the floor."""
    return tuple(
      b.name
      for stage in self.stages
      if len(stage.blocks) > self.min_blocks_per_stage
      for b in stage.blocks
      if b.index > 0
    )

  def max_removable(self) -> int:
    """How many more blocks the floor lets pruning remove."""
    return sum(
      max(0, len(s.blocks) - max(self.min_blocks_per_stage, 1))
      for s in self.stages
    )

  def skip_mask(self, names: Iterable[str] = ()) -> list[bool]:
    """A `[len(candidates)]` mask that skips the named candidate blocks."""
    names = set(names)
    cands = self.candidates
    unknown = sorted(names - set(cands))
    if unknown:
      raise ValueError(
        f'Cannot skip {unknown}: not candidate blocks of this network. '
        f'Candidates: {list(cands)}.'
      )
    return [c in names for c in cands]

  # --- Edits ----------------------------------------------------------------

  def without(
    self, names: Iterable[str], *, enforce_floor: bool = True
  ) -> Arch:
    """This network with the named blocks removed.

    Args:
      names: block names to remove; each must be a candidate.
      enforce_floor: raise if a stage would drop below the floor.

    Returns:
      The smaller `Arch`.

    Raises:
      ValueError: on unknown blocks, non-candidates, or a floor violation.
    """
    names = list(dict.fromkeys(names))
    existing = {b.name for b in self.blocks}
    unknown = [n for n in names if n not in existing]
    if unknown:
      raise ValueError(
        f'Cannot remove {unknown}: no such block. Existing: {sorted(existing)}.'
      )
    fixed = [n for n in names if not self.is_candidate(n)]
    if fixed:
      raise ValueError(
        f'Cannot remove {fixed}: the first block of a stage downsamples or '
        f'has no predecessor, so it is never a candidate. Candidates: '
        f'{list(self.candidates)}.'
      )
    drop = set(names)
    stages = []
    for s, stage in enumerate(self.stages, start=1):
      kept = tuple(b for b in stage.blocks if b.name not in drop)
      if enforce_floor and len(kept) < min(
        self.min_blocks_per_stage, len(stage.blocks)
      ):
        raise ValueError(
          f'Removing {sorted(drop)} leaves stage {s} with {len(kept)} '
          f'block(s), below the floor of {self.min_blocks_per_stage}. '
          f'Removable now: {list(self.removable())}.'
        )
      stages.append(dataclasses.replace(stage, blocks=kept))
    return dataclasses.replace(self, stages=tuple(stages))

  def with_widths(self, name: str, widths: Sequence[int]) -> Arch:
    """This network with block `name`'s inner widths replaced."""
    target = self.block(name)
    stages = tuple(
      dataclasses.replace(
        stage,
        blocks=tuple(
          dataclasses.replace(b, widths=tuple(int(w) for w in widths))
          if b == target
          else b
          for b in stage.blocks
        ),
      )
      for stage in self.stages
    )
    return dataclasses.replace(self, stages=stages)

  # --- Serialisation --------------------------------------------------------

  def to_dict(self) -> dict[str, Any]:
    return {
      'family': self.family,
      'num_classes': self.num_classes,
      'stem_width': self.stem_width,
      'min_blocks_per_stage': self.min_blocks_per_stage,
      'style': dataclasses.asdict(self.style),
      'stages': [
        {
          'width': st.width,
          'stride': st.stride,
          'blocks': [
            {'index': b.index, 'widths': list(b.widths)} for b in st.blocks
          ],
        }
        for st in self.stages
      ],
    }

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> Arch:
    return cls(
      family=d['family'],
      num_classes=int(d['num_classes']),
      stem_width=int(d['stem_width']),
      min_blocks_per_stage=int(d['min_blocks_per_stage']),
      style=Style(**d['style']),
      stages=tuple(
        Stage(
          width=int(st['width']),
          stride=int(st['stride']),
          blocks=tuple(
            Block(s, int(b['index']), tuple(int(w) for w in b['widths']))
            for b in st['blocks']
          ),
        )
        for s, st in enumerate(d['stages'], start=1)
      ),
    )

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=1)

  @classmethod
  def from_json(cls, text: str) -> Arch:
    return cls.from_dict(json.loads(text))

  def summary(self) -> str:
    """One line: family, blocks per stage, candidates."""
    return (
      f'{self.family} blocks/stage={list(self.blocks_per_stage)} '
      f'candidates={len(self.candidates)} removable={len(self.removable())}'
    )


def block_name(stage: int, index: int) -> str:
  """The module name of a block: `stage2_block07`."""
  return f'stage{stage}_block{index:02d}'


def _stages(widths, strides, counts, inner) -> tuple[Stage, ...]:
  return tuple(
    Stage(
      width=w,
      stride=st,
      blocks=tuple(Block(s, i, inner(w)) for i in range(n)),
    )
    for s, (w, st, n) in enumerate(zip(widths, strides, counts), start=1)
  )


def resnet_cifar(
  depth: int = 56,
  *,
  num_classes: int = 10,
  width: int = 16,
  style: Style = KERAS_STYLE,
  blocks_per_stage: Sequence[int] | None = None,
  min_blocks_per_stage: int = DEFAULT_MIN_BLOCKS_PER_STAGE,
) -> Arch:
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
  return Arch(
    family='resnet_cifar',
    stages=_stages(widths, [1, 2, 2], blocks_per_stage, lambda w: (w,)),
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
  min_blocks_per_stage: int = DEFAULT_MIN_BLOCKS_PER_STAGE,
) -> Arch:
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
    Stage(
      width=4 * w,
      stride=1 if s == 1 else 2,
      blocks=tuple(Block(s, i, (w, w)) for i in range(n)),
    )
    for s, (w, n) in enumerate(zip(inner, blocks_per_stage), start=1)
  )
  return Arch(
    family='resnet_imagenet',
    stages=stages,
    num_classes=num_classes,
    stem_width=width,
    style=style,
    min_blocks_per_stage=min_blocks_per_stage,
  )


def get_arch(name: str, **kwargs: Any) -> Arch:
  """An unpruned `Arch` by name: `resnet20` ... `resnet110`, `resnet50` ...

  CIFAR names accept any depth 6n + 2 (`resnet_cifar(depth)`), ImageNet names
  50/101/152 (`resnet_imagenet(depth)`). Keyword arguments go to the
  constructor (`num_classes`, `width`, `style`, `blocks_per_stage`, ...).

  Raises:
    KeyError: for an unknown name, listing the valid ones.
  """
  valid = (
    'resnet{6n+2} (resnet20, resnet32, resnet44, resnet56, resnet110)',
    'resnet50',
    'resnet101',
    'resnet152',
  )
  if name.startswith('resnet') and name[6:].isdigit():
    depth = int(name[6:])
    if depth in _IMAGENET_DEPTHS:
      return resnet_imagenet(depth, **kwargs)
    if depth >= 8 and (depth - 2) % 6 == 0:
      return resnet_cifar(depth, **kwargs)
  raise KeyError(f'Unknown model {name!r}; valid models: {valid}.')
