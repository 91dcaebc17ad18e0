"""A (pruned, healed) decoder written back out as a llama.cpp GGUF file.

`write(arch, variables, source, out)` writes the decoder lpjax imported from
the LLaMA GGUF file `source` (`lpjax.interop.gguf_llama.load_gguf_llama`),
after any layer removal, MLP-width shrink and healing, as a new GGUF file
llama.cpp runs, with the `gguf` package's writer and quantiser:

* tensors: the importer's mapping read backwards (`token_embd.weight`,
  `blk.{i}.attn_norm/attn_q/attn_k/attn_v/attn_output/ffn_norm/ffn_gate/
  ffn_up/ffn_down.weight`, `output_norm.weight`, and `output.weight` if the
  model has its own output matrix), the remaining layers renumbered
  `blk.0`, `blk.1`, ... in network order; Dense kernels `[in, out]` go back
  to GGUF's `[out, in]` rows, and the query/key rows back to llama.cpp's
  interleaved order (`permute_rows`, the exact inverse of the importer's
  `unpermute_rows`);
* metadata: every key of `source` that still holds is copied with its type
  (tokenizer vocabulary, scores, token types, merges, special token ids,
  chat template, RoPE base, norm epsilon, head counts, context length,
  licence, ...); `llama.block_count` becomes the remaining layer count,
  `llama.feed_forward_length` the (possibly shrunk) MLP width,
  `general.name` says what was removed, `general.file_type` and
  `general.size_label` describe the new file; the source's quantisation
  record (`quantize.*`: imatrix file, dataset) and split keys (`split.*`)
  no longer hold and are dropped; `lpjax.provenance` holds the provenance
  as JSON (`lpjax.export.provenance_json`).

Tensor types (`dtype`), the rule of llama.cpp's converter
(`convert_hf_to_gguf.py`, `ModelBase.prepare_tensors`): a tensor with at
most one dimension, or whose name ends in `_norm.weight`, is stored F32
whatever the file type (llama.cpp's kernels for 1-D tensors and norms
take F32); every other tensor takes the file type: F32, F16, or Q8_0
through `gguf.quants.quantize`. A tensor that Q8_0 cannot
hold (its row length, GGUF's first dimension, is not a multiple of the
32-value block: `gguf.quants.QuantError`) falls back to F16, as the
converter does on that error. `general.file_type` is `ALL_F32` (0),
`MOSTLY_F16` (1) or `MOSTLY_Q8_0` (7) (`gguf.LlamaFileType`; "MOSTLY":
1-D tensors excepted).

Quantisation error per element `x` (what `lpjax.interop.gguf_llama` reads
back): F16 rounds to the nearest half-precision value, `|Δ| ≤ 2⁻¹¹ |x|`
(`≤ 2⁻²⁵` below F16's smallest normal, 2⁻¹⁴); Q8_0 stores each row's
blocks of 32 as `d · q`, `d = absmax / 127` rounded to F16, `q` integers
in [−127, 127], so `|Δ| ≤ d/2 + 127 |d − d₁₆|`, about
`absmax · (1/254 + 2⁻¹¹)`.

Every check runs before any output exists; a refusal raises `ExportError`:
a model of another family, an unknown `dtype`, an existing `out`, a
`source` that is not a readable GGUF file or not the file the model came
from (other width, heads, vocabulary, norm epsilon, RoPE base, output
matrix, or more layers), variables that do not fit the arch, non-finite
weights, F16 weights beyond F16's range, or layers of different MLP widths
(GGUF's LLaMA keeps one `feed_forward_length`). The file is written under
a temporary name beside `out` and renamed into place when complete.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import gguf
import numpy as np
from absl import logging

from lpjax import arch as arch_lib
from lpjax.export import ExportError, output_file, provenance_json

DTYPES = ('F32', 'F16', 'Q8_0')
PROVENANCE_KEY = 'lpjax.provenance'
ARCHITECTURE = 'llama'
# Reader pseudo-keys (`GGUF.version`, ...), the split of a sharded file and
# the record of how the source was quantised describe the source file only.
_DROPPED_PREFIXES = ('GGUF.', 'split.', 'quantize.')
_F16_MAX = float(np.finfo(np.float16).max)
_FILE_TYPES = {
  'F32': gguf.LlamaFileType.ALL_F32,
  'F16': gguf.LlamaFileType.MOSTLY_F16,
  'Q8_0': gguf.LlamaFileType.MOSTLY_Q8_0,
}


def permute_rows(w: np.ndarray, heads: int) -> np.ndarray:
  """llama.cpp's query/key row order from the Hugging Face one: `[out, in]`.

  Within each head of `dh` rows, row `h·dh/2 + i` (half `h`, feature `i`)
  moves to row `2i + h`: the inverse of
  `lpjax.interop.gguf_llama.unpermute_rows` (and the row order llama.cpp's
  converter writes).
  """
  out, inp = w.shape
  return (
    w.reshape(heads, 2, out // heads // 2, inp).swapaxes(1, 2).reshape(out, inp)
  )


def ggml_type(name: str, shape: Sequence[int], dtype: str):
  """The GGML type llama.cpp's converter stores tensor `name` as.

  `shape` is NumPy's (`[out, in]`; the last axis is GGUF's row). 1-D
  tensors and `*_norm.weight` stay F32; Q8_0 rows that are not whole
  32-value blocks fall back to F16 (module docstring).
  """
  t = gguf.GGMLQuantizationType
  if len(shape) <= 1 or name.endswith('_norm.weight') or dtype == 'F32':
    return t.F32
  if dtype == 'F16':
    return t.F16
  block = gguf.GGML_QUANT_SIZES[t.Q8_0][0]
  return t.Q8_0 if shape[-1] % block == 0 else t.F16


def encode_tensor(name: str, value: np.ndarray, dtype: str):
  """`(data, ggml_type)`: `value` (float32, NumPy layout) as GGUF stores it.

  Quantised with `gguf.quants.quantize`; a `QuantError` (a row Q8_0 cannot
  block) falls back to F16, as llama.cpp's converter does.
  """
  value = np.ascontiguousarray(value, np.float32)
  qtype = ggml_type(name, value.shape, dtype)
  try:
    data = gguf.quants.quantize(value, qtype)
  except gguf.QuantError as e:
    logging.warning('%s: %s; stored as F16.', name, e)
    qtype = gguf.GGMLQuantizationType.F16
    data = gguf.quants.quantize(value, qtype)
  return data, qtype


def write(
  arch: arch_lib.Arch,
  variables: Mapping[str, Any],
  source: str | os.PathLike,
  out: str | os.PathLike,
  *,
  dtype: str = 'F32',
  provenance: Mapping[str, Any] | None = None,
  name: str | None = None,
) -> pathlib.Path:
  """Writes decoder `(arch, variables)` as the GGUF file `out`.

  Args:
    arch: a decoder (family `'decoder'`) imported from `source`, possibly
      pruned (layers removed, MLP widths shrunk) and healed.
    variables: its `{'params': ...}`.
    source: the GGUF file the model was imported from; its metadata and
      tokenizer are copied.
    out: the new `.gguf` file (must not exist; its folder is created).
    dtype: `'F32'`, `'F16'` or `'Q8_0'` (norms and 1-D tensors stay F32).
    provenance: stored as JSON under `lpjax.provenance`.
    name: the model's name in `general.name` (default: the source's
      `general.name`, else its file name); what was removed is appended
      (`"SmolLM2, layers 3, 7 removed"`).

  Returns:
    `out`.

  Raises:
    ExportError: see the module docstring; raised before `out` exists.
  """
  if dtype not in DTYPES:
    raise ExportError(
      f'Unknown GGUF dtype {dtype!r}; valid: {", ".join(DTYPES)}.'
    )
  if getattr(arch, 'family', None) != 'decoder':
    raise ExportError(
      f'GGUF export writes decoders (LLaMA language models); this model is '
      f'of the {getattr(arch, "family", type(arch).__name__)!r} family: '
      'export it in its own format.'
    )
  if pathlib.Path(out).exists():
    output_file(out)  # refuses: lpjax does not overwrite
  mlp = _mlp_width(arch)
  tensors = _float_tensors(arch, variables, dtype)
  source = pathlib.Path(source)
  reader = _source_reader(source)
  src = _check_source(reader, source, arch)
  out = output_file(out)

  kept = [b.index for b in arch.blocks]
  removed = sorted(set(range(src['depth'])) - set(kept))
  base = name or src['name'] or source.stem
  model_name = _describe(base, removed, mlp, src['mlp'])
  encoded = [(n, *encode_tensor(n, v, dtype)) for n, v in tensors]
  params = sum(int(v.size) for _, v in tensors)
  overrides = {
    'general.name': (model_name, gguf.GGUFValueType.STRING),
    f'{ARCHITECTURE}.block_count': (len(kept), src['count_type']),
    f'{ARCHITECTURE}.feed_forward_length': (mlp, src['mlp_type']),
    'general.file_type': (
      int(_FILE_TYPES[dtype]),
      gguf.GGUFValueType.UINT32,
    ),
    'general.size_label': (
      gguf.size_label(params, params, 0, 0),
      gguf.GGUFValueType.STRING,
    ),
    'general.quantization_version': (
      gguf.GGML_QUANT_VERSION,
      gguf.GGUFValueType.UINT32,
    ),
    PROVENANCE_KEY: (provenance_json(provenance), gguf.GGUFValueType.STRING),
  }
  tmp = out.with_name(f'.{out.name}.{os.getpid()}.tmp')
  writer = gguf.GGUFWriter(tmp, ARCHITECTURE)
  try:
    _copy_metadata(writer, reader, overrides)
    for tensor_name, data, qtype in encoded:
      writer.add_tensor(tensor_name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, out)
  except BaseException as e:
    writer.close()
    tmp.unlink(missing_ok=True)
    if isinstance(e, OSError):
      raise ExportError(
        f'Cannot write {out}: {e.strerror or e}; free space or choose '
        'another --out.'
      ) from None
    raise
  logging.info(
    'Wrote %s (%s, %d layers, %s).', out, dtype, len(kept), model_name
  )
  return out


def _source_reader(source: pathlib.Path):
  # The importer's reader, cached per file version: the model was most
  # likely just imported from this file, whose metadata takes seconds to
  # parse.
  from lpjax.interop import gguf_llama

  try:
    return gguf_llama._reader(source)
  except (FileNotFoundError, gguf_llama.GGUFImportError) as e:
    raise ExportError(
      f'source {source}: {e}. Pass the GGUF file the model was imported from.'
    ) from None


def _field(reader, key, default=None):
  f = reader.fields.get(key)
  return default if f is None else f.contents()


def _check_source(reader, source, arch) -> dict[str, Any]:
  """What the writer needs from `source`, after checking that `arch` came
  from it (the importer's reading of the same keys)."""

  def fail(what, theirs, ours):
    raise ExportError(
      f'source {source} is not the GGUF file this model was imported from: '
      f"its {what} is {theirs!r}, the model's {ours!r}. Pass the model's "
      'own GGUF file.'
    )

  kind = _field(reader, 'general.architecture')
  if kind != ARCHITECTURE:
    fail('general.architecture', kind, ARCHITECTURE)
  keys = {
    'depth': 'block_count',
    'width': 'embedding_length',
    'heads': 'attention.head_count',
    'mlp': 'feed_forward_length',
    'eps': 'attention.layer_norm_rms_epsilon',
  }
  meta = {k: _field(reader, f'{ARCHITECTURE}.{key}') for k, key in keys.items()}
  meta['kv_heads'] = _field(
    reader, f'{ARCHITECTURE}.attention.head_count_kv', meta['heads']
  )
  meta['theta'] = _field(reader, f'{ARCHITECTURE}.rope.freq_base', 10000.0)
  tensors = {t.name: t for t in reader.tensors}
  bad = [k for k, v in meta.items() if not isinstance(v, (int, float))]
  if bad or 'token_embd.weight' not in tensors:
    raise ExportError(
      f'source {source} lacks single values for {bad} or token_embd.weight: '
      'it is not a LLaMA file lpjax imports. Pass the GGUF file the model '
      'was imported from.'
    )
  o = arch.options_dict()
  checks = (
    ('vocabulary', int(tensors['token_embd.weight'].shape[1]), o['vocab']),
    ('embedding_length', int(meta['width']), o['width']),
    ('attention.head_count', int(meta['heads']), o['heads']),
    ('attention.head_count_kv', int(meta['kv_heads']), o['kv_heads']),
    ('norm epsilon', float(meta['eps']), o['eps']),
    ('rope.freq_base', float(meta['theta']), o['rope_theta']),
    ('output (tied)', 'output.weight' not in tensors, o['tied']),
  )
  for what, theirs, ours in checks:
    if theirs != ours:
      fail(what, theirs, ours)
  deepest = max(b.index for b in arch.blocks)
  if deepest >= int(meta['depth']):
    fail('block_count', int(meta['depth']), f'layer index {deepest}')
  widest = max(b.widths[0] for b in arch.blocks)
  if widest > int(meta['mlp']):
    fail('feed_forward_length', int(meta['mlp']), f'MLP width {widest}')
  return {
    'depth': int(meta['depth']),
    'mlp': int(meta['mlp']),
    'name': _field(reader, 'general.name'),
    'count_type': reader.fields[f'{ARCHITECTURE}.block_count'].types[0],
    'mlp_type': reader.fields[f'{ARCHITECTURE}.feed_forward_length'].types[0],
  }


def _mlp_width(arch) -> int:
  widths = sorted({b.widths[0] for b in arch.blocks})
  if len(widths) != 1:
    raise ExportError(
      f'The layers have MLP widths {widths}; a LLaMA GGUF file holds one '
      'feed_forward_length. Shrink every layer to the same width to export.'
    )
  return widths[0]


def _float_tensors(arch, variables, dtype) -> list[tuple[str, np.ndarray]]:
  """Every GGUF tensor of the model as float32 in NumPy layout, in file
  order; `ExportError` for missing or misshapen parameters, non-finite
  values, or values F16 cannot hold."""
  o = arch.options_dict()
  d, vocab = o['width'], o['vocab']
  heads, kv_heads = o['heads'], o['kv_heads']
  kv = kv_heads * (d // heads)
  params = variables.get('params') if isinstance(variables, Mapping) else None
  if not isinstance(params, Mapping):
    raise ExportError(
      "variables must be {'params': ...} of the decoder; got "
      f'{type(variables).__name__} without params.'
    )

  def get(path, shape):
    node = params
    for key in path:
      if not isinstance(node, Mapping) or key not in node:
        raise ExportError(
          f'variables lack params/{"/".join(path)}: they do not belong to '
          'this arch (pass the variables surgery returned with it).'
        )
      node = node[key]
    value = np.asarray(node, np.float32)
    if value.shape != shape:
      raise ExportError(
        f'params/{"/".join(path)} has shape {value.shape}; the arch implies '
        f'{shape}: the variables do not belong to this arch.'
      )
    return value

  out = [('token_embd.weight', get(('tok_embed', 'embedding'), (vocab, d)))]
  for i, block in enumerate(arch.blocks):
    b, L, m = f'blk.{i}', block.name, block.widths[0]
    q = get((L, 'q', 'kernel'), (d, d)).T
    k = get((L, 'k', 'kernel'), (d, kv)).T
    out += [
      (f'{b}.attn_norm.weight', get((L, 'attn_norm', 'scale'), (d,))),
      (f'{b}.attn_q.weight', permute_rows(q, heads)),
      (f'{b}.attn_k.weight', permute_rows(k, kv_heads)),
      (f'{b}.attn_v.weight', get((L, 'v', 'kernel'), (d, kv)).T),
      (f'{b}.attn_output.weight', get((L, 'o', 'kernel'), (d, d)).T),
      (f'{b}.ffn_norm.weight', get((L, 'mlp_norm', 'scale'), (d,))),
      (f'{b}.ffn_gate.weight', get((L, 'gate', 'kernel'), (d, m)).T),
      (f'{b}.ffn_up.weight', get((L, 'up', 'kernel'), (d, m)).T),
      (f'{b}.ffn_down.weight', get((L, 'down', 'kernel'), (m, d)).T),
    ]
  out.append(('output_norm.weight', get(('norm', 'scale'), (d,))))
  if not o['tied']:
    out.append(('output.weight', get(('lm_head', 'kernel'), (d, vocab)).T))
  for tensor_name, value in out:
    if not np.all(np.isfinite(value)):
      raise ExportError(
        f'{tensor_name} holds non-finite values (NaN or inf): the model is '
        'broken (heal with a lower learning rate); nothing was written.'
      )
    if (
      ggml_type(tensor_name, value.shape, dtype).name == 'F16'
      and np.abs(value).max() > _F16_MAX
    ):
      raise ExportError(
        f"{tensor_name} holds values beyond F16's range (±{_F16_MAX:g}); "
        "export it with dtype='F32' or 'Q8_0'."
      )
  return [(n, np.ascontiguousarray(v)) for n, v in out]


def _describe(base: str, removed: list[int], mlp: int, source_mlp: int) -> str:
  """`base` and what was removed (source layer numbers, runs of three or
  more as ranges): `"X, layers 1-12, 14, 15 removed, MLP width 1000 of
  1536"`."""
  runs: list[list[int]] = []
  for i in removed:
    if runs and i == runs[-1][-1] + 1:
      runs[-1].append(i)
    else:
      runs.append([i])
  words = []
  for run in runs:
    if len(run) >= 3:
      words.append(f'{run[0]}-{run[-1]}')
    else:
      words += [str(i) for i in run]
  parts = [base]
  if removed:
    noun = 'layer' if len(removed) == 1 else 'layers'
    parts.append(f'{noun} {", ".join(words)} removed')
  if mlp != source_mlp:
    parts.append(f'MLP width {mlp} of {source_mlp}')
  return ', '.join(parts)


def _copy_metadata(writer, reader, overrides) -> None:
  """Every key of `reader` that still holds, with its type, then the new
  ones; `overrides` replace a key's value in place or are appended."""
  array = gguf.GGUFValueType.ARRAY
  done = set()
  for key, field in reader.fields.items():
    if key.startswith(_DROPPED_PREFIXES) or key == 'general.architecture':
      continue
    if key in overrides:
      value, vtype = overrides[key]
      writer.add_key_value(key, value, vtype)
      done.add(key)
      continue
    types = list(field.types)
    if not types:
      continue
    if types[0] == array:
      if len(types) != 2 or types[1] == array:
        logging.warning('Metadata %s (nested arrays) is not copied.', key)
        continue
      value = field.contents()
      if not value:
        logging.warning('Metadata %s (an empty array) is not copied.', key)
        continue
      writer.add_key_value(key, list(value), array, sub_type=types[1])
    else:
      writer.add_key_value(key, field.contents(), types[0])
  for key, (value, vtype) in overrides.items():
    if key not in done:
      writer.add_key_value(key, value, vtype)


__all__ = [
  'DTYPES',
  'PROVENANCE_KEY',
  'encode_tensor',
  'ggml_type',
  'permute_rows',
  'write',
]
