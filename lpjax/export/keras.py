"""A (pruned) CIFAR ResNet as the CKA-pruning authors' Keras `.json` + `.h5`.

`write(arch, variables, out_json, out_h5)` writes a ResNet of family
`'resnet_cifar'` (imported from the authors' files by
`lpjax.interop.keras_h5.load_keras_model`, or built and trained by lpjax),
possibly pruned by `lpjax.surgery` (blocks removed, filters removed), in the
format of the authors' published pruned models (IanPons/CKA-Layer-Pruning,
`pruned_models/ResNet56/*.json` and `.h5`, written by Keras 2.10):

* `out_json`: `model.to_json()` of a Keras functional model (`class_name`
  `'Functional'`, `keras_version` `'2.10.0'`, backend `'tensorflow'`):
  input -> conv3x3 -> BN -> ReLU; per block conv3x3 -> BN -> ReLU ->
  conv3x3 -> BN, `Add` with the shortcut (the block input, or a 1x1 conv
  [-> BN] where the block changes stride or width), -> ReLU; then
  `AveragePooling2D` over the whole final map -> `Flatten` -> `Dense`
  (softmax). Layers are named as the authors' model template names them
  (their `template_architectures.py`, `resnet_layer`): `Conv2D_`,
  `BatchNorm1_`, `Act1_` for the stem and `Conv2D_{stage}_{block}_0_{k}`
  (0-based stage and position in the stage; k = 1, 2: the block's convs,
  k = 3: its projection) and likewise `BatchNorm1_...`, `Act1_..._1`
  inside blocks; the layers Keras names by its global counters count from
  1 (`input_1`, `add_1`, `activation_1`, ..., `dense_1`, `model_1`).
  Layers are listed in the order Keras gives a functional model's layers
  (`_keras_order`), on which `load_weights` relies. Layer and config fields
  are the ones (and in the order) Keras 2.10 writes; the authors'
  initialisers and their L2 kernel regulariser (1e-4, stored as float32)
  are kept, so the model fine-tunes in Keras as theirs do.
* `out_h5`: the weights in Keras' `save_weights` HDF5 layout (as the
  authors' files): root attributes `backend`, `keras_version`,
  `layer_names`; one group per layer with attribute `weight_names`
  (`'{layer}/kernel:0'`, ...; an empty float64 array for layers without
  weights) and its float32 datasets under `{layer}/{layer}/{weight}:0`;
  an empty `top_level_model_weights` group. Conv kernels are
  `[height, width, in, out]` and BN weights `gamma, beta, moving_mean,
  moving_variance`, as in flax. lpjax adds two root attributes, which Keras
  ignores: `lpjax_provenance` (`lpjax.export.provenance_json`) and
  `lpjax_arch` (`Arch.to_json()`: the blocks' stable ids, which a Keras
  graph cannot hold, and the pruning floor). The Keras JSON has no free
  field, so provenance is in the `.h5` only.

tf_keras 2.21 loads the files (`model_from_json` + `load_weights`) and
computes lpjax's outputs (checked when this module was written; TensorFlow
is not a dependency of lpjax or its tests). The files read back with
`load_keras_model(out_json, out_h5)` to the same layers, style (conv bias,
BN epsilon and momentum, BN after the projection) and variables, bit for
bit; the blocks are numbered `0 .. k-1` per stage
unless the `block_ids` of `lpjax_arch` are passed. The lpjax model averages
the whole final map of any image size; the Keras model is fixed to the
family's 32x32 images (the authors' input), with the stem's channels.

Refusals (`ExportError`, before anything is written): a model that is not a
CIFAR ResNet (a ViT, an encoder, a decoder, a bottleneck ImageNet ResNet);
a ResNet the format cannot express (PyTorch's symmetric padding of strided
convs, a bottleneck-stride option, a stage that neither downsamples nor
widens, so nothing in the graph marks where it starts); variables that do
not belong to `arch`; an output file that exists, or both outputs at one
path.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import h5py
import jax
import numpy as np

from lpjax import arch as arch_lib
from lpjax import models
from lpjax.export import ExportError, output_file, provenance_json
from lpjax.models import resnet

KERAS_VERSION = '2.10.0'
BACKEND = 'tensorflow'
PROVENANCE_ATTR = 'lpjax_provenance'
ARCH_ATTR = 'lpjax_arch'

# The authors' settings (template_architectures.py): he_normal convs with
# l2(1e-4), he_normal softmax head. Keras 2.10 writes the L2 factor as the
# float32 it holds.
_HE_NORMAL = {'class_name': 'HeNormal', 'config': {'seed': None}}
_ZEROS = {'class_name': 'Zeros', 'config': {}}
_ONES = {'class_name': 'Ones', 'config': {}}
_L2 = {'class_name': 'L2', 'config': {'l2': float(np.float32(1e-4))}}
# Keras BatchNormalization weight <- (flax collection, flax name).
_BN_WEIGHTS = {
  'gamma': ('params', 'scale'),
  'beta': ('params', 'bias'),
  'moving_mean': ('batch_stats', 'mean'),
  'moving_variance': ('batch_stats', 'var'),
}


def write(
  arch: arch_lib.Arch,
  variables: Mapping[str, Any],
  out_json: str | os.PathLike,
  out_h5: str | os.PathLike,
  *,
  provenance: Mapping[str, Any] | None = None,
) -> tuple[pathlib.Path, pathlib.Path]:
  """Writes the ResNet `(arch, variables)` as a Keras `.json` + `.h5` pair.

  Args:
    arch: a CIFAR ResNet (`'resnet_cifar'`), possibly pruned.
    variables: its `{'params': ..., 'batch_stats': ...}`.
    out_json: the architecture JSON to create (must not exist).
    out_h5: the weights file to create (must not exist).
    provenance: what the model is (source digest, edits, healing); stored
      as JSON in the `.h5` root attribute `lpjax_provenance`.

  Returns:
    `(json_path, h5_path)`.

  Raises:
    ExportError: see the module docstring; raised before anything is
      written.
  """
  _check_arch(arch)
  weights = _check_variables(arch, variables)
  channels = weights['params']['stem_conv']['kernel'].shape[2]
  height, width = models.default_input_shape(arch)[:2]
  layers, groups = _Graph(arch, weights, (height, width, channels)).build()
  model_json = json.dumps(
    {
      'class_name': 'Functional',
      'config': {
        'name': 'model_1',
        'layers': layers,
        'input_layers': [[layers[0]['name'], 0, 0]],
        'output_layers': [[layers[-1]['name'], 0, 0]],
      },
      'keras_version': KERAS_VERSION,
      'backend': BACKEND,
    }
  )
  attrs = {
    PROVENANCE_ATTR: provenance_json(provenance),
    ARCH_ATTR: arch.to_json(),
  }
  json_path, h5_path = pathlib.Path(out_json), pathlib.Path(out_h5)
  if os.path.abspath(json_path) == os.path.abspath(h5_path):
    raise ExportError(
      f'out_json and out_h5 are both {json_path}; give two different files.'
    )
  json_path, h5_path = output_file(json_path), output_file(h5_path)
  created = []
  try:
    with open(json_path, 'x', encoding='utf-8') as f:
      created.append(json_path)
      f.write(model_json)
    with h5py.File(h5_path, 'w-') as f:
      created.append(h5_path)
      _write_h5(f, [lyr['name'] for lyr in layers], groups, attrs)
  except BaseException:
    for path in created:
      path.unlink(missing_ok=True)
    raise
  return json_path, h5_path


# --- Checks -------------------------------------------------------------------


def _check_arch(arch: Any) -> None:
  """Refuses what the authors' Keras format cannot express."""
  family = getattr(arch, 'family', None)
  if not isinstance(arch, arch_lib.Arch) or family != 'resnet_cifar':
    if family == 'resnet_imagenet':
      raise ExportError(
        "The Keras export writes the authors' CIFAR ResNets (basic blocks, "
        '3x3 stem); this is a bottleneck ImageNet ResNet, which their '
        'format and lpjax.interop.keras_h5 do not describe.'
      )
    raise ExportError(
      f'The Keras export writes CIFAR ResNets; this model is a {family!r} '
      "network, not a ResNet: export it in its own family's format "
      '(lpjax.export: gguf or hf_llama for decoders, sentence_transformers '
      'for encoders).'
    )
  style = resnet.style_of(arch)
  if style.symmetric_padding:
    raise ExportError(
      'This ResNet pads its strided 3x3 convs by one pixel on every side '
      "(PyTorch style, symmetric_padding=True); Keras' padding='same' pads "
      'only the bottom/right, so the Keras model would compute something '
      'else. Export a model built with style keras.'
    )
  if style.bottleneck_stride_on_3x3:
    raise ExportError(
      'This ResNet sets bottleneck_stride_on_3x3=True; it does not change a '
      'basic-block network, but the Keras files cannot record it, so the '
      'model would not read back as the same Arch. Rebuild the Arch with it '
      'off (the variables are unchanged).'
    )
  in_width = arch.option('stem_width')
  for s, stage in enumerate(arch.stages, start=1):
    if s > 1 and stage.stride == 1 and stage.width == in_width:
      raise ExportError(
        f'Stage {s} neither downsamples nor widens (stride 1, width '
        f'{stage.width} as stage {s - 1}): its first block has an identity '
        'shortcut, so the Keras graph cannot mark where the stage starts '
        f'and it would read back merged into stage {s - 1}.'
      )
    in_width = stage.width


def _check_variables(
  arch: arch_lib.Arch, variables: Mapping[str, Any]
) -> dict[str, Any]:
  """`variables` as float32 NumPy arrays, checked to be `arch`'s tree."""
  if not isinstance(variables, Mapping) or not isinstance(
    variables.get('params'), Mapping
  ):
    raise ExportError(
      "The variables have no 'params'; pass the (arch, variables) pair "
      'load_keras_model, init_variables or lpjax.surgery returns.'
    )
  stem = variables['params'].get('stem_conv', {})
  kernel = stem.get('kernel') if isinstance(stem, Mapping) else None
  channels = np.shape(kernel)[2] if np.ndim(kernel) == 4 else 3
  try:
    expected = models.variable_shapes(arch, (8, 8, channels))
  except ValueError as e:
    raise ExportError(f'{arch.summary()} is not a valid ResNet: {e}') from None
  want = {
    _path(p): tuple(leaf.shape)
    for p, leaf in jax.tree_util.tree_leaves_with_path(expected)
  }
  leaves = jax.tree_util.tree_leaves_with_path(dict(variables))
  got = {_path(p): leaf for p, leaf in leaves}
  missing = sorted('/'.join(k) for k in want.keys() - got.keys())
  extra = sorted('/'.join(k) for k in got.keys() - want.keys())
  wrong = sorted(
    f'{"/".join(k)}: {np.shape(got[k])} (arch needs {want[k]})'
    for k in want.keys() & got.keys()
    if tuple(np.shape(got[k])) != want[k]
  )
  if missing or extra or wrong:
    raise ExportError(
      'The variables do not belong to this arch (pass the pair '
      f'lpjax.surgery returned): missing {missing[:8]}, extra {extra[:8]}, '
      f'mismatched {wrong[:8]}.'
    )
  out: dict[str, Any] = {}
  for key, leaf in got.items():
    value = np.asarray(jax.device_get(leaf))
    if value.dtype.kind != 'f':
      raise ExportError(
        f'{"/".join(key)} has dtype {value.dtype}; Keras weights are floats.'
      )
    node = out
    for k in key[:-1]:
      node = node.setdefault(k, {})
    node[key[-1]] = value.astype(np.float32)
  return out


def _path(path) -> tuple[str, ...]:
  return tuple(str(getattr(k, 'key', k)) for k in path)


# --- The layer graph ----------------------------------------------------------


class _Graph:
  """Builds the Keras layer list and each layer's weights."""

  def __init__(
    self,
    arch: arch_lib.Arch,
    weights: Mapping[str, Any],
    image_shape: tuple[int, int, int],
  ):
    self.arch = arch
    self.style = resnet.style_of(arch)
    self.params = weights['params']
    self.stats = weights.get('batch_stats', {})
    self.image_shape = image_shape
    self.layers: list[dict[str, Any]] = []
    self.groups: dict[str, dict[str, np.ndarray]] = {}
    self.adds = 0

  def build(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """`(layers, {layer: {weight: array}})` in Keras' layer order."""
    h, w, c = self.image_shape
    x = self._layer(
      'InputLayer',
      'input_1',
      [],
      {
        'batch_input_shape': [None, h, w, c],
        'dtype': 'float32',
        'sparse': False,
        'ragged': False,
        'name': 'input_1',
      },
      config_name_first=False,
    )
    p, s = self.params, self.stats
    x = self._conv('Conv2D_', x, p['stem_conv'], 1)
    x = self._bn('BatchNorm1_', x, p['stem_bn'], s['stem_bn'])
    x = self._relu('Act1_', x)
    in_width = self.arch.option('stem_width')
    for k, stage in enumerate(self.arch.stages):
      for position, block in enumerate(stage.blocks):
        stride = stage.stride if position == 0 else 1
        project = position == 0 and (stride != 1 or in_width != stage.width)
        x = self._block(f'{k}_{position}_0', x, block, stride, project)
        in_width = stage.width
    stride = math.prod(stage.stride for stage in self.arch.stages)
    final = [math.ceil(h / stride), math.ceil(w / stride)]
    x = self._layer(
      'AveragePooling2D',
      'average_pooling2d_1',
      [x],
      {
        'pool_size': final,
        'padding': 'valid',
        'strides': final,
        'data_format': 'channels_last',
      },
    )
    x = self._layer(
      'Flatten', 'flatten_1', [x], {'data_format': 'channels_last'}
    )
    head = self.params['head']
    self._layer(
      'Dense',
      'dense_1',
      [x],
      {
        'units': self.arch.num_classes,
        'activation': 'softmax',
        'use_bias': True,
        'kernel_initializer': _HE_NORMAL,
        'bias_initializer': _ZEROS,
        'kernel_regularizer': None,
        'bias_regularizer': None,
        'activity_regularizer': None,
        'kernel_constraint': None,
        'bias_constraint': None,
      },
      weights={'kernel': head['kernel'], 'bias': head['bias']},
    )
    return _keras_order(self.layers), self.groups

  def _block(self, tag, x, block, stride, project) -> str:
    """One residual block reading layer `x`; returns its output ReLU."""
    p, s = self.params[block.name], self.stats[block.name]
    y = self._conv(f'Conv2D_{tag}_1', x, p['conv1'], stride)
    y = self._bn(f'BatchNorm1_{tag}_1', y, p['bn1'], s['bn1'])
    y = self._relu(f'Act1_{tag}_1', y)
    y = self._conv(f'Conv2D_{tag}_2', y, p['conv2'], 1)
    shortcut = x
    if project:
      shortcut = self._conv(f'Conv2D_{tag}_3', x, p['proj_conv'], stride)
      if self.style.projection_bn:
        shortcut = self._bn(
          f'BatchNorm1_{tag}_3', shortcut, p['proj_bn'], s['proj_bn']
        )
    y = self._bn(f'BatchNorm1_{tag}_2', y, p['bn2'], s['bn2'])
    self.adds += 1
    added = self._layer('Add', f'add_{self.adds}', [shortcut, y], {})
    return self._relu(f'activation_{self.adds}', added)

  def _conv(self, name, x, p, stride) -> str:
    kernel = p['kernel']
    weights = {'kernel': kernel}
    if self.style.conv_bias:
      weights['bias'] = p['bias']
    return self._layer(
      'Conv2D',
      name,
      [x],
      {
        'filters': int(kernel.shape[3]),
        'kernel_size': [int(kernel.shape[0]), int(kernel.shape[1])],
        'strides': [stride, stride],
        # A 1x1 conv pads nothing under 'same'; the authors write 'same'.
        'padding': 'same',
        'data_format': 'channels_last',
        'dilation_rate': [1, 1],
        'groups': 1,
        'activation': 'linear',
        'use_bias': self.style.conv_bias,
        'kernel_initializer': _HE_NORMAL,
        'bias_initializer': _ZEROS,
        'kernel_regularizer': _L2,
        'bias_regularizer': None,
        'activity_regularizer': None,
        'kernel_constraint': None,
        'bias_constraint': None,
      },
      weights=weights,
    )

  def _bn(self, name, x, p, s) -> str:
    found = {'params': p, 'batch_stats': s}
    return self._layer(
      'BatchNormalization',
      name,
      [x],
      {
        'axis': [3],
        'momentum': self.style.bn_momentum,
        'epsilon': self.style.bn_epsilon,
        'center': True,
        'scale': True,
        'beta_initializer': _ZEROS,
        'gamma_initializer': _ONES,
        'moving_mean_initializer': _ZEROS,
        'moving_variance_initializer': _ONES,
        'beta_regularizer': None,
        'gamma_regularizer': None,
        'beta_constraint': None,
        'gamma_constraint': None,
      },
      weights={k: found[col][n] for k, (col, n) in _BN_WEIGHTS.items()},
    )

  def _relu(self, name, x) -> str:
    return self._layer('Activation', name, [x], {'activation': 'relu'})

  def _layer(
    self,
    kind: str,
    name: str,
    inputs: list[str],
    config: dict[str, Any],
    *,
    weights: Mapping[str, np.ndarray] | None = None,
    config_name_first: bool = True,
  ) -> str:
    """Appends a layer (Keras 2.10's field order); returns its name."""
    if config_name_first:
      config = {'name': name, 'trainable': True, 'dtype': 'float32', **config}
    self.layers.append(
      {
        'class_name': kind,
        'config': config,
        'name': name,
        'inbound_nodes': [[[i, 0, 0, {}] for i in inputs]] if inputs else [],
      }
    )
    self.groups[name] = dict(weights or {})
    return name


def _keras_order(layers: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """`layers` in the order of a Keras functional model's `layers`.

  Keras (tf_keras `functional.py`, `_map_graph_network`) lists layers by
  decreasing depth, a layer's depth being its longest path to the output,
  and layers of equal depth in the order a depth-first walk from the output
  first reaches them, following each layer's inputs in order (an `Add`'s
  shortcut before its residual branch). `to_json` and `save_weights` use
  that order, and `load_weights` pairs the file's layers with the model's
  by it, so the files must list them so: in a block whose projection has a
  BN, the projection conv comes before the block's second conv.
  """
  by_name = {lyr['name']: lyr for lyr in layers}
  inputs = {
    name: [ref[0] for node in lyr['inbound_nodes'] for ref in node]
    for name, lyr in by_name.items()
  }
  output = layers[-1]['name']
  # Layers are appended after their inputs: reversed, consumers come first.
  depth = dict.fromkeys(by_name, 0)
  for name in reversed(list(by_name)):
    for i in inputs[name]:
      depth[i] = max(depth[i], depth[name] + 1)
  first_reached: dict[str, int] = {}
  stack = [output]
  while stack:
    name = stack.pop()
    if name not in first_reached:
      first_reached[name] = len(first_reached)
      stack.extend(reversed(inputs[name]))
  return sorted(
    layers, key=lambda lyr: (-depth[lyr['name']], first_reached[lyr['name']])
  )


# --- The weights file ---------------------------------------------------------


def _ascii(values) -> np.ndarray:
  return np.asarray(list(values), dtype=h5py.string_dtype('ascii'))


def _write_h5(
  f: h5py.File,
  layer_names: list[str],
  groups: Mapping[str, Mapping[str, np.ndarray]],
  attrs: Mapping[str, str],
) -> None:
  """Keras' `save_weights` layout, as in the authors' files."""
  ascii_str = h5py.string_dtype('ascii')
  f.attrs.create('backend', BACKEND, dtype=ascii_str)
  f.attrs.create('keras_version', KERAS_VERSION, dtype=ascii_str)
  f.attrs.create('layer_names', _ascii(layer_names))
  for name in [*layer_names, 'top_level_model_weights']:
    group = f.create_group(name)
    weights = groups.get(name, {})
    paths = [f'{name}/{w}:0' for w in weights]
    # Keras stores an empty name list as an empty float64 array.
    group.attrs['weight_names'] = _ascii(paths) if paths else np.zeros(0)
    for path, value in zip(paths, weights.values()):
      group.create_dataset(path, data=np.asarray(value, np.float32))
  for key, text in attrs.items():
    f.attrs.create(key, text, dtype=h5py.string_dtype('utf-8'))


__all__ = ['ARCH_ATTR', 'PROVENANCE_ATTR', 'write']
