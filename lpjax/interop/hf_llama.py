"""LLaMA-family language models from Hugging Face checkpoint folders.

`load_hf_llama(folder)` reads a folder as transformers' `save_pretrained`
writes it, `config.json` plus `model.safetensors` or shards
`model-0000i-of-0000n.safetensors` listed in `model.safetensors.index.json`,
into an `Arch` of the `decoder` family (`lpjax.models.decoder`) and its
variables, with `safetensors` alone (no torch). Three classes are read, as
transformers 5.24.0 defines them (`models/{llama,mistral,qwen2}/
configuration_*.py` and `modeling_*.py`), chosen by `model_type`:

* `llama` (`LlamaForCausalLM`): RoPE unscaled or scaled (`linear`,
  `dynamic`, `llama3`; `lpjax.models.decoder.inverse_frequencies` gives
  the formulas of transformers' `modeling_rope_utils.py`);
* `mistral` (`MistralForCausalLM`): the same layer with a sliding attention
  window (`sliding_window`, 4096 where the file does not set it);
* `qwen2` (`Qwen2ForCausalLM`): biases on the query, key and value
  projections (always), no sliding window.

A config field a class reads is taken at transformers' default where the
file leaves it out, and every value lpjax cannot run as transformers would
is refused before any tensor is read (`HFImportError`, naming the field):
another `model_type` or architecture, a `hidden_act` other than SiLU,
`attention_bias` (LLaMA: a bias on `o_proj` too) or `mlp_bias`, a
`head_dim` other than `hidden_size / num_attention_heads`, partial rotary
embeddings, a RoPE type other than the three (`yarn`, `longrope`, ...),
Qwen2's sliding-window layers, a quantised checkpoint. Fields the classes
do not read at inference (dropout, token ids, `pretraining_tp`, `dtype`,
...) are ignored, as transformers ignores them.

The tensors are checked against the layout (names, shapes, dtypes F32,
BF16 or F16) from the files' headers before any is read. Then the shards
are read one after the other, tensor by tensor, with `safetensors.
safe_open` (reopened per tensor, so that no more than one tensor of the
file is mapped at a time): each is cast to `dtype` and transposed where
lpjax's `Dense` kernels are `[in, out]` into one aligned host array, which
becomes the device array (on CPU without a copy), before the next is read.
The host holds at most two copies of one tensor beside the parameters
already loaded; `tests/test_hf_llama.py` measures the peak resident memory
of a load at about 1.15 times the parameter bytes. `lm_head.weight` of
a tied checkpoint and RoPE `inv_freq` buffers some old checkpoints hold
are skipped, as transformers skips them. The q/k rows are in the order
lpjax's RoPE rotates (`lpjax.export.hf_llama` explains why nothing is
permuted).

`TENSOR_LAYOUT` / `tensor_layout(arch)` is the one statement of the key
layout, shared with the exporter (`lpjax.export.hf_llama`).

`HFTokenizer(folder)` runs the folder's `tokenizer.json` with the
`tokenizers` library (its post-processor adds what the checkpoint's
tokenizer adds, e.g. a BOS) and keeps the chat template as data.
"""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lpjax import arch as arch_lib
from lpjax import errors
from lpjax.models import decoder as decoder_lib

CONFIG = 'config.json'
WEIGHTS = 'model.safetensors'
INDEX = 'model.safetensors.index.json'
DTYPES = ('float32', 'bfloat16')
# model_type -> the causal-LM class transformers builds for it.
CLASSES = {
  'llama': 'LlamaForCausalLM',
  'mistral': 'MistralForCausalLM',
  'qwen2': 'Qwen2ForCausalLM',
}
# Each class's defaults for the fields it reads (transformers 5.24.0,
# `configuration_{llama,mistral,qwen2}.py`); `head_dim` and
# `num_key_value_heads` default from the other fields.
_DEFAULTS: dict[str, dict[str, Any]] = {
  'llama': {
    'vocab_size': 32000,
    'hidden_size': 4096,
    'intermediate_size': 11008,
    'num_hidden_layers': 32,
    'num_attention_heads': 32,
    'num_key_value_heads': None,
    'hidden_act': 'silu',
    'max_position_embeddings': 2048,
    'rms_norm_eps': 1e-6,
    'tie_word_embeddings': False,
    'attention_bias': False,
    'mlp_bias': False,
  },
  'mistral': {
    'vocab_size': 32000,
    'hidden_size': 4096,
    'intermediate_size': 14336,
    'num_hidden_layers': 32,
    'num_attention_heads': 32,
    'num_key_value_heads': 8,
    'hidden_act': 'silu',
    'max_position_embeddings': 4096 * 32,
    'rms_norm_eps': 1e-6,
    'tie_word_embeddings': False,
    'sliding_window': 4096,
  },
  'qwen2': {
    'vocab_size': 151936,
    'hidden_size': 4096,
    'intermediate_size': 22016,
    'num_hidden_layers': 32,
    'num_attention_heads': 32,
    'num_key_value_heads': 32,
    'hidden_act': 'silu',
    'max_position_embeddings': 32768,
    'rms_norm_eps': 1e-6,
    'tie_word_embeddings': False,
    'use_sliding_window': False,
    'sliding_window': 4096,
    'max_window_layers': 28,
    'layer_types': None,
  },
}
# transformers' `RotaryEmbeddingConfigMixin.default_theta`.
_DEFAULT_THETA = 10000.0
# ACT2FN names that are SiLU (transformers' `activations.py`).
_SILU = ('silu', 'swish')
# Host buffers handed to the device start on this boundary.
_ALIGN = 64
# safetensors dtypes read (cast to `dtype` on loading).
_FILE_DTYPES = ('F32', 'BF16', 'F16')

# One layer's tensors: (transformers name after `model.layers.{i}.`, lpjax
# path inside the layer, HF shape from (d, kv, mlp), transposed). HF
# projections are `[out, in]` (torch `Linear.weight`); lpjax's Dense
# kernels are `[in, out]`.
_LAYER = (
  ('input_layernorm.weight', ('attn_norm', 'scale'), ('d',), False),
  ('self_attn.q_proj.weight', ('q', 'kernel'), ('d', 'd'), True),
  ('self_attn.k_proj.weight', ('k', 'kernel'), ('kv', 'd'), True),
  ('self_attn.v_proj.weight', ('v', 'kernel'), ('kv', 'd'), True),
  ('self_attn.o_proj.weight', ('o', 'kernel'), ('d', 'd'), True),
  ('post_attention_layernorm.weight', ('mlp_norm', 'scale'), ('d',), False),
  ('mlp.gate_proj.weight', ('gate', 'kernel'), ('mlp', 'd'), True),
  ('mlp.up_proj.weight', ('up', 'kernel'), ('mlp', 'd'), True),
  ('mlp.down_proj.weight', ('down', 'kernel'), ('d', 'mlp'), True),
)
# Qwen2's projection biases (decoder option `qkv_bias`).
_QKV_BIAS = (
  ('self_attn.q_proj.bias', ('q', 'bias'), ('d',), False),
  ('self_attn.k_proj.bias', ('k', 'bias'), ('kv',), False),
  ('self_attn.v_proj.bias', ('v', 'bias'), ('kv',), False),
)
TENSOR_LAYOUT = {'layer': _LAYER, 'qkv_bias': _QKV_BIAS}
# Buffers old checkpoints saved that are no weights (transformers
# recomputes them).
_BUFFERS = ('.rotary_emb.inv_freq',)


class HFImportError(errors.UserError, ValueError):
  """A checkpoint folder lpjax cannot read, naming the file and the field."""


def tensor_layout(
  arch: arch_lib.Arch,
) -> list[tuple[str, tuple[str, ...], tuple[int, ...], bool]]:
  """Every tensor of `arch` as transformers' LLaMA-family checkpoint names
  it: `(name, lpjax params path, HF shape, transposed)`, in network order.

  Layer `i` of the checkpoint (`model.layers.{i}.`) is `arch.blocks[i]`,
  whatever its name (a pruned model's remaining layers are renumbered
  `0 … n − 1`). `lm_head.weight` only for an untied model; the q/k/v
  biases only with the decoder option `qkv_bias`. `transposed`: the HF
  tensor is the transpose of lpjax's (`[out, in]` against `[in, out]`).
  """
  o = arch.options_dict()
  d, vocab = o['width'], o['vocab']
  kv = o['kv_heads'] * (d // o['heads'])
  embed = ('tok_embed', 'embedding')
  out = [('model.embed_tokens.weight', embed, (vocab, d), False)]
  layer = _LAYER + (_QKV_BIAS if o.get('qkv_bias', False) else ())
  for i, block in enumerate(arch.blocks):
    sizes = {'d': d, 'kv': kv, 'mlp': block.widths[0]}
    for name, path, dims, transposed in layer:
      out.append(
        (
          f'model.layers.{i}.{name}',
          (block.name, *path),
          tuple(sizes[k] for k in dims),
          transposed,
        )
      )
  out.append(('model.norm.weight', ('norm', 'scale'), (d,), False))
  if not o['tied']:
    out.append(('lm_head.weight', ('lm_head', 'kernel'), (vocab, d), True))
  return out


################################################################################
# config.json
################################################################################


def _read_json(path: pathlib.Path) -> Any:
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except FileNotFoundError:
    raise HFImportError(
      f'{path} is missing; pass a folder transformers saved with '
      'save_pretrained (config.json and model.safetensors).'
    ) from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise HFImportError(f'{path} is not valid JSON: {e}') from None


def _folder(folder: str | pathlib.Path) -> pathlib.Path:
  path = pathlib.Path(folder)
  if not path.is_dir():
    raise HFImportError(
      f'{str(path)!r} is not a folder; pass the folder of a Hugging Face '
      'checkpoint (config.json, model.safetensors, tokenizer.json).'
    )
  return path


def read_config(folder: str | pathlib.Path) -> dict[str, Any]:
  """The decoder hyperparameters of a checkpoint's `config.json`, checked.

  Returns the keyword arguments of `lpjax.models.decoder.decoder` (less
  `seq_len` and `min_blocks_per_stage`) plus `model_type`. Reads nothing
  but `config.json`, so a driver can check a folder (e.g. its depth)
  before loading it.

  Raises:
    HFImportError: a missing or unreadable file, a class lpjax does not
      read, or a field value it cannot run (naming the field).
  """
  path = _folder(folder) / CONFIG
  raw = _read_json(path)
  if not isinstance(raw, dict):
    raise HFImportError(f'{path} holds a {type(raw).__name__}, not an object.')

  c: dict[str, Any] = {}  # the fields read, defaults filled in

  def refuse(field, why):
    value = c[field] if field in c else raw.get(field)
    raise HFImportError(f'{path}: {field} = {value!r}: {why}')

  kind = raw.get('model_type')
  if kind not in CLASSES:
    refuse(
      'model_type',
      f'lpjax reads {sorted(CLASSES)} ({", ".join(CLASSES.values())}).',
    )
  arches = raw.get('architectures')
  if arches is not None and list(arches) != [CLASSES[kind]]:
    refuse(
      'architectures',
      f'lpjax reads the causal language model {CLASSES[kind]} of '
      f'model_type {kind!r}.',
    )
  if raw.get('quantization_config') is not None:
    refuse(
      'quantization_config',
      'quantised checkpoints are not read; pass one saved in float32, '
      'bfloat16 or float16.',
    )
  c.update(_DEFAULTS[kind])
  c.update({k: v for k, v in raw.items() if k in _DEFAULTS[kind]})

  def integer(field, low=1):
    value = c[field]
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
      refuse(field, f'must be an integer >= {low}.')
    return value

  vocab = integer('vocab_size')
  width = integer('hidden_size')
  depth = integer('num_hidden_layers')
  heads = integer('num_attention_heads')
  mlp = integer('intermediate_size')
  if c['num_key_value_heads'] is None:
    c['num_key_value_heads'] = heads
  kv_heads = integer('num_key_value_heads')
  if width % heads or (width // heads) % 2:
    refuse(
      'hidden_size',
      f'must be a multiple of num_attention_heads = {heads} with an even '
      'head size.',
    )
  if heads % kv_heads:
    refuse('num_key_value_heads', f'must divide num_attention_heads = {heads}.')
  head_dim = raw.get('head_dim')
  if head_dim is not None and head_dim != width // heads:
    refuse(
      'head_dim',
      f'lpjax decoders have head_dim = hidden_size / num_attention_heads '
      f'= {width // heads}.',
    )
  if c['hidden_act'] not in _SILU:
    refuse('hidden_act', 'the LLaMA MLP of lpjax is SwiGLU (silu).')
  for field in ('attention_bias', 'mlp_bias'):
    if c.get(field, False):
      refuse(
        field,
        'biases on every attention projection (o_proj included) or on the '
        'MLP are not supported; only Qwen2 q/k/v biases are.',
      )
  eps = c['rms_norm_eps']
  if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps <= 0:
    refuse('rms_norm_eps', 'must be a positive number.')
  if not isinstance(c['tie_word_embeddings'], bool):
    refuse('tie_word_embeddings', 'must be true or false.')
  if raw.get('partial_rotary_factor') not in (None, 1, 1.0):
    refuse('partial_rotary_factor', 'partial rotary embeddings are not read.')
  out = dict(
    model_type=kind,
    vocab=vocab,
    width=width,
    depth=depth,
    heads=heads,
    kv_heads=kv_heads,
    mlp=mlp,
    eps=float(eps),
    tied=c['tie_word_embeddings'],
    qkv_bias=kind == 'qwen2',
    sliding_window=_sliding_window(raw, c, kind, depth, refuse),
  )
  out.update(_rope(raw, c, path))
  return out


def _sliding_window(raw, c, kind, depth, refuse) -> int | None:
  """Mistral's window (`None`: plain causal); Qwen2's sliding layers are
  refused (`Qwen2Config.__post_init__` makes layers from
  `max_window_layers` on sliding where `use_sliding_window`)."""
  if kind == 'llama':
    return None
  if kind == 'qwen2':
    if c['layer_types'] is not None:
      types = list(c['layer_types'])
      if len(types) != depth or set(types) - {'full_attention'}:
        refuse(
          'layer_types',
          f'lpjax reads Qwen2 with {depth} full_attention layers only.',
        )
    elif c['use_sliding_window'] and c['max_window_layers'] < depth:
      refuse(
        'use_sliding_window',
        'Qwen2 sliding-window layers (from max_window_layers = '
        f'{c["max_window_layers"]} on) are not supported.',
      )
    return None
  window = c['sliding_window']
  if window is None:
    return None
  if isinstance(window, bool) or not isinstance(window, int) or window < 1:
    refuse('sliding_window', 'must be null or an integer >= 1.')
  return window


def _rope(raw, c, path) -> dict[str, Any]:
  """`rope_theta` and `rope_scaling` (decoder arguments) as transformers
  standardises them (`RotaryEmbeddingConfigMixin.
  convert_rope_params_to_dict` and `standardize_rope_params`): a non-empty
  `rope_scaling` (older files) or `rope_parameters`, whose `rope_theta`
  wins over a top-level one; `type` is the old name of `rope_type`."""
  field = 'rope_scaling' if raw.get('rope_scaling') else 'rope_parameters'
  params = raw.get(field) or {}
  if not isinstance(params, dict):
    raise HFImportError(f'{path}: {field} must be an object; got {params!r}.')
  theta = params.get('rope_theta', raw.get('rope_theta', _DEFAULT_THETA))
  kind = params.get('rope_type', params.get('type', 'default'))

  def refuse(key, why):
    raise HFImportError(f'{path}: {field}.{key} = {params.get(key)!r}: {why}')

  def number(key, value=None, integer=False):
    value = params.get(key) if value is None else value
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
      refuse(key, f'must be {"an integer" if integer else "a number"}.')
    if not (math.isfinite(value) and value > 0):
      refuse(key, 'must be positive.')
    return value

  if (
    isinstance(theta, bool) or not isinstance(theta, (int, float)) or theta <= 0
  ):
    raise HFImportError(
      f'{path}: rope_theta = {theta!r}: must be a positive number.'
    )
  if params.get('partial_rotary_factor') not in (None, 1, 1.0):
    refuse('partial_rotary_factor', 'partial rotary embeddings are not read.')
  out: dict[str, Any] = {'rope_theta': float(theta), 'rope_scaling': None}
  if kind == 'default':
    return out
  key = 'rope_type' if 'rope_type' in params else 'type'
  if kind not in decoder_lib.ROPE_SCALINGS:
    refuse(
      key,
      f'RoPE type {kind!r} is not supported; lpjax reads default, '
      f'{", ".join(decoder_lib.ROPE_SCALINGS)}.',
    )
  scaling: dict[str, Any] = {'type': kind, 'factor': number('factor')}
  if kind == 'dynamic':
    scaling['max_len'] = c['max_position_embeddings']
    if (
      isinstance(scaling['max_len'], bool)
      or not isinstance(scaling['max_len'], int)
      or scaling['max_len'] < 1
    ):
      raise HFImportError(
        f'{path}: max_position_embeddings = {scaling["max_len"]!r}: must '
        'be an integer >= 1 (dynamic RoPE scaling reads it).'
      )
  elif kind == 'llama3':
    lo = number('low_freq_factor')
    hi = number('high_freq_factor')
    if hi <= lo:
      refuse('high_freq_factor', f'must exceed low_freq_factor = {lo}.')
    # A top-level original_max_position_embeddings wins; else the rope
    # dict's; else max_position_embeddings (`standardize_rope_params`).
    old = raw.get(
      'original_max_position_embeddings',
      params.get(
        'original_max_position_embeddings', c['max_position_embeddings']
      ),
    )
    old = number('original_max_position_embeddings', old, integer=True)
    scaling.update(
      low_freq_factor=lo, high_freq_factor=hi, original_max_len=old
    )
  out['rope_scaling'] = scaling
  return out


################################################################################
# Weights.
################################################################################


def _shards(folder: pathlib.Path) -> dict[pathlib.Path, list[str]]:
  """Each weight file -> the tensor names the index assigns it (`[]`: all
  of a single `model.safetensors`)."""
  single = folder / WEIGHTS
  if single.is_file():
    return {single: []}
  index = folder / INDEX
  if not index.is_file():
    others = sorted(
      p.name
      for p in folder.iterdir()
      if p.suffix in ('.bin', '.pt', '.pth', '.gguf', '.safetensors')
    )
    raise HFImportError(
      f'{folder} has neither {WEIGHTS} nor {INDEX}'
      + (f' (it has {others}: only safetensors are read)' if others else '')
      + '; save the model with save_pretrained(safe_serialization=True).'
    )
  data = _read_json(index)
  weight_map = data.get('weight_map') if isinstance(data, dict) else None
  if not isinstance(weight_map, dict) or not weight_map:
    raise HFImportError(f'{index} has no weight_map.')
  out: dict[pathlib.Path, list[str]] = {}
  for name, file in weight_map.items():
    shard = folder / str(file)
    if shard.parent != folder:
      raise HFImportError(
        f'{index}: {name} is in {file!r}, outside the folder.'
      )
    out.setdefault(shard, []).append(name)
  missing = sorted(p.name for p in out if not p.is_file())
  if missing:
    raise HFImportError(
      f'{index} lists shards {missing} that are not in {folder}.'
    )
  return dict(sorted(out.items()))


def _headers(
  shards: Mapping[pathlib.Path, list[str]],
) -> dict[str, tuple[pathlib.Path, str, tuple[int, ...]]]:
  """name -> (file, dtype, shape) from the safetensors headers."""
  from safetensors import safe_open

  out: dict[str, tuple[pathlib.Path, str, tuple[int, ...]]] = {}
  for shard, listed in shards.items():
    try:
      with safe_open(shard, framework='np') as f:
        names = list(f.keys())
        for name in names:
          s = f.get_slice(name)
          out[name] = (shard, s.get_dtype(), tuple(s.get_shape()))
    except Exception as e:  # safetensors raises its own error types
      raise HFImportError(
        f'{shard} is not a readable safetensors file: {e}'
      ) from None
    lost = sorted(set(listed) - set(names))
    if lost:
      raise HFImportError(
        f'{shard.parent / INDEX} puts {lost[:4]} in {shard.name}, which '
        'does not hold them.'
      )
  return out


def _aligned_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
  """An uninitialised array whose data starts on a 64-byte boundary, which
  XLA's CPU client takes over without a copy (it copies arrays that are
  not so aligned, as the C allocator's large blocks are not)."""
  nbytes = math.prod(shape) * dtype.itemsize
  buf = np.empty(nbytes + _ALIGN, np.uint8)
  start = -buf.ctypes.data % _ALIGN
  return buf[start : start + nbytes].view(dtype).reshape(shape)


def load_hf_llama(
  folder: str | pathlib.Path,
  *,
  seq_len: int = 256,
  min_blocks_per_stage: int = 1,
  dtype: str = 'float32',
) -> tuple[arch_lib.Arch, dict[str, Any]]:
  """A LLaMA, Mistral or Qwen2 checkpoint folder as `(arch, variables)`.

  Args:
    folder: `config.json` and `model.safetensors` (or the shards of
      `model.safetensors.index.json`).
    seq_len: the sequence length FLOPs are counted at by default.
    min_blocks_per_stage: the fewest layers pruning may leave.
    dtype: `'float32'` or `'bfloat16'`: the parameters' dtype (the model
      computes in it; RMSNorm and the losses in float32).

  Returns:
    The unpruned decoder `Arch` (`layer00` ...) and `{'params': ...}` of
    device arrays.

  Raises:
    HFImportError: before any tensor is read, for a folder, field or
      tensor lpjax cannot read (see the module docstring).
  """
  import jax
  import jax.numpy as jnp
  import ml_dtypes  # noqa: F401  (numpy learns bfloat16 from it)
  from safetensors import safe_open

  if dtype not in DTYPES:
    raise HFImportError(f'dtype must be one of {DTYPES}; got {dtype!r}.')
  path = _folder(folder)
  c = read_config(path)
  c.pop('model_type')
  try:
    arch = decoder_lib.decoder(
      **c, seq_len=seq_len, min_blocks_per_stage=min_blocks_per_stage
    )
  except ValueError as e:
    raise HFImportError(f'{path / CONFIG}: {e}') from None
  layout = tensor_layout(arch)
  headers = _headers(_shards(path))
  wanted = {name for name, *_ in layout}
  tied = arch.option('tied')
  skipped = {
    n
    for n in headers
    if n.endswith(_BUFFERS) or (tied and n == 'lm_head.weight')
  }
  missing = sorted(wanted - set(headers))
  unexpected = sorted(set(headers) - wanted - skipped)
  if missing or unexpected:
    raise HFImportError(
      f'{path} does not hold the tensors of its config.json '
      f'({arch.option("vocab")} tokens, {len(arch.blocks)} layers, '
      f'tie_word_embeddings={arch.option("tied")}): missing {missing[:6]}, '
      f'unexpected {unexpected[:6]}.'
    )
  for name, _, shape, _ in layout:
    file, kind, have = headers[name]
    if have != shape:
      raise HFImportError(
        f'{file}: {name} has shape {list(have)}; config.json implies '
        f'{list(shape)}.'
      )
    if kind not in _FILE_DTYPES:
      raise HFImportError(
        f'{file}: {name} is {kind}; lpjax reads {", ".join(_FILE_DTYPES)}.'
      )

  target = np.dtype(jnp.dtype(dtype))
  by_file: dict[pathlib.Path, list] = {}
  for entry in layout:
    by_file.setdefault(headers[entry[0]][0], []).append(entry)
  params: dict[str, Any] = {}
  for file, entries in sorted(by_file.items()):  # shard by shard
    for name, dst, _, transposed in entries:
      # Opened per tensor: the file's memory map (resident pages count as
      # the process's memory) closes before the next tensor is read.
      with safe_open(file, framework='np') as f:
        raw = f.get_tensor(name)
      src = raw.T if transposed else raw
      value = _aligned_empty(src.shape, target)
      np.copyto(value, src, casting='unsafe')  # bfloat16: round to nearest
      del raw, src
      node = params
      for key in dst[:-1]:
        node = node.setdefault(key, {})
      # An aligned host array is adopted, not copied, by the CPU backend.
      node[dst[-1]] = jax.device_put(value)
      del value
  return arch, {'params': params}


def digest(folder: str | pathlib.Path) -> str:
  """SHA-256 of what a run reads from a checkpoint folder: `config.json`,
  `tokenizer.json` (if any) and every weight file `load_hf_llama` reads
  (names and contents, in order), for a run's record of its model."""
  import hashlib

  path = _folder(folder)
  files = [path / CONFIG, path / 'tokenizer.json']
  files += sorted(_shards(path))
  if (path / INDEX).is_file() and not (path / WEIGHTS).is_file():
    files.append(path / INDEX)
  h = hashlib.sha256()
  for file in files:
    if not file.is_file():
      continue
    h.update(f'{file.name}\0{file.stat().st_size}\0'.encode())
    with open(file, 'rb') as f:
      while chunk := f.read(1 << 20):
        h.update(chunk)
  return h.hexdigest()


################################################################################
# Tokenizer.
################################################################################


class HFTokenizer:
  """A checkpoint folder's `tokenizer.json`, with the interface of
  `lpjax.interop.gguf_llama.GGUFTokenizer`.

  `encode` adds what the file's post-processor adds (e.g. Llama 3's BOS),
  as transformers' tokenizer does by default (`add_special_tokens=True`).

  Attributes:
    bos_id, eos_id: the special token ids (`tokenizer_config.json`'s
      `bos_token` / `eos_token`, else `config.json`'s ids; `None` if
      neither names one).
    add_bos: whether `encode` puts `bos_id` first (the post-processor's
      doing).
    chat_template: the chat template (a Jinja string, from
      `tokenizer_config.json` or `chat_template.jinja`; a list of
      `{'name', 'template'}` where the file has several), kept as data;
      `None` if the folder has none.
  """

  def __init__(self, folder: str | pathlib.Path):
    from tokenizers import Tokenizer

    path = _folder(folder)
    file = path / 'tokenizer.json'
    if not file.is_file():
      raise HFImportError(
        f'{file} is missing; lpjax reads fast tokenizers (tokenizer.json) only.'
      )
    try:
      self._tok = Tokenizer.from_file(str(file))
    except Exception as e:  # tokenizers raises a bare Exception
      raise HFImportError(f'{file} is not a readable tokenizer: {e}') from None
    config = path / 'tokenizer_config.json'
    tc = _read_json(config) if config.is_file() else {}
    mc = _read_json(path / CONFIG) if (path / CONFIG).is_file() else {}
    self.bos_id = self._special(tc.get('bos_token'), mc.get('bos_token_id'))
    self.eos_id = self._special(tc.get('eos_token'), mc.get('eos_token_id'))
    first = self._tok.encode('').ids[:1]
    self.add_bos = self.bos_id is not None and first == [self.bos_id]
    template = tc.get('chat_template')
    jinja = path / 'chat_template.jinja'
    if template is None and jinja.is_file():
      template = jinja.read_text(encoding='utf-8')
    self.chat_template = template

  def _special(self, token: Any, fallback: Any) -> int | None:
    if isinstance(token, dict):  # an AddedToken as saved
      token = token.get('content')
    if isinstance(token, str):
      found = self._tok.token_to_id(token)
      if found is not None:
        return int(found)
    if isinstance(fallback, list):  # several eos ids (Llama 3)
      fallback = fallback[0] if fallback else None
    return None if fallback is None else int(fallback)

  def encode(self, text: str) -> np.ndarray:
    """Token ids of `text` (int32), special tokens added as the file says."""
    return np.asarray(self._tok.encode(text).ids, np.int32)

  def decode(self, ids: Sequence[int]) -> str:
    """The text of `ids`."""
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)


__all__ = [
  'CLASSES',
  'TENSOR_LAYOUT',
  'HFImportError',
  'HFTokenizer',
  'digest',
  'load_hf_llama',
  'read_config',
  'tensor_layout',
]
