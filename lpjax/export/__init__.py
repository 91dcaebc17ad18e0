"""Writing a (pruned) model out of lpjax, in the formats people run.

One module per format; each writes `(arch, variables)` of its family and
states the model's provenance (source digest, edits, healing) inside the
file where the format has metadata, in a sidecar `provenance.json` where
it does not:

* `gguf`: decoders, llama.cpp's GGUF (`F32`, `F16`, `Q8_0`);
* `hf_llama`: decoders, a Hugging Face `LlamaForCausalLM` folder with a
  tokenizer built from the GGUF vocabulary;
* `sentence_transformers`: encoders (MiniLM), a sentence-transformers folder;
* `keras`: ResNets, the authors' Keras `.json` + `.h5`.

Every writer refuses an output it cannot use (`ExportError`) before any
work.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

from lpjax import errors


class ExportError(errors.UserError, ValueError):
  """An export that cannot be written as asked."""


def output_folder(out: str | os.PathLike) -> pathlib.Path:
  """`out` as a new or empty, writable folder (created); else `ExportError`."""
  path = pathlib.Path(out)
  if path.exists() and not path.is_dir():
    raise ExportError(f'{path} exists and is not a folder; choose a new --out.')
  if path.is_dir() and any(path.iterdir()):
    raise ExportError(
      f'{path} is not empty; export into a new or empty folder (--out).'
    )
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise ExportError(
      f'Cannot create {path}: {e.strerror or e}; choose a writable --out.'
    ) from None
  if not os.access(path, os.W_OK):
    raise ExportError(f'{path} is not writable; choose a writable --out.')
  return path


def output_file(out: str | os.PathLike) -> pathlib.Path:
  """`out` as a new file in a writable folder (created); else `ExportError`."""
  path = pathlib.Path(out)
  if path.exists():
    raise ExportError(
      f'{path} exists; lpjax does not overwrite it: choose a new --out.'
    )
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise ExportError(
      f'Cannot create {path.parent}: {e.strerror or e}; choose a writable '
      '--out.'
    ) from None
  if not os.access(path.parent, os.W_OK):
    raise ExportError(
      f'{path.parent} is not writable; choose a writable --out.'
    )
  return path


def provenance_json(provenance: Mapping[str, Any] | None) -> str:
  """The provenance as compact, key-sorted JSON (`'{}'` if none)."""
  return json.dumps(dict(provenance or {}), sort_keys=True, default=str)


__all__ = ['ExportError', 'output_file', 'output_folder', 'provenance_json']
