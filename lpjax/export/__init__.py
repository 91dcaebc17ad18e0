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

`export(workdir, step, format, out, **options)` (and `python -m
lpjax.export`, `lpjax.export.__main__`) writes a model of a run
(`lpjax.load`) in one of `FORMATS` with its provenance, after refusing
what cannot work before anything is read.
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


def save_safetensors(
  tensors: Mapping[str, Any], path: str | os.PathLike, metadata: Mapping
) -> pathlib.Path:
  """`safetensors.numpy.save_file`, then the file made readable as any new
  file is (the library writes it owner-only, mode 0600)."""
  from safetensors.numpy import save_file

  save_file(dict(tensors), os.fspath(path), metadata=dict(metadata))
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(path, 0o666 & ~umask)
  return pathlib.Path(path)


def provenance_json(provenance: Mapping[str, Any] | None) -> str:
  """The provenance as compact, key-sorted JSON (`'{}'` if none)."""
  return json.dumps(dict(provenance or {}), sort_keys=True, default=str)


# Every format `export` writes: what it holds, and the models it fits.
FORMATS = {
  'gguf': 'llama.cpp GGUF file (decoders of llm runs)',
  'hf': 'Hugging Face LlamaForCausalLM folder (decoders of llm runs)',
  'sentence-transformers': 'sentence-transformers folder (embedding runs)',
  'keras': 'Keras model.json + model.h5 (CIFAR ResNets of classifier runs)',
}
# The options each format takes (`export(..., **options)`).
OPTIONS = {'gguf': ('dtype', 'name')}


def fits(fmt: str, task: str, family: str) -> bool:
  """Whether format `fmt` writes the models of `task` of `family`."""
  if fmt in ('gguf', 'hf'):
    return task == 'llm' and family == 'decoder'
  if fmt == 'sentence-transformers':
    return task == 'embedding' and family == 'encoder'
  return fmt == 'keras' and family == 'resnet_cifar'


def _nearest_existing(path: pathlib.Path) -> pathlib.Path:
  path = path.absolute()
  while not path.exists() and path != path.parent:
    path = path.parent
  return path


def _check_creatable(path: pathlib.Path) -> None:
  """Refuses a new path whose folder cannot be made or written."""
  above = _nearest_existing(path.parent if not path.exists() else path)
  if not above.is_dir() or not os.access(above, os.W_OK | os.X_OK):
    raise ExportError(
      f'Cannot create {path}: {above} is not a writable folder; choose a '
      'writable --out.'
    )


def _check_out(out: str | os.PathLike, fmt: str) -> pathlib.Path:
  """The file (`gguf` to a `.gguf` path) or new or empty folder to write;
  `ExportError` before anything is created."""
  path = pathlib.Path(out)
  if fmt == 'gguf' and path.suffix.lower() == '.gguf':
    if path.exists():
      raise ExportError(
        f'{path} exists; lpjax does not overwrite it: choose a new --out.'
      )
    _check_creatable(path)
    return path
  if path.exists():
    if not path.is_dir():
      raise ExportError(
        f'{path} exists and is not a folder; choose a new --out.'
      )
    if any(path.iterdir()):
      raise ExportError(
        f'{path} is not empty; export into a new or empty folder (--out).'
      )
    if not os.access(path, os.W_OK | os.X_OK):
      raise ExportError(f'{path} is not writable; choose a writable --out.')
  else:
    _check_creatable(path)
  return path / 'model.gguf' if fmt == 'gguf' else path


def export(
  workdir: str | os.PathLike,
  step: Any = None,
  format: str = 'gguf',
  out: str | os.PathLike = '',
  **options: Any,
) -> list[pathlib.Path]:
  """Writes a model of the run in `workdir` in `format`; the paths written.

  Args:
    workdir: the run's workdir.
    step: which model (`lpjax.load`'s steps; `None`: the last pruned one).
    format: `'gguf'` or `'hf'` (llm runs), `'sentence-transformers'`
      (embedding runs), `'keras'` (classifier runs of a CIFAR ResNet).
    out: a new or empty folder (created); for `'gguf'` also a new
      `.gguf` file. In a folder the files are `model.gguf` (gguf),
      `model.json` + `model.h5` (keras), or the format's folder layout.
    **options: `dtype` (`'F32'`, `'F16'`, `'Q8_0'`; default F32) and `name`
      (`general.name`) for gguf; no other format takes any.

  The model is `lpjax.load(workdir, step)` and its provenance is stored in
  the files (`lpjax.run.saved`); the writers are this package's modules.

  Raises:
    ExportError / UserError: before anything is read or written: a workdir
      that holds no run, a step it did not make (listing the valid ones),
      a format that does not fit the run's model (listing those that do),
      an unknown option or dtype, an output that exists (not an empty
      folder) or cannot be created, a run whose source file is not
      registered (a model given in memory); then whatever the format's
      writer refuses, before it writes.
  """
  from lpjax.run import saved

  run = saved.open_run(workdir)
  if format not in FORMATS:
    raise ExportError(
      f'Unknown format {format!r}; valid: {", ".join(FORMATS)}.'
    )
  step = saved.resolve(run, step)
  family = saved.family(run, step)
  if not fits(format, run.task, family):
    fitting = [f for f in FORMATS if fits(f, run.task, family)]
    what = f'the {family!r} models of this {run.task!r} run'
    raise ExportError(
      f'Format {format!r} does not write {what}; '
      + (
        f'formats that do: {", ".join(fitting)}.'
        if fitting
        else 'no export format does: use lpjax.load(workdir, step) in Python.'
      )
    )
  allowed = OPTIONS.get(format, ())
  unknown = sorted(set(options) - set(allowed))
  if unknown:
    raise ExportError(
      f'Format {format!r} takes no option {", ".join(unknown)}'
      + (f' (it takes: {", ".join(allowed)}).' if allowed else '.')
    )
  if format == 'gguf':
    from lpjax.export import gguf

    dtype = options.setdefault('dtype', 'F32')
    if dtype not in gguf.DTYPES:
      raise ExportError(
        f'Unknown GGUF dtype {dtype!r}; valid: {", ".join(gguf.DTYPES)}.'
      )
  target = _check_out(out, format)
  source = saved.source_path(run)
  if format != 'keras' and source is None:
    raise ExportError(
      f'The run in {run.workdir} pruned a model it was given in memory; '
      f"{format} export copies the source model's files (tokenizer, "
      'config), which that run has none of. Export a run of a registered '
      'model.'
    )
  if run.task == 'llm' and source.is_dir():
    raise ExportError(
      f'The run in {run.workdir} pruned the Hugging Face checkpoint '
      f'{source}; the {format} writer takes its tokenizer and settings from '
      'a GGUF source, so this export is not supported yet. lpjax.load('
      'workdir, step) gives the pruned model (arch, variables).'
    )
  loaded = saved.load(run.workdir, step)
  arch, variables, prov = loaded.arch, loaded.variables, loaded.provenance
  if format == 'gguf':
    from lpjax.export import gguf

    return [
      gguf.write(arch, variables, source, target, provenance=prov, **options)
    ]
  if format == 'hf':
    from lpjax.export import hf_llama

    return [hf_llama.write(arch, variables, source, target, provenance=prov)]
  if format == 'sentence-transformers':
    from lpjax.export import sentence_transformers

    return [
      sentence_transformers.write(
        arch, variables, source, target, provenance=prov
      )
    ]
  from lpjax.export import keras

  created = not target.exists()
  folder = output_folder(target)
  try:
    return list(
      keras.write(
        arch,
        variables,
        folder / 'model.json',
        folder / 'model.h5',
        provenance=prov,
      )
    )
  except BaseException:  # a refusal: leave no folder it created
    if created and not any(folder.iterdir()):
      folder.rmdir()
    raise


__all__ = [
  'FORMATS',
  'ExportError',
  'export',
  'fits',
  'output_file',
  'output_folder',
  'provenance_json',
  'save_safetensors',
]
