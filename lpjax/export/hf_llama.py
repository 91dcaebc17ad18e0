"""A (pruned) lpjax decoder as a Hugging Face `LlamaForCausalLM` folder.

`write(arch, variables, source, out)` writes what `transformers`'
`AutoModelForCausalLM.from_pretrained(out)` and `AutoTokenizer` read:

* `config.json`: a `LlamaConfig` (`model_type` `'llama'`) with the
  remaining layers as `num_hidden_layers`; the model's own hyperparameters
  come from `arch`, the context length and special token ids from the GGUF
  file the model was imported from (`source`);
* `model.safetensors`: float32 tensors under transformers' LLaMA names
  (`model.layers.{i}.self_attn.q_proj.weight`, ...), every projection
  `[out, in]` (the layout of `torch.nn.Linear.weight`), the remaining
  layers renumbered `0 … n − 1` in network order; `lm_head.weight` only
  for an untied model. The header's metadata holds `format: pt` (what
  transformers requires of a safetensors checkpoint) and
  `lpjax.provenance`;
* `generation_config.json`: the special token ids;
* `tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json`:
  the GGUF file's byte-level BPE tokenizer (`tokenizer_json`), loaded by
  transformers' generic `PreTrainedTokenizerFast`, with the file's chat
  template.

Query/key row order. llama.cpp's converter (`convert_hf_to_gguf.py`,
`LlamaModel.permute`) reorders the rows of each head of the query and key
projections from the Hugging Face order (feature `i` of half `h` at row
`h·dh/2 + i`) to `2i + h`, so that its RoPE rotates adjacent rows. lpjax's
importer undoes exactly that (`lpjax.interop.gguf_llama.unpermute_rows`),
and lpjax's RoPE (`lpjax.models.decoder.rope`) rotates feature `i` with
feature `i + dh/2` of the same head, at the angle `p · theta^(-2i/dh)`.
transformers' LLaMA applies `x·cos + rotate_half(x)·sin` with
`rotate_half(x) = [−x₂, x₁]` (the two halves of each head) and `cos`, `sin`
of the angles repeated over both halves (`modeling_llama.py`,
`apply_rotary_pos_emb`): the same pairs at the same angles. So lpjax's
kernels already hold the Hugging Face row order, and the exporter only
transposes them (`[in, out]` → `[out, in]`); nothing is permuted.

Everything that can be refused is checked before the output folder is
created (`ExportError`): an `arch` that is not a decoder, layers of
different MLP widths (a `LlamaConfig` has one `intermediate_size`),
variables that do not fit `arch`, an unreadable source or one that is not
the model's (another width, head count or vocabulary), a tokenizer lpjax
does not rebuild, an output folder that exists and is not empty.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from lpjax import arch as arch_lib
from lpjax.export import (
  ExportError,
  output_folder,
  provenance_json,
  save_safetensors,
)
from lpjax.interop import hf_llama as hf_layout

# GGUF token types (llama.cpp's `llama_token_type`): 3 is a control token.
_CONTROL = 3
# `tokenizer.ggml.pre` values whose splitting `tokenizer_json` rebuilds:
# GPT-2's byte-level regex, and SmolLM's (each digit split off first).
_PRE_TOKENIZERS = ('default', 'gpt2', 'smollm')


def write(
  arch: arch_lib.Arch,
  variables: Mapping[str, Any],
  source: str | os.PathLike,
  out: str | os.PathLike,
  *,
  provenance: Mapping[str, Any] | None = None,
) -> pathlib.Path:
  """Writes `(arch, variables)` as a `LlamaForCausalLM` folder `out`.

  Args:
    arch: a decoder (`lpjax.interop.gguf_llama.load_gguf_llama`), possibly
      with layers removed and its weights healed.
    variables: its variables, `{'params': ...}`.
    source: the GGUF file the model was imported from (hyperparameters
      that pruning leaves alone, special tokens, the tokenizer).
    out: a new or empty folder.
    provenance: what to record in the safetensors metadata
      (`lpjax.provenance`, key-sorted JSON): source digest, edits, healing.

  Returns:
    The folder.

  Raises:
    ExportError: before anything is written, for any input that cannot be
      exported (see the module docstring).
  """
  if getattr(arch, 'family', None) != 'decoder':
    raise ExportError(
      f'hf_llama exports decoders (LLaMA); got a '
      f'{getattr(arch, "family", type(arch).__name__)!r} model. Export it '
      'with the writer of its family.'
    )
  path = pathlib.Path(out)
  if path.exists():  # refuse a used folder now, create nothing yet
    output_folder(path)
  widths = sorted({b.widths[0] for b in arch.blocks})
  if len(widths) != 1:
    raise ExportError(
      f'The layers have different MLP widths {widths}; a LlamaConfig has '
      'one intermediate_size. Export a model whose layers were not '
      'shrunk, or shrunk to one width.'
    )
  reader = _open(source)
  meta = _model_meta(reader, source, arch)
  tensors = _tensors(arch, variables)
  tokenizer = _tokenizer(reader, source)
  config = _config(arch, meta, widths[0])
  token_config, special_map = _tokenizer_config(reader, source, meta, tokenizer)
  generation = {
    k: config[k]
    for k in ('bos_token_id', 'eos_token_id', 'pad_token_id')
    if k in config
  }

  folder = output_folder(out)
  save_safetensors(
    tensors,
    folder / 'model.safetensors',
    metadata={
      'format': 'pt',
      'lpjax.provenance': provenance_json(provenance),
    },
  )
  for name, value in (
    ('config.json', config),
    ('generation_config.json', generation),
    ('tokenizer.json', tokenizer),
    ('tokenizer_config.json', token_config),
    ('special_tokens_map.json', special_map),
  ):
    with open(folder / name, 'w', encoding='utf-8') as f:
      json.dump(value, f, indent=2, ensure_ascii=False)
      f.write('\n')
  return folder


def tokenizer_json(source: str | os.PathLike) -> dict[str, Any]:
  """The GGUF file's tokenizer in the `tokenizers` library's JSON format.

  A byte-level BPE model (`tokenizer.ggml.model = 'gpt2'`) with the file's
  vocabulary (`tokenizer.ggml.tokens`, ids in file order) and merges
  (`tokenizer.ggml.merges`, in priority order, verbatim: `"a b"`); the
  ByteLevel pre-tokenizer (GPT-2's regex, no prefix space), preceded for
  `tokenizer.ggml.pre = 'smollm'` by a split of every digit into its own
  piece; the ByteLevel decoder; the control tokens (token type 3) as
  special added tokens, matched whole; and, where the file asks for a BOS
  token (`tokenizer.ggml.add_bos_token`), a post-processor that prepends
  it. This is the tokenizer `lpjax.interop.gguf_llama.GGUFTokenizer`
  builds: `Tokenizer.from_str(json.dumps(tokenizer_json(f))).encode(t).ids`
  equals `GGUFTokenizer(f).encode(t)`.

  Raises:
    ExportError: an unreadable file, a tokenizer other than byte-level BPE,
      a pre-tokenizer other than default, gpt2 or smollm.
  """
  return _tokenizer(_open(source), source)


################################################################################
# Weights.
################################################################################


def _tensors(
  arch: arch_lib.Arch, variables: Mapping[str, Any]
) -> dict[str, np.ndarray]:
  """transformers' name → float32 array, checked against `arch`
  (`lpjax.interop.hf_llama.tensor_layout`: names, paths, shapes)."""
  params = variables.get('params') if isinstance(variables, Mapping) else None
  if not isinstance(params, Mapping):
    raise ExportError(
      "variables must be {'params': ...} as load_gguf_llama returns them; "
      f'got {type(variables).__name__} with keys '
      f'{sorted(variables) if isinstance(variables, Mapping) else "none"}.'
    )
  out: dict[str, np.ndarray] = {}

  def take(path, shape, name, transpose=False):
    node = params
    for key in path:
      if not isinstance(node, Mapping) or key not in node:
        raise ExportError(
          f'variables have no {"/".join(path)}; they do not belong to this '
          'decoder (pass the variables returned with arch).'
        )
      node = node[key]
    value = np.asarray(node, np.float32)
    if transpose:
      value = value.T  # Dense's [in, out] -> Linear's [out, in]
    if value.shape != shape:
      raise ExportError(
        f'{"/".join(path)} has shape {value.shape} (as {name}); the arch '
        f'implies {shape}. Pass the variables returned with arch.'
      )
    out[name] = np.ascontiguousarray(value)

  # The one statement of the key layout, shared with the importer.
  for name, path, shape, transpose in hf_layout.tensor_layout(arch):
    take(path, shape, name, transpose)
  return out


################################################################################
# The source GGUF file: configuration and tokenizer.
################################################################################


def _open(source: str | os.PathLike):
  from lpjax.interop import gguf_llama

  path = pathlib.Path(source)
  try:
    # The importer's reader, cached per file version: the model was read
    # from this file moments ago, and parsing its vocabulary takes seconds.
    return gguf_llama._reader(path)
  except FileNotFoundError:
    raise ExportError(
      f'Source GGUF {str(path)!r} not found; pass the file the model was '
      'imported from.'
    ) from None
  except (gguf_llama.GGUFImportError, OSError) as e:
    raise ExportError(
      f'Source {str(path)!r} is not a readable GGUF file ({e}); pass the '
      'file the model was imported from.'
    ) from None


def _field(reader, source, key, default: Any = ...):
  f = reader.fields.get(key)
  if f is None:
    if default is not ...:
      return default
    raise ExportError(
      f'{source}: metadata {key!r} is missing; pass the GGUF file the model '
      'was imported from.'
    )
  return f.contents()


def _model_meta(reader, source, arch: arch_lib.Arch) -> dict[str, Any]:
  """The source's context length and special ids; checks it is the model's."""
  o = arch.options_dict()
  if _field(reader, source, 'general.architecture') != 'llama':
    raise ExportError(
      f'{source} is not a LLaMA GGUF file; pass the file the model was '
      'imported from.'
    )
  tokens = _field(reader, source, 'tokenizer.ggml.tokens')
  tied = not any(t.name == 'output.weight' for t in reader.tensors)
  have = {
    'width': int(_field(reader, source, 'llama.embedding_length')),
    'heads': int(_field(reader, source, 'llama.attention.head_count')),
    'vocab': len(tokens),
    'tied': tied,
  }
  have['kv_heads'] = int(
    _field(reader, source, 'llama.attention.head_count_kv', have['heads'])
  )
  depth = int(_field(reader, source, 'llama.block_count'))
  wrong = {k: (v, o[k]) for k, v in have.items() if o[k] != v}
  last = max(b.index for b in arch.blocks)
  if last >= depth:
    wrong['depth'] = (depth, f'a layer {last}')
  if wrong:
    raise ExportError(
      f'{source} is not the file this model was imported from: (file, '
      f'model) {wrong}. Pass the GGUF file load_gguf_llama read.'
    )
  meta = {
    'context_length': int(_field(reader, source, 'llama.context_length')),
  }
  for key in ('bos', 'eos', 'padding', 'unknown'):
    value = _field(reader, source, f'tokenizer.ggml.{key}_token_id', None)
    if value is not None:
      meta[key] = int(value)
  return meta


def _config(
  arch: arch_lib.Arch, meta: Mapping[str, Any], mlp: int
) -> dict[str, Any]:
  """config.json: `LlamaConfig`'s fields (transformers'
  `configuration_llama.py`)."""
  o = arch.options_dict()
  config = {
    'architectures': ['LlamaForCausalLM'],
    'model_type': 'llama',
    'vocab_size': o['vocab'],
    'hidden_size': o['width'],
    'intermediate_size': int(mlp),
    'num_hidden_layers': len(arch.blocks),
    'num_attention_heads': o['heads'],
    'num_key_value_heads': o['kv_heads'],
    'head_dim': o['width'] // o['heads'],
    'hidden_act': 'silu',
    'max_position_embeddings': meta['context_length'],
    # GGUF stores epsilon in float32 (1e-5 reads 9.99999975e-06); the
    # shortest decimal of that float32 names the same number, which the
    # float32 RMSNorm rounds it to.
    'rms_norm_eps': float(str(np.float32(o['eps']))),
    'rope_theta': float(o['rope_theta']),
    'rope_scaling': None,
    'attention_bias': False,
    'attention_dropout': 0.0,
    'mlp_bias': False,
    'tie_word_embeddings': bool(o['tied']),
    'torch_dtype': 'float32',
    'use_cache': True,
  }
  for ours, theirs in (
    ('bos', 'bos_token_id'),
    ('eos', 'eos_token_id'),
    ('padding', 'pad_token_id'),
  ):
    if ours in meta:
      config[theirs] = meta[ours]
  return config


def _tokenizer(reader, source) -> dict[str, Any]:
  """`tokenizer_json` of a parsed file."""
  kind = _field(reader, source, 'tokenizer.ggml.model')
  if kind != 'gpt2':
    raise ExportError(
      f'{source}: tokenizer model {kind!r}; only byte-level BPE (gpt2) is '
      'exported.'
    )
  pre = _field(reader, source, 'tokenizer.ggml.pre', 'default')
  if pre not in _PRE_TOKENIZERS:
    raise ExportError(
      f'{source}: pre-tokenizer {pre!r} is not supported '
      f'({", ".join(_PRE_TOKENIZERS)}); its splitting rules differ from '
      "GPT-2's."
    )
  tokens = [str(t) for t in _field(reader, source, 'tokenizer.ggml.tokens')]
  merges = [str(m) for m in _field(reader, source, 'tokenizer.ggml.merges')]
  bad = [m for m in merges if m.count(' ') != 1]
  if bad:
    raise ExportError(
      f'{source}: merges {bad[:3]} are not two tokens separated by one '
      'space; the file is damaged.'
    )
  types = list(
    _field(reader, source, 'tokenizer.ggml.token_type', [1] * len(tokens))
  )
  # A token listed twice keeps its last id (as a dict built in file order,
  # GGUFTokenizer's vocabulary, does).
  vocab = {t: i for i, t in enumerate(tokens)}
  added = [
    {
      'id': vocab[t],
      'content': t,
      'single_word': False,
      'lstrip': False,
      'rstrip': False,
      'normalized': False,
      'special': True,
    }
    for t, k in zip(tokens, types)
    if int(k) == _CONTROL
  ]
  byte_level = {
    'type': 'ByteLevel',
    'add_prefix_space': False,
    'trim_offsets': True,
    'use_regex': True,
  }
  steps = [byte_level]
  if pre == 'smollm':
    steps.insert(0, {'type': 'Digits', 'individual_digits': True})
  post = None
  if bool(_field(reader, source, 'tokenizer.ggml.add_bos_token', False)):
    bos_id = int(_field(reader, source, 'tokenizer.ggml.bos_token_id', 1))
    if not 0 <= bos_id < len(tokens):
      raise ExportError(
        f'{source}: tokenizer.ggml.bos_token_id {bos_id} is outside the '
        f'vocabulary of {len(tokens)}; the file is damaged.'
      )
    bos = tokens[bos_id]
    post = {
      'type': 'TemplateProcessing',
      'single': [
        {'SpecialToken': {'id': bos, 'type_id': 0}},
        {'Sequence': {'id': 'A', 'type_id': 0}},
      ],
      'pair': [
        {'SpecialToken': {'id': bos, 'type_id': 0}},
        {'Sequence': {'id': 'A', 'type_id': 0}},
        {'SpecialToken': {'id': bos, 'type_id': 1}},
        {'Sequence': {'id': 'B', 'type_id': 1}},
      ],
      'special_tokens': {bos: {'id': bos, 'ids': [bos_id], 'tokens': [bos]}},
    }
  return {
    'version': '1.0',
    'truncation': None,
    'padding': None,
    'added_tokens': added,
    'normalizer': None,
    'pre_tokenizer': {'type': 'Sequence', 'pretokenizers': steps},
    'post_processor': post,
    'decoder': dict(byte_level),
    'model': {
      'type': 'BPE',
      'dropout': None,
      'unk_token': None,
      'continuing_subword_prefix': None,
      'end_of_word_suffix': None,
      'fuse_unk': False,
      'byte_fallback': False,
      'ignore_merges': False,
      'vocab': vocab,
      'merges': merges,
    },
  }


def _tokenizer_config(
  reader, source, meta: Mapping[str, Any], tokenizer: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, str]]:
  """tokenizer_config.json and special_tokens_map.json."""
  tokens = _field(reader, source, 'tokenizer.ggml.tokens')
  special = {}
  for ours, theirs in (
    ('bos', 'bos_token'),
    ('eos', 'eos_token'),
    ('padding', 'pad_token'),
    ('unknown', 'unk_token'),
  ):
    i = _field(reader, source, f'tokenizer.ggml.{ours}_token_id', None)
    if i is not None:
      if not 0 <= int(i) < len(tokens):
        raise ExportError(
          f'{source}: tokenizer.ggml.{ours}_token_id {int(i)} is outside the '
          f'vocabulary of {len(tokens)}; the file is damaged.'
        )
      special[theirs] = str(tokens[int(i)])
  config: dict[str, Any] = {
    # The generic fast tokenizer runs tokenizer.json as written;
    # GPT2Tokenizer would rebuild the pre-tokenizer without SmolLM's digit
    # rule.
    'tokenizer_class': 'PreTrainedTokenizerFast',
    # A causal LM takes no token_type_ids (the generic class's default
    # inputs include them, and generate() refuses them).
    'model_input_names': ['input_ids', 'attention_mask'],
    **special,
    'model_max_length': meta['context_length'],
    'clean_up_tokenization_spaces': False,
    'added_tokens_decoder': {
      str(t['id']): {
        k: t[k]
        for k in (
          'content',
          'lstrip',
          'normalized',
          'rstrip',
          'single_word',
          'special',
        )
      }
      for t in tokenizer['added_tokens']
    },
  }
  template = _field(reader, source, 'tokenizer.chat_template', None)
  if template is not None:
    config['chat_template'] = str(template)
  return config, special


__all__ = ['tokenizer_json', 'write']
