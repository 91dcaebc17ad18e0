"""Tests for `lpjax.export.keras`: ResNets as the authors' Keras files.

Oracles: lpjax's own importer (`lpjax.interop.keras_h5.load_keras_model`)
reading the files back, the authors' published pruned models in the
reference folder (their JSON layer graph and `.h5` layout, their weights),
and TensorFlow's outputs of their filter-pruned model
(`reference_outputs.npz`).
"""

import dataclasses
import json
import re

import h5py
import jax
import numpy as np
import pytest
from tolerances import f32_atol, magnitude, network_terms

from lpjax import arch as arch_lib
from lpjax import models, surgery
from lpjax.export import ExportError
from lpjax.export import keras as keras_export
from lpjax.interop import load_keras_model
from lpjax.models import resnet

# Blocks removed from the baseline in the round trip (test 1), and to get
# the authors' resnet56_cka_iter09 layout, [6, 3, 8] blocks per stage. Which
# blocks they removed is not recoverable (their files renumber the blocks
# and the weights were fine-tuned after every removal); the layer graph
# depends only on the blocks per stage, so any choice with those counts is
# their graph.
TWO_BLOCKS = ('stage1_block04', 'stage3_block07')
ITER09_REMOVED = (
  'stage1_block02',
  'stage1_block05',
  'stage1_block08',
  'stage2_block01',
  'stage2_block02',
  'stage2_block03',
  'stage2_block05',
  'stage2_block06',
  'stage2_block08',
  'stage3_block04',
)
# The authors' names that do not come from Keras' global counters.
AUTHOR_SCHEME = re.compile(r'(Conv2D|BatchNorm1|Act1)_(\d+_\d+_0_\d)?')
PROVENANCE = {'source': 'sha256:abc', 'edits': [{'remove': list(TWO_BLOCKS)}]}


def _load(keras_dir, stem):
  return load_keras_model(keras_dir / f'{stem}.json', keras_dir / f'{stem}.h5')


def _export(tmp_path, arch, variables, **kwargs):
  return keras_export.write(
    arch, variables, tmp_path / 'model.json', tmp_path / 'model.h5', **kwargs
  )


def _reimport(json_path, h5_path):
  """The importer's reading, with the stable ids the `.h5` records."""
  with h5py.File(h5_path, 'r') as f:
    recorded = json.loads(f.attrs[keras_export.ARCH_ATTR])
  ids = [[b['index'] for b in st['blocks']] for st in recorded['stages']]
  return load_keras_model(json_path, h5_path, block_ids=ids)


def _assert_same(arch, variables, got_arch, got_variables):
  assert got_arch == arch
  assert jax.tree.structure(got_variables) == jax.tree.structure(variables)
  for want, got in zip(
    jax.tree.leaves(variables), jax.tree.leaves(got_variables)
  ):
    assert np.asarray(got).dtype == np.float32
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def _outputs(arch, variables, x):
  return np.asarray(
    jax.jit(lambda v, x: models.build_model(arch).apply(v, x, train=False))(
      variables, x
    )
  )


def _assert_outputs_close(got, want, params):
  terms, depth = network_terms(params)
  tol = f32_atol(terms, magnitude(want), depth)
  np.testing.assert_allclose(got, want, rtol=0, atol=tol)


@pytest.fixture(scope='module')
def baseline(keras_dir):
  return _load(keras_dir, 'resnet56_baseline')


@pytest.fixture(scope='module')
def inputs(keras_dir):
  with np.load(keras_dir / 'reference_outputs.npz', allow_pickle=False) as z:
    return {k: z[k] for k in z.files}


# --- 1. The authors' ResNet-56 with two blocks removed ------------------------


@pytest.fixture(scope='module')
def two_removed(baseline, tmp_path_factory):
  arch, variables = surgery.remove_blocks(*baseline, TWO_BLOCKS)
  files = _export(
    tmp_path_factory.mktemp('two'), arch, variables, provenance=PROVENANCE
  )
  return arch, variables, files


def test_round_trip_is_exact(two_removed):
  arch, variables, files = two_removed
  _assert_same(arch, variables, *_reimport(*files))
  # Without the recorded ids the importer numbers each stage's blocks
  # 0 .. k-1; only the names differ.
  plain_arch, plain = load_keras_model(*files)
  assert plain_arch.blocks_per_stage == arch.blocks_per_stage == (8, 9, 8)
  for old, new in zip(arch.blocks, plain_arch.blocks):
    for want, got in zip(
      jax.tree.leaves(variables['params'][old.name]),
      jax.tree.leaves(plain['params'][new.name]),
    ):
      np.testing.assert_array_equal(got, want)


def test_round_trip_outputs(two_removed, inputs):
  arch, variables, files = two_removed
  got_arch, got = _reimport(*files)
  forward = jax.jit(
    lambda v, x: models.build_model(arch).apply(v, x, train=False)
  )
  want = np.asarray(forward(variables, inputs['inputs']))
  assert got_arch == arch  # So `forward` is the re-imported model's too.
  _assert_outputs_close(
    np.asarray(forward(got, inputs['inputs'])), want, variables['params']
  )


def test_provenance_is_in_the_h5_only(two_removed):
  arch, _, (json_path, h5_path) = two_removed
  with h5py.File(h5_path, 'r') as f:
    assert json.loads(f.attrs[keras_export.PROVENANCE_ATTR]) == PROVENANCE
    assert arch_lib.Arch.from_json(f.attrs[keras_export.ARCH_ATTR]) == arch
  assert 'sha256:abc' not in json_path.read_text()


# --- 2. The authors' format: their resnet56_cka_iter09 ------------------------


@pytest.fixture(scope='module')
def iter09_layout(baseline, tmp_path_factory):
  arch, variables = surgery.remove_blocks(*baseline, ITER09_REMOVED)
  assert arch.blocks_per_stage == (6, 3, 8)
  return _export(tmp_path_factory.mktemp('iter09'), arch, variables)


def _counter_renaming(theirs, mine):
  """`{their name: my name}` for the layers Keras names by its counters.

  The authors' scheme names (`Conv2D_1_0_0_3`) must be equal; counter names
  (`add_57`) must have the same prefix, and the map must be one to one.
  """
  assert [lyr['class_name'] for lyr in mine] == [
    lyr['class_name'] for lyr in theirs
  ]
  renaming = {}
  for t, m in zip(theirs, mine):
    if AUTHOR_SCHEME.fullmatch(t['name']):
      assert m['name'] == t['name']
    else:
      prefix = re.sub(r'_\d+$', '', t['name'])
      assert re.fullmatch(rf'{prefix}_\d+', m['name']), (t['name'], m['name'])
      renaming[t['name']] = m['name']
  assert len(set(renaming.values())) == len(renaming)
  return renaming


def _renamed(value, renaming):
  """`value` (JSON data) with every string that is a renamed name renamed."""
  if isinstance(value, str):
    return renaming.get(value, value)
  if isinstance(value, list):
    return [_renamed(v, renaming) for v in value]
  if isinstance(value, dict):
    return {k: _renamed(v, renaming) for k, v in value.items()}
  return value


def test_json_is_the_authors_graph(iter09_layout, keras_dir):
  """Layer for layer their JSON (classes, names, configs, wiring, key order),
  up to the names Keras' global counters gave their layers."""
  theirs = json.loads((keras_dir / 'resnet56_cka_iter09.json').read_text())
  mine = json.loads(iter09_layout[0].read_text())
  assert len(mine['config']['layers']) == len(theirs['config']['layers'])
  renaming = _counter_renaming(
    theirs['config']['layers'], mine['config']['layers']
  )
  assert re.fullmatch(r'model_\d+', mine['config']['name'])
  renaming[theirs['config']['name']] = mine['config']['name']
  assert _renamed(theirs, renaming) == mine
  # Key order too (what `model.to_json()` writes).
  ordered = [
    list(lyr) + list(lyr['config']) for lyr in mine['config']['layers']
  ]
  assert ordered == [
    list(lyr) + list(lyr['config']) for lyr in theirs['config']['layers']
  ]
  assert list(mine) == list(theirs)


def _h5_layout(path, renaming):
  """Root attributes, layer groups, weight names and datasets of a file."""

  def attr(obj, key):
    value = obj.attrs[key]
    kind = h5py.check_string_dtype(obj.attrs.get_id(key).dtype)
    text = [value] if isinstance(value, str) else list(value)
    return [renaming.get(str(v), str(v)) for v in text], kind, np.shape(value)

  def weight(name):
    layer, rest = name.split('/', 1)
    return f'{renaming.get(layer, layer)}/{rest}'

  layout = {}
  with h5py.File(path, 'r') as f:
    for key in f.attrs:
      if not key.startswith('lpjax_'):
        layout[key] = attr(f, key)
    for name, group in f.items():
      names = group.attrs['weight_names']
      datasets = {}

      def visit(p, o, datasets=datasets):
        if isinstance(o, h5py.Dataset):
          datasets[p] = (o.shape, o.dtype)

      group.visititems(visit)
      layout[renaming.get(name, name)] = (
        [weight(str(n)) for n in names],
        names.dtype if not len(names) else None,
        {weight(p): v for p, v in datasets.items()},
      )
  return layout


def test_h5_is_the_authors_layout(iter09_layout, keras_dir):
  theirs = json.loads((keras_dir / 'resnet56_cka_iter09.json').read_text())
  mine = json.loads(iter09_layout[0].read_text())
  renaming = _counter_renaming(
    theirs['config']['layers'], mine['config']['layers']
  )
  want = _h5_layout(keras_dir / 'resnet56_cka_iter09.h5', renaming)
  got = _h5_layout(iter09_layout[1], {})
  assert got == want
  assert 'top_level_model_weights' in got and 'layer_names' in got


# --- 3. Filters removed -------------------------------------------------------


def _their_weights(keras_dir, stem, mine_json):
  """The authors' weights under my layer names: conv names match, their BNs
  (`batch_normalization_60`) are found by the conv they read."""
  layers = json.loads((keras_dir / f'{stem}.json').read_text())['config'][
    'layers'
  ]
  mine = [
    lyr['name'] for lyr in json.loads(mine_json.read_text())['config']['layers']
  ]
  names = {}
  for t, m in zip(layers, mine):
    source = t['inbound_nodes'][0][0][0] if t['inbound_nodes'] else ''
    if t['class_name'] == 'BatchNormalization':
      assert m == source.replace('Conv2D_', 'BatchNorm1_', 1)
    names[m] = t['name']
  out = {}
  with h5py.File(keras_dir / f'{stem}.h5', 'r') as f:
    for m, t in names.items():
      for w in f[t].attrs['weight_names']:
        out[f'{m}/{w.split("/", 1)[1]}'] = f[t][w][()]
  return out


def test_filter_pruned_model_exports_the_authors_weights(
  keras_dir, inputs, tmp_path
):
  stem = 'resnet56_cka_iter19_filters4'
  arch, variables = _load(keras_dir, stem)
  assert len({b.widths for b in arch.blocks}) > 1  # Per-block widths.
  files = _export(tmp_path, arch, variables)
  _assert_same(arch, variables, *_reimport(*files))
  want = _their_weights(keras_dir, stem, files[0])
  with h5py.File(files[1], 'r') as f:
    got = {}
    for name in f.attrs['layer_names']:
      for w in f[name].attrs['weight_names']:
        got[w] = f[name][w][()]
  assert sorted(got) == sorted(want)
  for key, value in want.items():
    np.testing.assert_array_equal(got[key], value, err_msg=key)
  # TensorFlow's outputs of their model, from the re-imported export.
  got_arch, got_vars = load_keras_model(*files)
  logits = _outputs(got_arch, got_vars, inputs['inputs'])
  _assert_outputs_close(logits, inputs[f'{stem}/logits'], variables['params'])


def test_filters_and_blocks_removed_by_surgery(keras_dir, tmp_path):
  arch, variables = _load(keras_dir, 'resnet56_cka_iter19_filters4')
  edit = surgery.Edit(
    remove=('stage3_block02',),
    shrink=(
      surgery.Shrink('stage2_block00', 0, (0, 3, 4, 11, 18)),  # Projects.
      surgery.Shrink('stage3_block01', 0, tuple(range(1, 38, 3))),
    ),
  )
  arch, variables = surgery.apply(arch, variables, edit)
  assert arch.block('stage2_block00').widths == (5,)
  files = _export(tmp_path, arch, variables)
  _assert_same(arch, variables, *_reimport(*files))


# --- 4. An lpjax ResNet -------------------------------------------------------


def _variant_arch():
  """A projection in stage 1 (stem 3 -> 4 channels), no conv bias, PyTorch
  BatchNorm settings, BN after the projections."""
  style = dataclasses.replace(
    resnet.KERAS_STYLE,
    conv_bias=False,
    bn_epsilon=1e-5,
    bn_momentum=0.9,
    projection_bn=True,
  )
  stages = tuple(
    arch_lib.Stage(
      width=w,
      stride=st,
      blocks=tuple(resnet.make_block(s, i, (w,)) for i in range(n)),
    )
    for s, (w, st, n) in enumerate([(4, 1, 3), (8, 2, 3), (8, 2, 2)], 1)
  )
  return resnet.make_arch(
    'resnet_cifar', stages, num_classes=3, stem_width=3, style=style
  )


TINY = {
  'keras': lambda: resnet.resnet_cifar(
    blocks_per_stage=(2, 3, 2), width=4, num_classes=3
  ),
  'variant': _variant_arch,
}


def _random_variables(arch, rng):
  """Every leaf random and distinct (eager init is slow on CPU); BN
  variances and scales positive."""

  def draw(path, leaf):
    if path[-1].key in ('var', 'scale'):
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    return rng.normal(0.0, 0.5, leaf.shape).astype(np.float32)

  shapes = models.variable_shapes(arch, (32, 32, 3))
  return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.mark.parametrize('kind', sorted(TINY))
def test_lpjax_resnet_round_trip(kind, tmp_path):
  rng = np.random.default_rng(7)
  arch = TINY[kind]()
  variables = _random_variables(arch, rng)
  edit = surgery.Edit(
    remove=('stage2_block01',),
    shrink=(
      surgery.Shrink('stage1_block00', 0, (0, 2, 3)),
      surgery.Shrink('stage3_block00', 0, (1, 4, 6)),
    ),
  )
  arch, variables = surgery.apply(arch, variables, edit)
  files = _export(tmp_path, arch, variables)
  got_arch, got = _reimport(*files)
  _assert_same(arch, variables, got_arch, got)
  names = [
    lyr['name'] for lyr in json.loads(files[0].read_text())['config']['layers']
  ]
  with h5py.File(files[1], 'r') as f:
    assert list(f.attrs['layer_names']) == names
  if kind == 'variant':
    # Keras lists layers by decreasing depth to the output, `load_weights`
    # pairs layers by that order: with a BN after the projection, the
    # projection conv is as deep as the block's second conv and comes first
    # (Keras reaches the Add's shortcut first; tf_keras 2.21 lists them so).
    start = names.index('Conv2D_0_0_0_1')
    assert names[start : start + 9] == [
      'Conv2D_0_0_0_1',
      'BatchNorm1_0_0_0_1',
      'Act1_0_0_0_1',
      'Conv2D_0_0_0_3',
      'Conv2D_0_0_0_2',
      'BatchNorm1_0_0_0_3',
      'BatchNorm1_0_0_0_2',
      'add_1',
      'activation_1',
    ]
  x = rng.normal(size=(16, 32, 32, 3)).astype(np.float32)
  forward = jax.jit(
    lambda v, x: models.build_model(arch).apply(v, x, train=False)
  )
  _assert_outputs_close(
    np.asarray(forward(got, x)),
    np.asarray(forward(variables, x)),
    variables['params'],
  )


# --- 5. Refusals --------------------------------------------------------------


def _tiny_pair():
  arch = TINY['keras']()
  return arch, _random_variables(arch, np.random.default_rng(0))


def _stage_without_projection():
  stages = tuple(
    arch_lib.Stage(
      width=4,
      stride=1,
      blocks=tuple(resnet.make_block(s, i, (4,)) for i in range(2)),
    )
    for s in (1, 2)
  )
  return resnet.make_arch(
    'resnet_cifar',
    stages,
    num_classes=3,
    stem_width=4,
    style=resnet.KERAS_STYLE,
  )


REFUSED_ARCHS = {
  'vit': (lambda: models.get_arch('vit'), "'vit' network, not a ResNet"),
  'decoder': (
    lambda: models.get_arch('decoder'),
    "'decoder' network, not a ResNet",
  ),
  'imagenet': (
    lambda: resnet.resnet_imagenet(blocks_per_stage=(1, 1), width=2),
    'bottleneck ImageNet ResNet',
  ),
  'symmetric_padding': (
    lambda: resnet.resnet_cifar(
      blocks_per_stage=(1, 1, 1), width=2, style=resnet.PYTORCH_STYLE
    ),
    'symmetric_padding=True',
  ),
  'stride_on_3x3': (
    lambda: resnet.resnet_cifar(
      blocks_per_stage=(1, 1, 1),
      width=2,
      style=dataclasses.replace(
        resnet.KERAS_STYLE, bottleneck_stride_on_3x3=True
      ),
    ),
    'bottleneck_stride_on_3x3',
  ),
  'no_projection': (_stage_without_projection, 'Stage 2 neither downsamples'),
}


@pytest.mark.parametrize('case', sorted(REFUSED_ARCHS))
def test_refused_arch(case, tmp_path):
  make, message = REFUSED_ARCHS[case]
  with pytest.raises(ExportError, match=re.escape(message)):
    _export(tmp_path, make(), {})
  assert not any(tmp_path.iterdir())


def test_refused_outputs_and_variables(tmp_path):
  arch, variables = _tiny_pair()
  other = resnet.resnet_cifar(blocks_per_stage=(2, 2, 2), width=4)
  wrong = _random_variables(other, np.random.default_rng(1))
  wrong['params']['head'] = variables['params']['head']
  with pytest.raises(ExportError, match='stage2_block02'):
    _export(tmp_path, arch, wrong)
  with pytest.raises(ExportError, match="no 'params'"):
    _export(tmp_path, arch, {'batch_stats': variables['batch_stats']})
  assert not any(tmp_path.iterdir())

  same = tmp_path / 'model.h5'
  with pytest.raises(ExportError, match='two different files'):
    keras_export.write(arch, variables, same, same)
  assert not any(tmp_path.iterdir())

  same.write_bytes(b'theirs')
  with pytest.raises(ExportError, match='exists'):
    _export(tmp_path, arch, variables)
  assert [p.name for p in tmp_path.iterdir()] == ['model.h5']
  assert same.read_bytes() == b'theirs'
