"""Import the papers' published Keras CIFAR ResNets (`.json` + `.h5`).

The layer-pruning papers publish their ResNets as a Keras architecture JSON
(`model.to_json()`) and an HDF5 weights file (`model.save_weights`, or a full
`model.save`). `load_keras_model` turns such a pair into an `Arch` and the
`{'params', 'batch_stats'}` of `lpjax.models.build_model(arch)`, reading the
files with `json` and `h5py` only: TensorFlow is not needed.

Keras names layers by a global counter (`conv2d_17`, `add_30`), so a name says
nothing about where a layer sits. The loader walks the graph from the input
instead: stem conv -> BN -> ReLU; then one residual block per `Add`,

    x -> conv1 -> bn1 -> relu -> conv2 -> bn2 -> Add -> relu
    x -------- identity, or proj_conv [-> proj_bn] ---'

where a block whose shortcut is a projection opens a new stage and the others
continue the current one; then average pooling over the whole final map ->
flatten -> dense (its pre-softmax output is the logits).

**Stable ids.** A pruned Keras model just has fewer blocks per stage; which
blocks of the original network survived is not recorded in the files. By
default the surviving blocks of every stage are numbered `0 .. k-1`, i.e. as
if the removed blocks had been the last ones of their stage. Pass `block_ids`
to give the true original indices when they are known. Outputs, FLOPs and
parameter counts do not depend on this choice; only block names do.

**Filter pruning.** A block's inner width (`Block.widths`) is the number of
filters of its first conv, so filter-pruned models load as they are.

**Damaged or hostile files** raise `KerasImportError` naming the file and the
layer: the JSON's structure and every number in it are checked before use,
a cycle in the graph is refused before the walk, and every weight's declared
shape is checked against what the architecture implies (and against the
bytes the file actually stores) before a byte of it is read, so a file
cannot make the loader allocate more than its model needs.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import h5py
import jax
import numpy as np

from lpjax import arch as arch_lib
from lpjax import errors, models
from lpjax.models import resnet

# Keras BatchNormalization weight -> (flax collection, flax name).
_BN_WEIGHTS = {
  'gamma': ('params', 'scale'),
  'beta': ('params', 'bias'),
  'moving_mean': ('batch_stats', 'mean'),
  'moving_variance': ('batch_stats', 'var'),
}
_POOL_KINDS = ('AveragePooling2D', 'GlobalAveragePooling2D')
# A block's residual branch; 'relu' is any ReLU layer.
_BRANCH = (
  'Conv2D',
  'BatchNormalization',
  'relu',
  'Conv2D',
  'BatchNormalization',
)


# A Keras ResNet's architecture JSON is well under a megabyte.
_MAX_JSON_BYTES = 64 * 2**20
# Bound of every size the JSON declares (filters, units, image size).
_MAX_DIM = 2**31 - 1
# At most this many datasets per layer group; a BN has four.
_MAX_WEIGHTS_PER_LAYER = 64
# A compressed weight may declare at most this many times its stored bytes
# (deflate's limit is about 1032).
_MAX_COMPRESSION = 1100
# What h5py raises for a damaged file (libhdf5 errors surface as any of
# these).
_H5_ERRORS = (OSError, KeyError, RuntimeError, TypeError, ValueError)


class KerasImportError(errors.UserError, ValueError):
  """The files do not describe a model this loader understands."""


@dataclasses.dataclass(frozen=True)
class _Layer:
  name: str
  kind: str
  config: Mapping[str, Any]
  inputs: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class _KerasBlock:
  conv1: _Layer
  bn1: _Layer
  conv2: _Layer
  bn2: _Layer
  proj_conv: _Layer | None
  proj_bn: _Layer | None


@dataclasses.dataclass(frozen=True)
class _KerasNet:
  image_shape: tuple[int, int, int]
  stem_conv: _Layer
  stem_bn: _Layer
  blocks: tuple[_KerasBlock, ...]
  pool: _Layer
  dense: _Layer


def load_keras_model(
  json_path: str | os.PathLike[str],
  h5_path: str | os.PathLike[str],
  *,
  num_classes: int | None = None,
  block_ids: Sequence[Sequence[int]] | None = None,
) -> tuple[arch_lib.Arch, dict[str, Any]]:
  """Loads a Keras CIFAR ResNet as an `Arch` and flax variables.

  Args:
    json_path: the architecture JSON (`model.to_json()`, Keras 2 format).
    h5_path: the weights (`save_weights` or full `save`, Keras 2 HDF5).
    num_classes: expected classifier outputs; `None` takes them from the
      dense layer, otherwise a mismatch raises.
    block_ids: optional original (unpruned) index of every block, one
      sequence per stage, e.g. `[[0, 1, 4], [0, 8], [0, 2, 3]]`; each stage's
      ids start at 0 and increase. Default: `range(k)` for a stage with `k`
      blocks, i.e. the removed blocks are assumed to have been the last ones
      of their stage (see the module docstring).

  Returns:
    `(arch, variables)`: an `Arch` of family `'resnet_cifar'` whose style is
    read from the JSON (conv bias, BN epsilon and momentum, projection with
    or without BN), and `{'params': ..., 'batch_stats': ...}` of float32 jax
    arrays with exactly the tree of `lpjax.models.variable_shapes(arch,
    image_shape)`: conv kernels `[height, width, in, out]`, the dense kernel
    `[width, num_classes]`.

  Raises:
    FileNotFoundError: a file does not exist.
    KerasImportError: (a `ValueError`, naming the file) the graph is not a
      CIFAR ResNet this loader understands (the message names the layer), a
      file is truncated, damaged or malformed, the weights file lacks a layer
      or weight, shapes disagree (checked before any weight is read), or
      `num_classes` / `block_ids` do not fit the model.
  """
  json_path, h5_path = os.fspath(json_path), os.fspath(h5_path)
  for path in (json_path, h5_path):
    if not os.path.isfile(path):
      raise FileNotFoundError(f'Keras model file not found: {path!r}')
  model_json = _read_json(json_path)
  try:
    net = _Graph.from_json(model_json).walk()
    arch = _make_arch(net, num_classes=num_classes, block_ids=block_ids)
  except KerasImportError as e:
    raise KerasImportError(f'{json_path!r}: {e}') from None
  try:
    f = h5py.File(h5_path, 'r')
  except _H5_ERRORS as e:
    raise KerasImportError(
      f'{h5_path!r} is not an HDF5 file, or is truncated or damaged: {e}'
    ) from e
  try:
    with f:
      stored = _find_variables(arch, net, _Weights(f))
      # Declared shapes first: nothing is read unless all fit the model.
      expected = _expected_shapes(arch, net.image_shape[2])
      _check_tree(stored, expected, json_path)
      variables = jax.tree.map(_read, stored)
  except KerasImportError as e:
    raise KerasImportError(f'{h5_path!r}: {e}') from None
  except _H5_ERRORS as e:  # The file's structure is damaged.
    raise KerasImportError(
      f'{h5_path!r} cannot be read ({type(e).__name__}: {e}); the file is '
      'truncated or damaged.'
    ) from e
  return arch, jax.device_put(variables)


def _read_json(path: str) -> Any:
  """The parsed JSON file at `path`, or `KerasImportError` naming it."""
  size = os.path.getsize(path)
  if size > _MAX_JSON_BYTES:
    raise KerasImportError(
      f'{path!r} has {size} bytes; a Keras architecture JSON is far smaller '
      f'(at most {_MAX_JSON_BYTES} bytes are read).'
    )
  with open(path, 'rb') as f:
    raw = f.read()
  try:
    return json.loads(raw.decode('utf-8'))
  except UnicodeDecodeError as e:
    raise KerasImportError(f'{path!r} is not UTF-8 text: {e}') from None
  except json.JSONDecodeError as e:
    raise KerasImportError(
      f'{path!r} is not JSON (truncated or damaged?): {e}'
    ) from None
  except RecursionError:
    raise KerasImportError(
      f'{path!r} nests arrays or objects too deeply to be a Keras model JSON.'
    ) from None


# --- Walking the graph --------------------------------------------------------


class _Graph:
  """The layers of a Keras functional model and who consumes whom."""

  def __init__(self, layers: dict[str, _Layer], source: str, output: str):
    self.layers = layers
    self.source = source
    self.output = output
    self.consumers: dict[str, list[str]] = {n: [] for n in layers}
    for layer in layers.values():
      for i in layer.inputs:
        if i not in layers:
          raise KerasImportError(
            f'layer {layer.name!r} reads from {i!r}, which is not a layer '
            'of the model.'
          )
        self.consumers[i].append(layer.name)
    for name in (source, output):
      if name not in layers:
        raise KerasImportError(f'model input/output {name!r} is not a layer.')
    self._check_acyclic()

  def _check_acyclic(self) -> None:
    """Refuses a graph with a cycle, so that every walk ends."""
    pending = {n: len(set(lyr.inputs)) for n, lyr in self.layers.items()}
    ready = [n for n, k in pending.items() if k == 0]
    while ready:
      name = ready.pop()
      for c in set(self.consumers[name]):
        pending[c] -= 1
        if pending[c] == 0:
          ready.append(c)
    left = {n for n, k in pending.items() if k > 0}
    if left:
      # Each layer left reads another one left: going back finds the cycle.
      path, name = [], min(left)
      while name not in path:
        path.append(name)
        name = min(i for i in self.layers[name].inputs if i in left)
      cycle = path[path.index(name) :][::-1]
      shown = cycle[:8] + ['...'] * (len(cycle) > 8) + cycle[:1]
      raise KerasImportError(
        f'the graph has a cycle of {len(cycle)} layers: '
        f'{" -> ".join(shown)}; not a model.'
      )

  @classmethod
  def from_json(cls, model_json: Any) -> _Graph:
    if not isinstance(model_json, dict) or 'config' not in model_json:
      raise KerasImportError('not a Keras model JSON (no "config").')
    kind = model_json.get('class_name')
    config = model_json['config']
    if kind not in ('Model', 'Functional') or not isinstance(config, dict):
      raise KerasImportError(
        f'a Keras {kind!r} model; only functional ResNets ("Model" / '
        '"Functional" with residual Add layers) can be imported.'
      )
    specs = config.get('layers', [])
    if not isinstance(specs, list):
      raise KerasImportError(
        f'"layers" is {_brief(specs)}; expected a list of layers.'
      )
    layers = {}
    for k, spec in enumerate(specs):
      layer = _parse_layer(k, spec)
      if layer.name in layers:
        raise KerasImportError(f'two layers are called {layer.name!r}.')
      layers[layer.name] = layer
    ins = _endpoints(config, 'input_layers')
    outs = _endpoints(config, 'output_layers')
    if len(ins) != 1 or len(outs) != 1:
      raise KerasImportError(
        f'the model has {len(ins)} inputs and {len(outs)} outputs; a ResNet '
        'classifier has one of each.'
      )
    return cls(layers, ins[0], outs[0])

  def walk(self) -> _KerasNet:
    """Finds stem, blocks and head by following the graph from the input."""
    source = self.layers[self.source]
    if source.kind != 'InputLayer':
      raise KerasImportError(f'input {source.name!r} is a {source.kind}.')
    image_shape = _image_shape(source)
    stem_conv = _expect(self._next(source), 'Conv2D', what='the stem conv')
    stem_bn = _expect(
      self._next(stem_conv), 'BatchNormalization', what='the stem BN'
    )
    x = _expect(self._next(stem_bn), 'relu', what='the stem ReLU')
    blocks = []
    # The graph is acyclic, so each block lies further from the input than
    # the last and the walk ends; a block has seven layers, so this bound
    # is never reached by an honest model.
    for _ in range(len(self.layers) // 4 + 1):
      if self._feeds_head(x):
        break
      block, x = self._block(x)
      blocks.append(block)
    else:
      raise KerasImportError(
        f'the walk from {source.name!r} does not reach the head.'
      )
    if not blocks:
      raise KerasImportError(
        'no residual block (Add layer) after the stem; not a ResNet.'
      )
    pool = self._next(x)
    dense = self._next(pool, what='Flatten or the dense head')
    if pool.kind == 'AveragePooling2D':
      flatten = _expect(dense, 'Flatten', what='Flatten')
      dense = self._next(flatten, what='the dense head')
    _expect(dense, 'Dense', what='the dense head')
    if dense.name != self.output:
      raise KerasImportError(
        f'dense layer {dense.name!r} is not the model output '
        f'{self.output!r}; layers after the head are not supported.'
      )
    return _KerasNet(
      image_shape, stem_conv, stem_bn, tuple(blocks), pool, dense
    )

  def _next(self, layer: _Layer, what: str = 'the next layer') -> _Layer:
    """The only consumer of `layer`, which must read `layer` only."""
    cons = self.consumers[layer.name]
    if len(cons) != 1:
      raise KerasImportError(
        f'layer {layer.name!r} feeds {len(cons)} layers {cons} where one, '
        f'{what}, was expected; not a ResNet this loader understands.'
      )
    nxt = self.layers[cons[0]]
    if nxt.inputs != (layer.name,):
      raise KerasImportError(
        f'layer {nxt.name!r} ({nxt.kind}) reads {list(nxt.inputs)}; '
        f'expected only {layer.name!r}.'
      )
    return nxt

  def _feeds_head(self, x: _Layer) -> bool:
    cons = self.consumers[x.name]
    return len(cons) == 1 and self.layers[cons[0]].kind in _POOL_KINDS

  def _block(self, x: _Layer) -> tuple[_KerasBlock, _Layer]:
    """The block that reads `x`, and its output ReLU."""
    add = self._closing_add(x)
    if len(add.inputs) != 2:
      raise KerasImportError(
        f'Add layer {add.name!r} has {len(add.inputs)} inputs; a residual '
        'block adds two.'
      )
    short, main = sorted(
      (self._chain_back(i, x, add) for i in add.inputs), key=len
    )
    if len(main) != 5 or not all(map(_matches, main, _BRANCH)):
      raise KerasImportError(
        f'the residual branch into {add.name!r} is '
        f'{[f"{m.name} ({m.kind})" for m in main]}; expected conv -> BN -> '
        'ReLU -> conv -> BN.'
      )
    if len(short) > 2:
      raise KerasImportError(
        f'the shortcut into {add.name!r} is {[s.name for s in short]}; '
        'expected identity, conv, or conv -> BN.'
      )
    proj_conv = proj_bn = None
    if short:
      proj_conv = _expect(short[0], 'Conv2D', what='a projection conv')
    if len(short) == 2:
      proj_bn = _expect(short[1], 'BatchNormalization', what='projection BN')
    feeds = {main[0].name, short[0].name if short else add.name}
    if set(self.consumers[x.name]) != feeds:
      raise KerasImportError(
        f'block input {x.name!r} feeds {self.consumers[x.name]}; expected '
        f'only {sorted(feeds)}.'
      )
    out = _expect(self._next(add), 'relu', what=f'a ReLU after {add.name!r}')
    block = _KerasBlock(main[0], main[1], main[3], main[4], proj_conv, proj_bn)
    return block, out

  def _closing_add(self, x: _Layer) -> _Layer:
    """The first Add reached from `x` breadth first: it closes the block."""
    seen, frontier = {x.name}, [x.name]
    for _ in range(8):
      nxt = []
      for name in frontier:
        for c in self.consumers[name]:
          if self.layers[c].kind == 'Add':
            return self.layers[c]
          if c not in seen:
            seen.add(c)
            nxt.append(c)
      frontier = nxt
    raise KerasImportError(
      f'no Add layer within a few layers after {x.name!r} (it feeds '
      f'{self.consumers[x.name]}); not a ResNet block, and not the head '
      '(average pooling -> flatten -> dense).'
    )

  def _chain_back(self, name: str, x: _Layer, add: _Layer) -> list[_Layer]:
    """Layers strictly between `x` and `add` on the path ending at `name`."""
    path = []
    while name != x.name:
      layer = self.layers[name]
      nxt = path[-1].name if path else add.name
      if len(path) == 5:
        found = [f'{p.name} ({p.kind})' for p in reversed(path)]
        raise KerasImportError(
          f'the branch into {add.name!r} ends with {found} and does not '
          f'reach the block input {x.name!r}: longer than conv -> BN -> '
          'ReLU -> conv -> BN.'
        )
      if len(layer.inputs) != 1:
        raise KerasImportError(
          f'layer {name!r} ({layer.kind}) inside the block closed by '
          f'{add.name!r} has {len(layer.inputs)} inputs; expected one.'
        )
      if self.consumers[name] != [nxt]:
        raise KerasImportError(
          f'layer {name!r} inside a block feeds {self.consumers[name]}; '
          f'expected only {nxt!r}.'
        )
      path.append(layer)
      name = layer.inputs[0]
    return path[::-1]


def _is_relu(layer: _Layer) -> bool:
  cfg = layer.config
  if layer.kind == 'Activation':
    return cfg.get('activation') == 'relu'
  return layer.kind == 'ReLU' and not (
    cfg.get('max_value') or cfg.get('negative_slope') or cfg.get('threshold')
  )


def _matches(layer: _Layer, kind: str) -> bool:
  """Whether `layer` is a `kind` layer; kind `'relu'` is any ReLU layer."""
  return _is_relu(layer) if kind == 'relu' else layer.kind == kind


def _expect(layer: _Layer, kind: str, *, what: str) -> _Layer:
  if not _matches(layer, kind):
    extra = ''
    if layer.kind == 'Activation':
      extra = f' with activation {layer.config.get("activation")!r}'
    raise KerasImportError(
      f'layer {layer.name!r} ({layer.kind}{extra}) is where {what} was '
      'expected; not a ResNet this loader understands.'
    )
  return layer


def _image_shape(source: _Layer) -> tuple[int, int, int]:
  cfg = source.config
  shape = cfg.get('batch_input_shape') or cfg.get('batch_shape')
  if not isinstance(shape, list) or len(shape) != 4 or shape[3] is None:
    raise KerasImportError(
      f'input {source.name!r} has shape {_brief(shape)}; expected '
      '[batch, height, width, channels] with known channels.'
    )
  # Parameters do not depend on the image size; CIFAR's is the default.
  h, w, c = (32 if d is None else d for d in shape[1:])
  return (
    _int(source, 'height', h),
    _int(source, 'width', w),
    _int(source, 'channels', c),
  )


def _brief(value: Any) -> str:
  """A JSON value as JSON text, shortened, for messages."""
  text = json.dumps(value)
  return text if len(text) <= 60 else text[:57] + '...'


def _parse_layer(k: int, spec: Any) -> _Layer:
  """The `_Layer` of the `k`-th entry of the JSON's `"layers"`."""
  if not isinstance(spec, dict):
    raise KerasImportError(
      f'layer #{k} is {_brief(spec)}; expected a layer object.'
    )
  config = spec.get('config')
  name = spec.get('name') or (config or {}).get('name')
  if not isinstance(name, str) or not name:
    raise KerasImportError(f'layer #{k} has no name (got {_brief(name)}).')
  kind = spec.get('class_name')
  if not isinstance(kind, str):
    raise KerasImportError(
      f'layer {name!r} has class_name {_brief(kind)}; expected a string.'
    )
  if not isinstance(config, dict):
    raise KerasImportError(
      f'layer {name!r} has config {_brief(config)}; expected an object.'
    )
  nodes = spec.get('inbound_nodes', [])
  if not isinstance(nodes, list):
    raise KerasImportError(
      f'layer {name!r} has inbound_nodes {_brief(nodes)}; expected a list.'
    )
  if len(nodes) > 1:
    raise KerasImportError(
      f'layer {name!r} is called {len(nodes)} times (a shared layer); '
      'not a ResNet this loader understands.'
    )
  node = nodes[0] if nodes else []
  refs = node if isinstance(node, list) else [node]
  inputs = []
  for ref in refs:
    if not isinstance(ref, list) or not ref or not isinstance(ref[0], str):
      raise KerasImportError(
        f'layer {name!r} has inbound nodes in a format this loader '
        f'does not read ({_brief(ref)}); expected the Keras 2 format '
        '[[["layer", 0, 0, {}], ...]].'
      )
    inputs.append(ref[0])
  return _Layer(name, kind, config, tuple(inputs))


def _endpoints(config: Mapping[str, Any], key: str) -> list[str]:
  """The layer names in the model config's `input_layers` / `output_layers`."""
  refs = config.get(key, [])
  if not isinstance(refs, list) or not all(
    isinstance(r, list) and r and isinstance(r[0], str) for r in refs
  ):
    raise KerasImportError(
      f'"{key}" is {_brief(refs)}; expected [["layer", 0, 0], ...].'
    )
  return [r[0] for r in refs]


def _int(layer: _Layer, key: str, value: Any) -> int:
  """`value` (the `key` of `layer`), checked to be a size: a positive int."""
  if (
    isinstance(value, bool)
    or not isinstance(value, int)
    or not 1 <= value <= _MAX_DIM
  ):
    raise KerasImportError(
      f'layer {layer.name!r} ({layer.kind}) has {key} {_brief(value)}; '
      f'expected an integer from 1 to {_MAX_DIM}.'
    )
  return value


def _dim(layer: _Layer, key: str) -> int:
  """The positive integer `key` of `layer`'s config (filters, units)."""
  return _int(layer, key, layer.config.get(key))


def _number(layer: _Layer, key: str) -> float:
  """The finite number `key` of `layer`'s config (epsilon, momentum)."""
  value = layer.config.get(key)
  if (
    isinstance(value, bool)
    or not isinstance(value, (int, float))
    or not math.isfinite(value)
  ):
    raise KerasImportError(
      f'layer {layer.name!r} ({layer.kind}) has {key} {_brief(value)}; '
      'expected a finite number.'
    )
  return float(value)


# --- The Arch -----------------------------------------------------------------


def _pair(layer: _Layer, key: str) -> int:
  value = layer.config.get(key, 1)
  value = list(value) if isinstance(value, list) else [value] * 2
  if len(value) != 2:
    raise KerasImportError(
      f'layer {layer.name!r} has {key} {_brief(value)}; expected two values.'
    )
  value = [_int(layer, key, v) for v in value]
  if value[0] != value[1]:
    raise KerasImportError(
      f'layer {layer.name!r} has {key} {value}; only square ones are supported.'
    )
  return value[0]


def _conv(layer: _Layer, *, kernel: int, stride: int | None = None) -> int:
  """Checks a Conv2D and returns its stride."""
  cfg = layer.config
  problems = []
  if _pair(layer, 'kernel_size') != kernel:
    problems.append(f'kernel_size {cfg.get("kernel_size")} (expected {kernel})')
  if stride is not None and _pair(layer, 'strides') != stride:
    problems.append(f'strides {cfg.get("strides")} (expected {stride})')
  if kernel > 1 and cfg.get('padding', 'valid') != 'same':
    problems.append(f'padding {cfg.get("padding")!r} (expected "same")')
  if _pair(layer, 'dilation_rate') != 1 or cfg.get('groups', 1) != 1:
    problems.append('dilation or groups')
  if cfg.get('activation', 'linear') not in ('linear', None):
    problems.append(f'a fused {cfg.get("activation")!r} activation')
  if cfg.get('data_format', 'channels_last') != 'channels_last':
    problems.append(f'data_format {cfg.get("data_format")!r}')
  if problems:
    raise KerasImportError(
      f'Conv2D {layer.name!r} has {", ".join(problems)}; not the CIFAR '
      'ResNet this loader understands.'
    )
  return _pair(layer, 'strides')


def _uniform(values: dict[str, Any], what: str) -> Any:
  distinct = sorted(set(values.values()), key=repr)
  if len(distinct) != 1:
    raise KerasImportError(
      f'layers disagree on {what} ({values}); one value is needed.'
    )
  return distinct[0]


def _make_arch(
  net: _KerasNet,
  *,
  num_classes: int | None,
  block_ids: Sequence[Sequence[int]] | None,
) -> arch_lib.Arch:
  """The `Arch` of `net`, checking every layer's configuration."""
  _conv(net.stem_conv, kernel=3, stride=1)
  stem_width = _dim(net.stem_conv, 'filters')

  # Group blocks into stages: a projection opens a stage.
  stages: list[dict[str, Any]] = []
  in_width = stem_width
  for k, block in enumerate(net.blocks):
    stride = _conv(block.conv1, kernel=3)
    _conv(block.conv2, kernel=3, stride=1)
    width = _dim(block.conv2, 'filters')
    if block.proj_conv is not None:
      _conv(block.proj_conv, kernel=1, stride=stride)
      if _dim(block.proj_conv, 'filters') != width:
        raise KerasImportError(
          f'projection {block.proj_conv.name!r} has '
          f'{block.proj_conv.config["filters"]} filters; its block outputs '
          f'{width}.'
        )
      if stride == 1 and in_width == width:
        raise KerasImportError(
          f'projection {block.proj_conv.name!r} neither downsamples nor '
          'changes the width; lpjax models use an identity there.'
        )
    elif stride != 1 or in_width != width:
      raise KerasImportError(
        f'block ending in {block.bn2.name!r} changes shape (stride '
        f'{stride}, {in_width} -> {width} channels) without a projection.'
      )
    if k == 0 or block.proj_conv is not None:
      stages.append({'width': width, 'stride': stride, 'blocks': []})
    stages[-1]['blocks'].append(block)
    stages[-1].setdefault('inner', []).append(_dim(block.conv1, 'filters'))
    in_width = width

  _check_pool(net, stride=math.prod(s['stride'] for s in stages))
  dense_units = _dim(net.dense, 'units')
  if num_classes is not None and num_classes != dense_units:
    raise KerasImportError(
      f'the dense head {net.dense.name!r} has {dense_units} outputs; '
      f'num_classes={num_classes} was requested.'
    )

  if block_ids is None:
    block_ids = [range(len(s['blocks'])) for s in stages]
  block_ids = [list(ids) for ids in block_ids]
  found = [len(s['blocks']) for s in stages]
  if [len(ids) for ids in block_ids] != found:
    raise KerasImportError(
      f'block_ids {block_ids} do not fit the model: it has {found} blocks '
      'per stage.'
    )

  convs = [net.stem_conv] + [
    c
    for b in net.blocks
    for c in (b.conv1, b.conv2, b.proj_conv)
    if c is not None
  ]
  bns = [net.stem_bn] + [
    n for b in net.blocks for n in (b.bn1, b.bn2, b.proj_bn) if n is not None
  ]
  for bn in bns:
    cfg = bn.config
    axis = cfg.get('axis', -1)
    axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
    if axis not in (-1, 3) or not cfg.get('center', True):
      raise KerasImportError(
        f'BatchNormalization {bn.name!r} has axis {cfg.get("axis")} / '
        f'center {cfg.get("center")}; expected the channel axis, centered.'
      )
    if not cfg.get('scale', True):
      raise KerasImportError(f'BatchNormalization {bn.name!r} has no scale.')
  projections = [b for b in net.blocks if b.proj_conv is not None]
  style = dataclasses.replace(
    resnet.KERAS_STYLE,
    conv_bias=bool(
      _uniform(
        {c.name: bool(c.config.get('use_bias', True)) for c in convs},
        'conv bias',
      )
    ),
    bn_epsilon=float(
      _uniform({n.name: _number(n, 'epsilon') for n in bns}, 'BN epsilon')
    ),
    bn_momentum=float(
      _uniform({n.name: _number(n, 'momentum') for n in bns}, 'BN momentum')
    ),
    projection_bn=bool(
      _uniform(
        {b.proj_conv.name: b.proj_bn is not None for b in projections},
        'a BN after the projection',
      )
      if projections
      else resnet.KERAS_STYLE.projection_bn
    ),
    symmetric_padding=False,
  )
  try:
    return resnet.make_arch(
      'resnet_cifar',
      tuple(
        arch_lib.Stage(
          width=st['width'],
          stride=st['stride'],
          blocks=tuple(
            resnet.make_block(s, int(i), (inner,))
            for i, inner in zip(ids, st['inner'])
          ),
        )
        for s, (st, ids) in enumerate(zip(stages, block_ids), start=1)
      ),
      num_classes=dense_units,
      stem_width=stem_width,
      style=style,
    )
  except ValueError as e:
    raise KerasImportError(
      f'cannot build the Arch with block_ids {block_ids}: {e}'
    ) from None


def _check_pool(net: _KerasNet, *, stride: int) -> None:
  """The pooling must average the whole final feature map."""
  if net.pool.kind == 'GlobalAveragePooling2D':
    return
  h, w, _ = net.image_shape
  final = [math.ceil(h / stride), math.ceil(w / stride)]
  size = net.pool.config.get('pool_size')
  if size != final:
    raise KerasImportError(
      f'{net.pool.name!r} pools {size} windows of the {final} final map; '
      'lpjax models average the whole map.'
    )


# --- Weights ------------------------------------------------------------------


class _Stored:
  """One weight in the HDF5 file, located and checked but not read yet."""

  def __init__(self, layer: _Layer, name: str, dataset: h5py.Dataset):
    self.where = f'weight {name!r} of layer {layer.name!r}'
    self.dataset = dataset
    self.shape = tuple(dataset.shape)
    if dataset.dtype.kind != 'f':
      raise KerasImportError(
        f'{self.where} has dtype {dataset.dtype}; Keras weights are floats.'
      )
    if dataset.external or dataset.is_virtual:
      raise KerasImportError(
        f'{self.where} is stored outside the file (external or virtual '
        'dataset); a Keras weights file holds its weights.'
      )


def _read(stored: _Stored) -> np.ndarray:
  """Reads a weight whose declared shape was checked against the model."""
  ds = stored.dataset
  try:
    declared = math.prod(stored.shape) * ds.dtype.itemsize
    on_disk = ds.id.get_storage_size()
    if ds.id.get_create_plist().get_nfilters() == 0:
      short = on_disk < declared
    else:  # Compressed: refuse what no compression could store so small.
      short = on_disk == 0 or declared > _MAX_COMPRESSION * on_disk
    if short:
      raise KerasImportError(
        f'{stored.where} declares shape {stored.shape} ({declared} bytes) '
        f'but the file stores {on_disk} bytes of it: it was never written, '
        'or the file is truncated or damaged.'
      )
    return np.asarray(ds[()], dtype=np.float32)
  except KerasImportError:
    raise
  except _H5_ERRORS as e:
    raise KerasImportError(
      f'{stored.where} cannot be read ({type(e).__name__}: {e}); the file '
      'is truncated or damaged.'
    ) from e


class _Weights:
  """Finds one layer's weights in a Keras 2 HDF5 file (without reading)."""

  def __init__(self, f: h5py.File):
    self.root = f['model_weights'] if 'model_weights' in f else f

  def __call__(self, layer: _Layer, names: Sequence[str]) -> dict[str, Any]:
    """`{name: _Stored}` of `layer`'s weights called `names`."""
    try:
      return self._find(layer, names)
    except KerasImportError:
      raise
    except _H5_ERRORS as e:
      raise KerasImportError(
        f'the weights of layer {layer.name!r} cannot be read '
        f'({type(e).__name__}: {e}); the file is truncated or damaged.'
      ) from e

  def _find(self, layer: _Layer, names: Sequence[str]) -> dict[str, Any]:
    if layer.name not in self.root:
      raise KerasImportError(
        f'no weights for layer {layer.name!r} (a {layer.kind}); the file '
        f'has {len(self.root)} layer groups, e.g. {sorted(self.root)[:5]}.'
      )
    group = self.root[layer.name]
    if not isinstance(group, h5py.Group):
      raise KerasImportError(
        f'{layer.name!r} in the file is not a group of weights.'
      )
    # The datasets under the layer's group, by name. The `weight_names`
    # attribute lists the same ones but is not read: its variable-length
    # strings live in the file's global heap, where one damaged length makes
    # libhdf5 allocate gigabytes.
    datasets = []

    def visit(path, obj):
      if isinstance(obj, h5py.Dataset):
        datasets.append((path, obj))
      return True if len(datasets) > _MAX_WEIGHTS_PER_LAYER else None

    group.visititems(visit)
    if len(datasets) > _MAX_WEIGHTS_PER_LAYER:
      raise KerasImportError(
        f'layer {layer.name!r} has more than {_MAX_WEIGHTS_PER_LAYER} '
        'weights; expected a few.'
      )
    found = {}
    for path, dataset in datasets:
      key = path.rsplit('/', 1)[-1].split(':', 1)[0]
      if key in found:
        raise KerasImportError(
          f'layer {layer.name!r} has two weights called {key!r}.'
        )
      found[key] = _Stored(layer, key, dataset)
    if sorted(found) != sorted(names):
      raise KerasImportError(
        f'layer {layer.name!r} has weights {sorted(found)}; expected '
        f'{sorted(names)}.'
      )
    return found


def _find_variables(
  arch: arch_lib.Arch, net: _KerasNet, weights: _Weights
) -> dict[str, Any]:
  """The tree of `arch`'s variables, each leaf a `_Stored` weight."""
  params: dict[str, Any] = {}
  stats: dict[str, Any] = {}
  conv_names = (
    ('kernel', 'bias') if resnet.style_of(arch).conv_bias else ('kernel',)
  )

  def conv(layer):
    return weights(layer, conv_names)

  def bn(layer):
    w = weights(layer, tuple(_BN_WEIGHTS))
    out = {'params': {}, 'batch_stats': {}}
    for k, (col, name) in _BN_WEIGHTS.items():
      out[col][name] = w[k]
    return out['params'], out['batch_stats']

  params['stem_conv'] = conv(net.stem_conv)
  params['stem_bn'], stats['stem_bn'] = bn(net.stem_bn)
  for block, kb in zip(arch.blocks, net.blocks):
    p, s = {}, {}
    p['conv1'] = conv(kb.conv1)
    p['bn1'], s['bn1'] = bn(kb.bn1)
    p['conv2'] = conv(kb.conv2)
    p['bn2'], s['bn2'] = bn(kb.bn2)
    if kb.proj_conv is not None:
      p['proj_conv'] = conv(kb.proj_conv)
    if kb.proj_bn is not None:
      p['proj_bn'], s['proj_bn'] = bn(kb.proj_bn)
    params[block.name], stats[block.name] = p, s
  params['head'] = weights(net.dense, ('kernel', 'bias'))
  return {'params': params, 'batch_stats': stats}


@functools.lru_cache(maxsize=32)
def _expected_shapes(
  arch: arch_lib.Arch, channels: int
) -> dict[tuple[str, ...], tuple[int, ...]]:
  """`{path: shape}` of the variables `arch`'s model expects.

  A CIFAR ResNet's variables depend on its images only through the stem
  kernel's input channels. They are computed on a small one-channel dummy
  image (whose zeros `variable_shapes` does allocate), and the stem kernel
  then gets `channels`: no size declared in the JSON sizes an allocation.

  Args:
    arch: the model.
    channels: the channels of its images.
  """
  tree = models.variable_shapes(arch, (8, 8, 1))
  shapes = {
    _path_key(path): tuple(leaf.shape)
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
  }
  stem = ('params', 'stem_conv', 'kernel')
  height, width, _, out = shapes[stem]
  shapes[stem] = (height, width, channels, out)
  return shapes


def _path_key(path) -> tuple[str, ...]:
  return tuple(str(getattr(k, 'key', k)) for k in path)


def _check_tree(
  variables: dict[str, Any],
  expected: dict[tuple[str, ...], tuple[int, ...]],
  json_path: str,
) -> None:
  """Raises listing missing, extra and mismatched variables, if any."""
  got = {
    _path_key(path): tuple(np.shape(leaf))
    for path, leaf in jax.tree_util.tree_leaves_with_path(variables)
  }
  missing = sorted('/'.join(k) for k in expected.keys() - got.keys())
  extra = sorted('/'.join(k) for k in got.keys() - expected.keys())
  wrong = sorted(
    f'{"/".join(k)}: {got[k]} (model expects {expected[k]})'
    for k in got.keys() & expected.keys()
    if got[k] != expected[k]
  )
  if missing or extra or wrong:
    raise KerasImportError(
      f'the Keras weights do not fit the architecture of {json_path!r}:\n'
      f'  missing: {missing}\n  extra: {extra}\n  mismatched: {wrong}'
    )
