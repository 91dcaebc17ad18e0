"""LLaMA-style language models from GGUF files, e.g. SmolLM2-135M.

`load_gguf_llama(path)` reads a GGUF file (llama.cpp's format) with the
`gguf` package's reader and NumPy dequantisers (no llama.cpp, no torch) into
an `Arch` of the `decoder` family and float32 (or bfloat16) variables. Quantised tensors
(Q4_0, Q4_1, Q8_0, K-quants, ...) are dequantised exactly as the format
defines; the model then runs in float32, so it equals the dequantised model
any other float32 runtime would run, not llama.cpp's quantised kernels.

llama.cpp's converter reorders the rows of the query and key projections so
that its RoPE can rotate adjacent feature pairs; the Hugging Face layout
(and `lpjax.models.decoder.rope`) rotates the two halves of each head. The
importer undoes the reorder, which leaves every attention score unchanged.

`GGUFTokenizer` rebuilds the file's byte-level BPE tokenizer
(`tokenizer.ggml.model = 'gpt2'`: vocabulary and merges from the file) with
the `tokenizers` library.
"""

from __future__ import annotations

import functools
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lpjax import arch as arch_lib
from lpjax import errors
from lpjax.interop import hf_llama
from lpjax.models import decoder as decoder_lib


class GGUFImportError(errors.UserError, ValueError):
  """A GGUF file lpjax cannot read, naming the file and the problem."""


def _reader(path: pathlib.Path):
  if not path.is_file():
    raise FileNotFoundError(f'GGUF file not found: {str(path)!r}')
  st = path.stat()
  # Parsing the metadata of SmolLM2's file takes ~12 s (49k vocabulary
  # strings and merges, one numpy view each); the model loader and the
  # tokenizer read the same file, so the parsed reader is kept per file
  # version (a rewritten file has another size or mtime and is re-read).
  return _cached_reader(str(path.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _cached_reader(path: str, size: int, mtime_ns: int):
  import gguf

  del size, mtime_ns  # part of the cache key only
  try:
    return gguf.GGUFReader(path)
  except Exception as e:  # the reader raises ValueError, struct errors, ...
    raise GGUFImportError(f'{path}: not a readable GGUF file: {e}') from None


def _field(reader, path, key, default=None):
  f = reader.fields.get(key)
  if f is None:
    if default is not None:
      return default
    raise GGUFImportError(f'{path}: metadata {key!r} is missing.')
  return f.contents()


def unpermute_rows(w: np.ndarray, heads: int) -> np.ndarray:
  """Undo llama.cpp's query/key row order: `[out, in]`, per head.

  Within a head of `dh` rows, the Hugging Face order puts feature `i` of
  half `h` (`h` = 0, 1; `i < dh/2`) at row `h·dh/2 + i`; llama.cpp's
  converter moves it to row `2i + h`, so that its RoPE rotates adjacent
  rows (the converter's `reshape(heads, 2, dh/2, in).swapaxes(1, 2)`).
  This is the inverse.
  """
  out, inp = w.shape
  return (
    w.reshape(heads, out // heads // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)
  )


def load_gguf_llama(
  path: str | pathlib.Path,
  *,
  seq_len: int = 256,
  min_blocks_per_stage: int = 1,
  dtype: str = 'float32',
) -> tuple[arch_lib.Arch, dict[str, Any]]:
  """A LLaMA GGUF file as `(arch, variables)` of the decoder family.

  Each tensor becomes a JAX array as soon as it is dequantised, so the
  weights are held once (plus one tensor's NumPy copy), not as a NumPy and
  a JAX copy of the whole model.

  Args:
    path: the `.gguf` file.
    seq_len: the sequence length FLOPs are counted at by default.
    min_blocks_per_stage: the fewest layers pruning may leave.
    dtype: `'float32'` or `'bfloat16'` (the dequantised values rounded to
      bfloat16, half the memory).

  Returns:
    The unpruned `Arch` (`layer00` ... ) and `{'params': ...}` in `dtype`.

  Raises:
    FileNotFoundError: no such file.
    GGUFImportError: not GGUF, not a LLaMA model, a missing or misshapen
      tensor, or a quantisation the `gguf` package cannot dequantise.
  """
  import gguf

  if dtype not in ('float32', 'bfloat16'):
    raise ValueError(f"dtype must be 'float32' or 'bfloat16'; got {dtype!r}.")
  target = np.dtype(jnp.dtype(dtype))
  path = pathlib.Path(path)
  r = _reader(path)
  arch_name = _field(r, path, 'general.architecture')
  if arch_name != 'llama':
    raise GGUFImportError(
      f'{path}: general.architecture is {arch_name!r}; only llama is read.'
    )

  def meta(key, default=None):
    return _field(r, path, f'llama.{key}', default)

  depth = int(meta('block_count'))
  d = int(meta('embedding_length'))
  heads = int(meta('attention.head_count'))
  kv_heads = int(meta('attention.head_count_kv', heads))
  if heads < 1 or kv_heads < 1 or d % heads:
    raise GGUFImportError(
      f'{path}: {heads} query / {kv_heads} key-value heads do not split '
      f'the width {d}.'
    )
  scaling = sorted(k for k in r.fields if k.startswith('llama.rope.scaling'))
  if scaling:
    raise GGUFImportError(
      f'{path}: RoPE scaling ({", ".join(scaling)}) is not supported.'
    )
  mlp = int(meta('feed_forward_length'))
  theta = float(meta('rope.freq_base', 10000.0))
  eps = float(meta('attention.layer_norm_rms_epsilon'))
  tensors = {t.name: t for t in r.tensors}
  emb = tensors.get('token_embd.weight')
  if emb is None:
    raise GGUFImportError(f'{path}: token_embd.weight is missing.')
  vocab = int(emb.shape[1])
  rope_dims = int(meta('rope.dimension_count', d // heads))
  if rope_dims != d // heads:
    raise GGUFImportError(
      f'{path}: RoPE on {rope_dims} of {d // heads} head features (partial '
      'rotary) is not supported.'
    )
  tied = 'output.weight' not in tensors
  arch = decoder_lib.decoder(
    vocab=vocab,
    width=d,
    depth=depth,
    heads=heads,
    kv_heads=kv_heads,
    mlp=mlp,
    rope_theta=theta,
    eps=eps,
    tied=tied,
    seq_len=seq_len,
    min_blocks_per_stage=min_blocks_per_stage,
  )
  kv = kv_heads * (d // heads)
  # gguf name -> (lpjax path, expected numpy [out, in] / [n] shape).
  mapping: dict[str, tuple[tuple[str, ...], tuple[int, ...]]] = {
    'token_embd.weight': (('tok_embed', 'embedding'), (vocab, d)),
    'output_norm.weight': (('norm', 'scale'), (d,)),
  }
  if not tied:
    mapping['output.weight'] = (('lm_head', 'kernel'), (vocab, d))
  for i in range(depth):
    b, L = f'blk.{i}', decoder_lib.layer_name(i)
    mapping.update(
      {
        f'{b}.attn_norm.weight': ((L, 'attn_norm', 'scale'), (d,)),
        f'{b}.ffn_norm.weight': ((L, 'mlp_norm', 'scale'), (d,)),
        f'{b}.attn_q.weight': ((L, 'q', 'kernel'), (d, d)),
        f'{b}.attn_k.weight': ((L, 'k', 'kernel'), (kv, d)),
        f'{b}.attn_v.weight': ((L, 'v', 'kernel'), (kv, d)),
        f'{b}.attn_output.weight': ((L, 'o', 'kernel'), (d, d)),
        f'{b}.ffn_gate.weight': ((L, 'gate', 'kernel'), (mlp, d)),
        f'{b}.ffn_up.weight': ((L, 'up', 'kernel'), (mlp, d)),
        f'{b}.ffn_down.weight': ((L, 'down', 'kernel'), (d, mlp)),
      }
    )
  if 'rope_freqs.weight' in tensors:
    raise GGUFImportError(
      f'{path}: per-frequency RoPE factors (rope_freqs.weight, Llama-3 '
      'style) are not supported.'
    )
  missing = sorted(set(mapping) - set(tensors))
  unexpected = sorted(set(tensors) - set(mapping))
  if missing or unexpected:
    raise GGUFImportError(
      f'{path} does not match a {depth}-layer LLaMA: missing {missing[:8]}, '
      f'unexpected {unexpected[:8]}.'
    )
  params: dict[str, Any] = {}
  for name, (dst, shape) in mapping.items():
    t = tensors[name]
    try:
      value = gguf.quants.dequantize(t.data, t.tensor_type)
    except (NotImplementedError, ValueError) as e:
      raise GGUFImportError(
        f'{path}: cannot dequantise {name} ({t.tensor_type.name}): {e}'
      ) from None
    value = np.asarray(value, np.float32).reshape(
      tuple(int(s) for s in reversed(t.shape))
    )
    if value.shape != shape:
      raise GGUFImportError(
        f'{path}: {name} has shape {value.shape}; the metadata implies {shape}.'
      )
    if name.endswith('attn_q.weight'):
      value = unpermute_rows(value, heads)
    elif name.endswith('attn_k.weight'):
      value = unpermute_rows(value, kv_heads)
    if dst[-1] == 'kernel':
      value = value.T  # [out, in] -> Dense's [in, out]
    node = params
    for key in dst[:-1]:
      node = node.setdefault(key, {})
    # Copied once into an aligned host buffer in `dtype`, which the CPU
    # backend adopts without another copy (`hf_llama._aligned_empty`).
    held = hf_llama._aligned_empty(value.shape, target)
    np.copyto(held, value, casting='unsafe')  # bfloat16: round to nearest
    del value
    node[dst[-1]] = jax.device_put(held)
    del held
  return arch, {'params': params}


class GGUFTokenizer:
  """The byte-level BPE tokenizer stored in a GGUF file.

  Attributes:
    bos_id, eos_id: the file's special token ids.
    add_bos: whether the file asks for a BOS token before each text.
  """

  def __init__(self, path: str | pathlib.Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    path = pathlib.Path(path)
    r = _reader(path)
    kind = _field(r, path, 'tokenizer.ggml.model')
    if kind != 'gpt2':
      raise GGUFImportError(
        f'{path}: tokenizer model {kind!r}; only byte-level BPE (gpt2) is read.'
      )
    tokens = list(_field(r, path, 'tokenizer.ggml.tokens'))
    merges = [
      tuple(m.split(' ', 1)) for m in _field(r, path, 'tokenizer.ggml.merges')
    ]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    pre = _field(r, path, 'tokenizer.ggml.pre', 'default')
    if pre not in ('default', 'gpt2', 'smollm'):
      raise GGUFImportError(
        f'{path}: pre-tokenizer {pre!r} is not supported (default, gpt2, '
        "smollm); its splitting rules differ from GPT-2's."
      )
    steps = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    if pre == 'smollm':
      # SmolLM's tokenizer splits every digit into its own token first.
      steps.insert(0, pre_tokenizers.Digits(individual_digits=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tok.decoder = decoders.ByteLevel()
    types = list(
      _field(r, path, 'tokenizer.ggml.token_type', [1] * len(tokens))
    )
    # Control tokens (type 3) are matched whole, never split.
    from tokenizers import AddedToken

    tok.add_special_tokens(
      [AddedToken(t, special=True) for t, k in zip(tokens, types) if k == 3]
    )
    self._tok = tok
    self.bos_id = int(_field(r, path, 'tokenizer.ggml.bos_token_id', 1))
    self.eos_id = int(_field(r, path, 'tokenizer.ggml.eos_token_id', 2))
    self.add_bos = bool(_field(r, path, 'tokenizer.ggml.add_bos_token', False))

  def encode(self, text: str) -> np.ndarray:
    """Token ids of `text` (int32), with BOS first if the file asks."""
    ids = self._tok.encode(text, add_special_tokens=False).ids
    if self.add_bos:
      ids = [self.bos_id, *ids]
    return np.asarray(ids, np.int32)

  def decode(self, ids: Sequence[int]) -> str:
    """The text of `ids`."""
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)
