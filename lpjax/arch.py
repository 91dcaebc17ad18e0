"""`Arch`: a network described as data, for any model family.

An `Arch` names its family (`lpjax.models.FAMILIES`), the family's
hyperparameters as plain data (`options`), and, per stage, the units that
exist: residual blocks of a ResNet, encoder layers of a transformer. Every
unit carries a **stable id** (its name in the original, unpruned network:
`stage2_block07`, `layer05`), its inner width(s) and whether pruning may
remove it. The unpruned network and every pruned one are `Arch` values, so a
pruned model can be rebuilt from its `Arch` alone (`to_json` / `from_json`),
and removing a unit renames nothing: module names come from the ids.

This module is family-neutral: which units are candidates is recorded per
unit by the family that built the `Arch` (`Block.candidate`), and a per-stage
floor keeps at least `min_blocks_per_stage` units in every stage (the CNN
papers: 2).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# The papers' floor: "given k layers within a stage, the pruning can remove at
# most k-2" (Pons et al. 2024, App. A.4).
DEFAULT_MIN_BLOCKS_PER_STAGE = 2


@dataclasses.dataclass(frozen=True)
class Block:
  """One unit: a residual block, a transformer layer.

  Attributes:
    stage: 1-based stage index.
    index: 0-based position in the original, unpruned stage.
    widths: the unit's inner widths, the ones filter surgery may shrink
      (`(c1,)` for a basic block, `(c1, c2)` for a bottleneck, `(mlp,)` for
      a transformer layer). The unit's output width is the stage's.
    name: the stable id and module name (`stage2_block07`, `layer05`).
    candidate: whether pruning may remove the unit (skipping it must equal
      deleting it).
  """

  stage: int
  index: int
  widths: tuple[int, ...]
  name: str
  candidate: bool = True


@dataclasses.dataclass(frozen=True)
class Stage:
  """Units that share an output width (and, for CNNs, a resolution).

  Attributes:
    width: output width of every unit in the stage.
    stride: stride of the stage's first unit (1 where it has no meaning).
    blocks: the units that exist, in network order.
  """

  width: int
  stride: int
  blocks: tuple[Block, ...]


def _freeze(value: Any) -> Any:
  """JSON-like data -> hashable (lists to tuples, dicts to sorted pairs)."""
  if isinstance(value, Mapping):
    raise TypeError('Arch options hold scalars or sequences, not mappings.')
  if isinstance(value, (list, tuple)):
    return tuple(_freeze(v) for v in value)
  return value


@dataclasses.dataclass(frozen=True)
class Arch:
  """A network as data: family, options, stages of units, classes.

  Attributes:
    family: the model family's registry name (`lpjax.models.FAMILIES`).
    stages: the stages in network order.
    num_classes: classifier outputs.
    options: the family's hyperparameters, as sorted `(key, value)` pairs of
      JSON scalars or tuples (hashable: an `Arch` is a static part of a
      linen module). Read them with `option` / `options_dict`.
    min_blocks_per_stage: the per-stage floor pruning must respect.
  """

  family: str
  stages: tuple[Stage, ...]
  num_classes: int
  options: tuple[tuple[str, Any], ...] = ()
  min_blocks_per_stage: int = DEFAULT_MIN_BLOCKS_PER_STAGE

  def __post_init__(self):
    if isinstance(self.options, Mapping):
      items = self.options.items()
    else:
      items = self.options
    object.__setattr__(
      self, 'options', tuple(sorted((k, _freeze(v)) for k, v in items))
    )
    seen = set()
    for s, stage in enumerate(self.stages, start=1):
      if not stage.blocks:
        raise ValueError(f'Stage {s} has no units; every stage needs one.')
      for block in stage.blocks:
        if block.stage != s:
          raise ValueError(f'{block.name} is listed under stage {s}.')
        if not block.widths or min(block.widths) < 1:
          raise ValueError(
            f'{block.name} has inner widths {block.widths}; they must be '
            'positive.'
          )
        if block.name in seen:
          raise ValueError(f'Unit name {block.name!r} appears twice.')
        seen.add(block.name)
      ids = [b.index for b in stage.blocks]
      if ids != sorted(set(ids)):
        raise ValueError(f'Stage {s} unit indices {ids} are not increasing.')

  def option(self, key: str, default: Any = None) -> Any:
    """The family option `key` (`default` if absent)."""
    return dict(self.options).get(key, default)

  def options_dict(self) -> dict[str, Any]:
    return dict(self.options)

  # --- Units ----------------------------------------------------------------

  @property
  def blocks(self) -> tuple[Block, ...]:
    """Every existing unit, in network order."""
    return tuple(b for stage in self.stages for b in stage.blocks)

  @property
  def blocks_per_stage(self) -> tuple[int, ...]:
    return tuple(len(stage.blocks) for stage in self.stages)

  def block(self, name: str) -> Block:
    """The unit called `name`; `KeyError` listing the existing ones."""
    for b in self.blocks:
      if b.name == name:
        return b
    raise KeyError(
      f'No unit {name!r} in this network; existing units: '
      f'{[b.name for b in self.blocks]}.'
    )

  def is_candidate(self, name: str) -> bool:
    """Whether `name` is a removable unit (floor ignored)."""
    return self.block(name).candidate

  @property
  def candidates(self) -> tuple[str, ...]:
    """Names of every removable unit, in network order (floor ignored).

    This order defines the `skip` mask the models take.
    """
    return tuple(b.name for b in self.blocks if b.candidate)

  def removable(self) -> tuple[str, ...]:
    """Candidates whose removal keeps every stage above the floor."""
    return tuple(
      b.name
      for stage in self.stages
      if len(stage.blocks) > self.min_blocks_per_stage
      for b in stage.blocks
      if b.candidate
    )

  def max_removable(self) -> int:
    """How many more units the floor lets pruning remove."""
    return sum(
      min(
        sum(b.candidate for b in s.blocks),
        max(0, len(s.blocks) - max(self.min_blocks_per_stage, 1)),
      )
      for s in self.stages
    )

  def floor(self) -> Arch:
    """The smallest network pruning can reach: every stage at the floor.

    The latest candidates of each stage go first (which ones does not change
    the size of an identity-shaped unit, so any choice gives the same cost).
    """
    drop = []
    for stage in self.stages:
      room = len(stage.blocks) - max(self.min_blocks_per_stage, 1)
      cands = [b.name for b in stage.blocks if b.candidate]
      drop += cands[len(cands) - max(0, min(room, len(cands))) :]
    return self.without(drop)

  def skip_mask(self, names: Iterable[str] = ()) -> list[bool]:
    """A `[len(candidates)]` mask that skips the named candidate units."""
    names = set(names)
    cands = self.candidates
    unknown = sorted(names - set(cands))
    if unknown:
      raise ValueError(
        f'Cannot skip {unknown}: not candidate units of this network. '
        f'Candidates: {list(cands)}.'
      )
    return [c in names for c in cands]

  # --- Edits ----------------------------------------------------------------

  def without(
    self, names: Iterable[str], *, enforce_floor: bool = True
  ) -> Arch:
    """This network with the named units removed.

    Args:
      names: unit names to remove; each must be a candidate.
      enforce_floor: raise if a stage would drop below the floor.

    Returns:
      The smaller `Arch`.

    Raises:
      ValueError: on unknown units, non-candidates, or a floor violation.
    """
    names = list(dict.fromkeys(names))
    existing = {b.name for b in self.blocks}
    unknown = [n for n in names if n not in existing]
    if unknown:
      raise ValueError(
        f'Cannot remove {unknown}: no such unit. Existing: {sorted(existing)}.'
      )
    fixed = [n for n in names if not self.is_candidate(n)]
    if fixed:
      raise ValueError(
        f'Cannot remove {fixed}: not candidates (in a ResNet, the first block '
        'of a stage downsamples or has no predecessor). Candidates: '
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
          f'unit(s), below the floor of {self.min_blocks_per_stage}. '
          f'Removable now: {list(self.removable())}.'
        )
      stages.append(dataclasses.replace(stage, blocks=kept))
    return dataclasses.replace(self, stages=tuple(stages))

  def with_widths(self, name: str, widths: Sequence[int]) -> Arch:
    """This network with unit `name`'s inner widths replaced."""
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
      'min_blocks_per_stage': self.min_blocks_per_stage,
      'options': dict(self.options),
      'stages': [
        {
          'width': st.width,
          'stride': st.stride,
          'blocks': [
            {
              'name': b.name,
              'index': b.index,
              'widths': list(b.widths),
              'candidate': b.candidate,
            }
            for b in st.blocks
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
      min_blocks_per_stage=int(d['min_blocks_per_stage']),
      options=d.get('options', {}),
      stages=tuple(
        Stage(
          width=int(st['width']),
          stride=int(st['stride']),
          blocks=tuple(
            Block(
              stage=s,
              index=int(b['index']),
              widths=tuple(int(w) for w in b['widths']),
              name=str(b['name']),
              candidate=bool(b['candidate']),
            )
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
    """One line: family, units per stage, candidates."""
    return (
      f'{self.family} units/stage={list(self.blocks_per_stage)} '
      f'candidates={len(self.candidates)} removable={len(self.removable())}'
    )
