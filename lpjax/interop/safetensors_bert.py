"""BERT-style sentence encoders from safetensors files, e.g. all-MiniLM-L6-v2.

`load_bert(folder)` reads a Hugging Face BERT checkpoint folder
(`config.json` + `model.safetensors`, read with `safetensors`' NumPy API:
no torch) into an `Arch` of the `encoder` family (`input='tokens'`,
`norm='post'`, exact GELU, masked mean pooling, no head) and its variables.
`BertTokenizer` wraps the folder's `tokenizer.json` (the `tokenizers`
library) to give padded id arrays whose padding the model masks (id 0).
The sentence embeddings sentence-transformers computes for this model are
`lpjax.models.encoder.sentence_embeddings`.

Every tensor of the checkpoint is either mapped or named in `_IGNORED`
(the pooler, which sentence embeddings do not use); a BertForX checkpoint's
`bert.` prefix is dropped and its task heads are left out. A missing,
unexpected or misshapen tensor raises `BertImportError` naming it.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lpjax import arch as arch_lib
from lpjax import errors
from lpjax.models import encoder as encoder_lib

# Tensors a BERT checkpoint may hold that a sentence encoder does not use.
_IGNORED = (
  'embeddings.position_ids',
  'pooler.dense.weight',
  'pooler.dense.bias',
)


class BertImportError(errors.UserError, ValueError):
  """A BERT checkpoint lpjax cannot read, naming the file and the problem."""


def _read_json(path: pathlib.Path) -> dict[str, Any]:
  try:
    return json.loads(path.read_text())
  except FileNotFoundError:
    raise BertImportError(f'{path} is missing.') from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise BertImportError(f'{path} is not valid JSON: {e}') from None


# Task heads of BertForX checkpoints, which a sentence encoder does not use.
_HEADS = ('cls.', 'classifier.', 'qa_outputs.')


def _strip_prefix(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The encoder's tensors under BertModel names: a BertForX checkpoint's
  `bert.` prefix dropped and its task heads (`_HEADS`) left out."""
  if any(k.startswith('bert.') for k in tensors):
    return {
      (k[len('bert.') :] if k.startswith('bert.') else k): v
      for k, v in tensors.items()
      if not k.startswith(_HEADS)
    }
  return tensors


def _layer_map(i: int) -> dict[str, tuple[str, ...]]:
  src = f'encoder.layer.{i}'
  dst = encoder_lib.layer_name(i)
  out = {}
  for hf, ours in (
    ('attention.self.query', 'query'),
    ('attention.self.key', 'key'),
    ('attention.self.value', 'value'),
    ('attention.output.dense', 'out'),
    ('intermediate.dense', 'fc1'),
    ('output.dense', 'fc2'),
  ):
    out[f'{src}.{hf}.weight'] = (dst, ours, 'kernel')
    out[f'{src}.{hf}.bias'] = (dst, ours, 'bias')
  for hf, ours in (
    ('attention.output.LayerNorm', 'ln1'),
    ('output.LayerNorm', 'ln2'),
  ):
    out[f'{src}.{hf}.weight'] = (dst, ours, 'scale')
    out[f'{src}.{hf}.bias'] = (dst, ours, 'bias')
  return out


def _set(tree: dict, path: tuple[str, ...], value: np.ndarray) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def load_bert(
  folder: str | pathlib.Path,
  *,
  seq_len: int = 128,
  min_blocks_per_stage: int = 1,
) -> tuple[arch_lib.Arch, dict[str, Any]]:
  """A BERT checkpoint folder as `(arch, variables)` of the encoder family.

  Args:
    folder: holds `config.json` and `model.safetensors`.
    seq_len: the sequence length FLOPs are counted at by default.
    min_blocks_per_stage: the fewest layers pruning may leave.

  Returns:
    The unpruned `Arch` (`layer00`, ...) and `{'params': ...}` in float32.

  Raises:
    BertImportError: a missing file, a configuration lpjax does not build
      (non-GELU activation, relative positions), or a tensor that is
      missing, unexpected or of the wrong shape.
  """
  from safetensors import SafetensorError
  from safetensors.numpy import load_file

  folder = pathlib.Path(folder)
  cfg = _read_json(folder / 'config.json')
  try:
    d, depth = int(cfg['hidden_size']), int(cfg['num_hidden_layers'])
    heads, mlp = int(cfg['num_attention_heads']), int(cfg['intermediate_size'])
    vocab, max_len = int(cfg['vocab_size']), int(cfg['max_position_embeddings'])
    type_vocab = int(cfg.get('type_vocab_size', 2))
    eps = float(cfg.get('layer_norm_eps', 1e-12))
    pad_id = int(cfg.get('pad_token_id', 0))
  except (KeyError, TypeError, ValueError) as e:
    raise BertImportError(
      f'{folder / "config.json"} lacks or mangles a BERT field: {e!r}.'
    ) from None
  act = {'gelu': 'gelu', 'gelu_new': 'gelu_tanh'}.get(cfg.get('hidden_act'))
  if act is None:
    raise BertImportError(
      f'hidden_act={cfg.get("hidden_act")!r} is not supported (gelu, gelu_new).'
    )
  if cfg.get('position_embedding_type', 'absolute') != 'absolute':
    raise BertImportError('Only absolute position embeddings are supported.')
  arch = encoder_lib.encoder(
    input='tokens',
    width=d,
    depth=depth,
    heads=heads,
    mlp=mlp,
    norm='post',
    pool='mean',
    activation=act,
    eps=eps,
    vocab=vocab,
    max_len=max_len,
    type_vocab=type_vocab,
    pad_id=pad_id,
    seq_len=seq_len,
    head=False,
    min_blocks_per_stage=min_blocks_per_stage,
  )
  path = folder / 'model.safetensors'
  try:
    tensors = _strip_prefix(load_file(str(path)))
  except FileNotFoundError:
    raise BertImportError(f'{path} is missing.') from None
  except (SafetensorError, OSError, ValueError) as e:
    raise BertImportError(
      f'{path} is not a readable safetensors file: {e}'
    ) from None

  mapping = {
    'embeddings.word_embeddings.weight': ('tok_embed', 'embedding'),
    'embeddings.position_embeddings.weight': ('pos_embed',),
    'embeddings.token_type_embeddings.weight': ('type_embed',),
    'embeddings.LayerNorm.weight': ('embed_ln', 'scale'),
    'embeddings.LayerNorm.bias': ('embed_ln', 'bias'),
  }
  for i in range(depth):
    mapping.update(_layer_map(i))
  # Old checkpoints name LayerNorm parameters gamma / beta.
  tensors = {
    k.replace('LayerNorm.gamma', 'LayerNorm.weight').replace(
      'LayerNorm.beta', 'LayerNorm.bias'
    ): v
    for k, v in tensors.items()
  }
  missing = sorted(set(mapping) - set(tensors))
  unexpected = sorted(set(tensors) - set(mapping) - set(_IGNORED))
  if missing or unexpected:
    raise BertImportError(
      f'{path} does not match a {depth}-layer BERT: missing '
      f'{missing[:8]}{"..." if len(missing) > 8 else ""}, unexpected '
      f'{unexpected[:8]}{"..." if len(unexpected) > 8 else ""}.'
    )
  from lpjax import models

  want = models.variable_shapes(arch, (seq_len,))['params']
  params: dict[str, Any] = {}
  for name, dst in mapping.items():
    value = np.asarray(tensors[name], np.float32)
    if dst[-1] == 'kernel':
      value = value.T  # torch Linear stores [out, in]
    shape = _shape_at(want, dst)
    if value.shape != shape:
      raise BertImportError(
        f'{path}: {name} has shape {tensors[name].shape}; a BERT with '
        f"config.json's sizes needs {shape} (after transposing kernels)."
      )
    _set(params, dst, value)
  return arch, {'params': jax.tree.map(jnp.asarray, params)}


def _shape_at(tree: Any, path: tuple[str, ...]) -> tuple[int, ...]:
  for key in path:
    tree = tree[key]
  return tuple(tree.shape)


class BertTokenizer:
  """A BERT WordPiece tokenizer from `tokenizer.json`, padded id arrays.

  Attributes:
    max_length: inputs are truncated to this many tokens ([CLS] and [SEP]
      included): sentence-transformers' `max_seq_length` for the folder
      (`sentence_bert_config.json`), else 512.
    pad_id: the padding id (the model masks it).
  """

  def __init__(self, folder: str | pathlib.Path, max_length: int | None = None):
    from tokenizers import Tokenizer

    folder = pathlib.Path(folder)
    path = folder / 'tokenizer.json'
    try:
      self._tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises its own Exception type
      raise BertImportError(f'{path}: cannot read the tokenizer: {e}') from None
    if max_length is None:
      st = folder / 'sentence_bert_config.json'
      max_length = (
        int(_read_json(st).get('max_seq_length', 512)) if st.exists() else 512
      )
    self.max_length = int(max_length)
    cfg = folder / 'config.json'
    self.pad_id = (
      int(_read_json(cfg).get('pad_token_id', 0)) if cfg.exists() else 0
    )
    pad = self._tok.id_to_token(self.pad_id)
    if pad is None:
      raise BertImportError(
        f'{path}: the padding id {self.pad_id} (config.json) is not in the '
        'vocabulary.'
      )
    self._tok.no_padding()

  def encode(
    self, texts: Sequence[str], *, length: int | None = None
  ) -> np.ndarray:
    """Token ids `[len(texts), L]` int32, padded with `pad_id`.

    Texts longer than `max_length` (or `length`) tokens are truncated by the
    tokenizer, which keeps the final [SEP], as sentence-transformers does.

    Args:
      texts: sentences.
      length: exactly this many tokens per row (at most `max_length`);
        default the longest encoding.
    """
    if isinstance(texts, str):
      raise TypeError('encode takes a sequence of strings, not one string.')
    limit = self.max_length if length is None else int(length)
    if not 2 <= limit <= self.max_length:
      raise ValueError(
        f'length must be in [2, {self.max_length}] ([CLS] and [SEP] '
        f'included); got {length}.'
      )
    self._tok.enable_truncation(limit)
    encs = [e.ids for e in self._tok.encode_batch(list(texts))]
    size = length or max((len(e) for e in encs), default=0)
    out = np.full((len(encs), size), self.pad_id, np.int32)
    for row, ids in zip(out, encs):
      row[: len(ids)] = ids
    return out
