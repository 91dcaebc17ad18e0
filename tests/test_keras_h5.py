"""Tests for `lpjax.interop.keras_h5`.

Two halves: the authors' published Keras ResNet-56 models in the reference
folder (outputs computed by TensorFlow are the oracle), and small synthetic
Keras-format files written here (round trip and error messages; hermetic).
"""

import dataclasses
import json
import math

import h5py
import jax
import numpy as np
import pytest
from tolerances import f32_atol, magnitude, network_terms

from lpjax import models
from lpjax.interop import KerasImportError, load_keras_model
from lpjax.models import resnet

MODELS = (
  'resnet56_baseline',
  'resnet56_cka_iter09',
  'resnet56_cka_iter19',
  'resnet56_cka_iter19_filters4',
)
# The pruned models keep the authors' layer names `Conv2D_{stage}_{block}_0_k`
# (0-based; k = 1, 2: the block's convs, k = 3: its projection). The loader
# never uses them; the tests use them as an independent map.
AUTHOR_NAMED = MODELS[1:]


# --- The published models -----------------------------------------------------


@pytest.fixture(scope='module')
def reference(keras_dir):
  with np.load(keras_dir / 'reference_outputs.npz', allow_pickle=False) as z:
    outputs = {k: z[k] for k in z.files}
  meta = json.loads((keras_dir / 'reference_meta.json').read_text())
  return outputs, meta


@pytest.fixture(scope='module', params=MODELS)
def loaded(request, keras_dir, reference):
  """`(stem, arch, variables, outputs)` of one model; one jit per model."""
  stem = request.param
  arch, variables = load_keras_model(
    keras_dir / f'{stem}.json', keras_dir / f'{stem}.h5'
  )
  model = models.build_model(arch)
  forward = jax.jit(
    lambda v, x: models.representations(model, v, x, ('pooled', 'logits'))
  )
  outputs = jax.device_get(forward(variables, reference[0]['inputs']))
  return stem, arch, variables, outputs


def test_outputs_match_tensorflow(loaded, reference):
  """TensorFlow's float32 outputs, to the suite's float32 rule over the
  network's fan-in and depth (`tests/tolerances.py`)."""
  stem, _, variables, outputs = loaded
  terms, depth = network_terms(variables['params'])
  for name in ('logits', 'pooled'):
    want = reference[0][f'{stem}/{name}']
    diff = np.abs(outputs[name] - want).max()
    tol = f32_atol(terms, magnitude(want), depth)
    print(f'{stem} {name}: max abs diff {diff:.3g} (tolerance {tol:.3g})')
    assert diff <= tol, (stem, name, diff)
  # softmax's Jacobian has norm <= 1/2: probabilities move by at most half
  # the logits' error.
  probs = jax.nn.softmax(outputs['logits'])
  want = reference[0][f'{stem}/probs']
  tol = 0.5 * f32_atol(terms, magnitude(reference[0][f'{stem}/logits']), depth)
  np.testing.assert_allclose(probs, want, rtol=0, atol=tol)


def test_blocks_and_element_count_match_keras(loaded, reference):
  stem, arch, variables, _ = loaded
  meta = reference[1][stem]
  assert list(arch.blocks_per_stage) == meta['blocks_per_stage']
  count = sum(np.size(leaf) for leaf in jax.tree.leaves(variables))
  assert count == meta['params_keras']  # Keras counts BN mean/variance too.


def test_arch_and_style(loaded):
  _, arch, variables, _ = loaded
  assert arch.family == 'resnet_cifar'
  assert resnet.style_of(arch) == resnet.KERAS_STYLE
  assert arch.num_classes == 10 and arch.option('stem_width') == 16
  assert [(s.width, s.stride) for s in arch.stages] == [
    (16, 1),
    (32, 2),
    (64, 2),
  ]
  for stage in arch.stages:  # Default stable ids: 0 .. k-1.
    assert [b.index for b in stage.blocks] == list(range(len(stage.blocks)))
  shapes = models.variable_shapes(arch, (32, 32, 3))
  assert jax.tree.structure(shapes) == jax.tree.structure(variables)
  for leaf in jax.tree.leaves(variables):
    assert leaf.dtype == np.float32


def _h5_weight(path, layer, weight):
  with h5py.File(path, 'r') as f:
    group = f[layer]
    for name in group.attrs['weight_names']:
      name = name.decode() if isinstance(name, bytes) else name
      if name.endswith(f'/{weight}:0'):
        return group[name][()]
  raise KeyError(f'{layer}/{weight}')


@pytest.mark.parametrize('stem', AUTHOR_NAMED)
def test_weights_land_in_their_blocks(stem, keras_dir):
  arch, variables = load_keras_model(
    keras_dir / f'{stem}.json', keras_dir / f'{stem}.h5'
  )
  h5 = keras_dir / f'{stem}.h5'
  for s, stage in enumerate(arch.stages):
    for position, block in enumerate(stage.blocks):
      params = variables['params'][block.name]
      convs = {'conv1': 1, 'conv2': 2, 'proj_conv': 3}
      assert ('proj_conv' in params) == (s > 0 and position == 0)
      for module, k in convs.items():
        if module in params:
          want = _h5_weight(h5, f'Conv2D_{s}_{position}_0_{k}', 'kernel')
          np.testing.assert_array_equal(params[module]['kernel'], want)


def test_filter_pruned_widths_come_from_the_h5(keras_dir):
  stem = 'resnet56_cka_iter19_filters4'
  arch, _ = load_keras_model(
    keras_dir / f'{stem}.json', keras_dir / f'{stem}.h5'
  )
  h5 = keras_dir / f'{stem}.h5'
  narrower = 0
  for s, stage in enumerate(arch.stages):
    for position, block in enumerate(stage.blocks):
      kernel = _h5_weight(h5, f'Conv2D_{s}_{position}_0_1', 'kernel')
      assert block.widths == (kernel.shape[-1],)
      narrower += block.widths[0] < stage.width
  assert narrower == len(arch.blocks)  # Every first conv was filter-pruned.


def test_block_ids_rename_blocks_only(keras_dir):
  stem = 'resnet56_cka_iter19'
  files = keras_dir / f'{stem}.json', keras_dir / f'{stem}.h5'
  arch, variables = load_keras_model(*files)
  ids = [[0, 7], [0, 4], [0, 1, 8]]
  renamed, revars = load_keras_model(*files, block_ids=ids)
  assert [[b.index for b in s.blocks] for s in renamed.stages] == ids
  old = [b.name for b in arch.blocks]
  new = [b.name for b in renamed.blocks]
  for a, b in zip(old, new):
    jax.tree.map(
      np.testing.assert_array_equal,
      variables['params'][a],
      revars['params'][b],
    )


# --- Synthetic Keras files (hermetic) -----------------------------------------


def _keras_files(tmp_path, arch, variables, *, edit=None, image=8, seed=0):
  """Writes `arch` with `variables` as a Keras 2 JSON + HDF5 weights pair.

  Layers get scrambled auto-numbered names and the JSON lists them in a
  shuffled order, so only the graph can tell the loader what is what.
  `edit(layers)` may change the JSON layer list before it is written.
  """
  rng = np.random.default_rng(seed)
  numbers = iter(rng.permutation(10_000))
  layers, weights = [], {}
  style = resnet.style_of(arch)

  def add(kind, inputs, config, w=None):
    name = f'{kind.lower()}_{next(numbers)}'
    layers.append(
      {
        'class_name': kind,
        'name': name,
        'config': {'name': name, 'trainable': True, **config},
        'inbound_nodes': [[[i, 0, 0, {}] for i in inputs]] if inputs else [],
      }
    )
    if w is not None:
      weights[name] = w
    return name

  def conv(x, p, stride):
    kernel = np.asarray(p['kernel'])
    config = {
      'filters': kernel.shape[-1],
      'kernel_size': list(kernel.shape[:2]),
      'strides': [stride, stride],
      'padding': 'same',
      'data_format': 'channels_last',
      'dilation_rate': [1, 1],
      'activation': 'linear',
      'use_bias': True,
    }
    return add('Conv2D', [x], config, {'kernel': kernel, 'bias': p['bias']})

  def bn(x, p, s):
    config = {
      'axis': -1,
      'momentum': style.bn_momentum,
      'epsilon': style.bn_epsilon,
      'center': True,
      'scale': True,
    }
    w = {
      'gamma': p['scale'],
      'beta': p['bias'],
      'moving_mean': s['mean'],
      'moving_variance': s['var'],
    }
    return add('BatchNormalization', [x], config, w)

  def relu(x):
    return add('Activation', [x], {'activation': 'relu'})

  params, stats = variables['params'], variables['batch_stats']
  source = add('InputLayer', [], {'batch_input_shape': [None, image, image, 3]})
  x = conv(source, params['stem_conv'], 1)
  x = relu(bn(x, params['stem_bn'], stats['stem_bn']))
  for stage in arch.stages:
    for block in stage.blocks:
      p, s = params[block.name], stats[block.name]
      stride = stage.stride if block.index == 0 else 1
      y = relu(bn(conv(x, p['conv1'], stride), p['bn1'], s['bn1']))
      y = bn(conv(y, p['conv2'], 1), p['bn2'], s['bn2'])
      shortcut = x
      if 'proj_conv' in p:
        shortcut = conv(x, p['proj_conv'], stride)
        if 'proj_bn' in p:
          shortcut = bn(shortcut, p['proj_bn'], s['proj_bn'])
      x = relu(add('Add', [shortcut, y], {}))
  final = image // math.prod(s.stride for s in arch.stages)
  x = add('AveragePooling2D', [x], {'pool_size': [final, final]})
  x = add('Flatten', [x], {})
  head = params['head']
  output = add(
    'Dense',
    [x],
    {'units': arch.num_classes, 'activation': 'softmax', 'use_bias': True},
    {'kernel': head['kernel'], 'bias': head['bias']},
  )
  layers = [layers[i] for i in rng.permutation(len(layers))]
  if edit is not None:
    edit(layers)
  model = {
    'class_name': 'Model',
    'keras_version': '2.1.2',
    'config': {
      'name': 'model_1',
      'layers': layers,
      'input_layers': [[source, 0, 0]],
      'output_layers': [[output, 0, 0]],
    },
  }
  json_path, h5_path = tmp_path / 'model.json', tmp_path / 'model.h5'
  json_path.write_text(json.dumps(model))
  with h5py.File(h5_path, 'w') as f:
    for name, w in weights.items():
      group = f.create_group(name)
      paths = [f'{name}/{k}:0' for k in w]
      group.attrs['weight_names'] = [p.encode() for p in paths]
      for path, value in zip(paths, w.values()):
        group[path] = np.asarray(value)
  return json_path, h5_path


def _tiny(style=resnet.KERAS_STYLE):
  arch = resnet.resnet_cifar(
    blocks_per_stage=(1, 2, 3), width=4, num_classes=3, style=style
  )
  arch = arch.with_widths('stage2_block01', (3,))  # One filter-pruned block.
  # Random values of the right shapes (eager init is slow on CPU); every
  # leaf differs, and variances are positive.
  rng = np.random.default_rng(2)
  variables = jax.tree.map(
    lambda a: rng.uniform(0.5, 1.5, a.shape).astype(np.float32),
    models.variable_shapes(arch, (8, 8, 3)),
  )
  return arch, variables


@pytest.mark.parametrize(
  'style',
  [
    resnet.KERAS_STYLE,
    dataclasses.replace(
      resnet.KERAS_STYLE,
      bn_epsilon=1e-5,
      bn_momentum=0.9,
      projection_bn=True,
    ),
  ],
  ids=['keras', 'projection_bn'],
)
def test_round_trip(tmp_path, style):
  arch, variables = _tiny(style)
  loaded_arch, loaded = load_keras_model(
    *_keras_files(tmp_path, arch, variables)
  )
  assert loaded_arch == arch
  jax.tree.map(np.testing.assert_array_equal, loaded, variables)


def test_missing_files_raise(tmp_path):
  arch, variables = _tiny()
  json_path, h5_path = _keras_files(tmp_path, arch, variables)
  for args in [
    (tmp_path / 'nope.json', h5_path),
    (json_path, tmp_path / 'nope.h5'),
  ]:
    with pytest.raises(FileNotFoundError, match='nope'):
      load_keras_model(*args)


def test_not_hdf5_raises(tmp_path):
  json_path, _ = _keras_files(tmp_path, *_tiny())
  with pytest.raises(KerasImportError, match='not an HDF5 file'):
    load_keras_model(json_path, json_path)


def _insert_after(kind, new_kind, config):
  """An `edit` that inserts a `new_kind` layer after one `kind` layer."""

  def edit(layers):
    target = next(lyr['name'] for lyr in layers if lyr['class_name'] == kind)
    name = f'{new_kind.lower()}_inserted'
    for layer in layers:
      for node in layer['inbound_nodes']:
        for ref in node:
          if ref[0] == target:
            ref[0] = name
    layers.append(
      {
        'class_name': new_kind,
        'name': name,
        'config': {'name': name, **config},
        'inbound_nodes': [[[target, 0, 0, {}]]],
      }
    )

  return edit


@pytest.mark.parametrize(
  'after', ['Conv2D', 'BatchNormalization', 'Activation', 'Add']
)
def test_unexpected_layer_is_named(tmp_path, after):
  arch, variables = _tiny()
  edit = _insert_after(after, 'Dropout', {'rate': 0.5})
  files = _keras_files(tmp_path, arch, variables, edit=edit)
  with pytest.raises(KerasImportError, match='dropout_inserted'):
    load_keras_model(*files)


def test_plain_cnn_is_not_a_resnet(tmp_path):
  arch, variables = _tiny()

  def no_adds(layers):
    # Replace every Add by its residual input: a plain CNN.
    adds = {
      lyr['name']: lyr['inbound_nodes'][0][1][0]
      for lyr in layers
      if lyr['class_name'] == 'Add'
    }
    layers[:] = [lyr for lyr in layers if lyr['name'] not in adds]
    for layer in layers:
      for node in layer['inbound_nodes']:
        for ref in node:
          ref[0] = adds.get(ref[0], ref[0])

  files = _keras_files(tmp_path, arch, variables, edit=no_adds)
  with pytest.raises(KerasImportError, match='not a ResNet'):
    load_keras_model(*files)


def test_sequential_is_refused(tmp_path):
  path = tmp_path / 'seq.json'
  path.write_text(json.dumps({'class_name': 'Sequential', 'config': {}}))
  h5_path = tmp_path / 'w.h5'
  h5py.File(h5_path, 'w').close()
  with pytest.raises(KerasImportError, match='Sequential'):
    load_keras_model(path, h5_path)


def test_missing_weights_are_named(tmp_path):
  arch, variables = _tiny()
  json_path, h5_path = _keras_files(tmp_path, arch, variables)
  with h5py.File(h5_path, 'a') as f:
    victim = sorted(k for k in f if k.startswith('batchnormalization'))[0]
    del f[victim]
  with pytest.raises(KerasImportError, match=victim):
    load_keras_model(json_path, h5_path)


def test_shape_mismatch_is_listed(tmp_path):
  arch, variables = _tiny()
  variables['params']['head']['bias'] = np.zeros(4, np.float32)
  with pytest.raises(KerasImportError, match=r'head/bias: \(4,\)'):
    load_keras_model(*_keras_files(tmp_path, arch, variables))


def test_num_classes_and_block_ids_are_checked(tmp_path):
  arch, variables = _tiny()
  files = _keras_files(tmp_path, arch, variables)
  with pytest.raises(KerasImportError, match='num_classes=10'):
    load_keras_model(*files, num_classes=10)
  with pytest.raises(KerasImportError, match=r'\[1, 2, 3\] blocks per stage'):
    load_keras_model(*files, block_ids=[[0], [0, 1]])
  with pytest.raises(KerasImportError, match='first block'):
    load_keras_model(*files, block_ids=[[0], [1, 2], [0, 1, 2]])
  renamed, _ = load_keras_model(*files, block_ids=[[0], [0, 5], [0, 2, 3]])
  assert [b.name for b in renamed.stages[1].blocks] == [
    'stage2_block00',
    'stage2_block05',
  ]
