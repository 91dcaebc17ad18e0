"""Results of two revisions of lpjax, side by side: identical values?

(`revisions_bench.py` compares scoring speed and the ResNet-56 CKA scores;
this compares whole runs of every task.)

  python benchmarks/revisions_results.py --before=456482a --out=/tmp/revisions

`--before` (and `--after`, default: this working tree) name git revisions;
each is exported with `git archive` into its own folder and run from there
with this interpreter (same packages), one process per probe, the two sides
alternating. Probes:

* `scores`: cka and consensus scores of every block of the authors' ResNet-56
  (`../shared/reference/keras/`) on the 256 reference inputs (labels: the
  model's own predictions), through `lpjax.methods`;
* `quickstart`: `main.py --config=configs/quickstart.py` (the README table);
* `llm_<criterion>`: a small SmolLM2-135M depth run (k = 1, 2; LoRA healing
  at k = 2, 3 steps) for two criteria;
* `minilm`: a small MiniLM run (64 calibration and 64 held-out sentences, 2
  layers removed).

Every number of each probe's results (timings and the config excluded) is
compared: the report gives, per probe, whether the values are identical,
the largest |Δ| of floats and the keys that differ. Written to
`<out>/revisions.md` and printed.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile

from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / 'shared'

_BEFORE = flags.DEFINE_string('before', None, 'Revision before.', required=True)
_AFTER = flags.DEFINE_string('after', '', "Revision after ('' = worktree).")
_OUT = flags.DEFINE_string('out', '/tmp/revisions', 'Output folder.')
_PROBES = flags.DEFINE_list(
  'probes',
  ['scores', 'quickstart', 'llm_cka', 'llm_block_influence', 'minilm'],
  'Probes to run.',
)

SCORES = r"""
import json, sys
import numpy as np
from lpjax import methods
from lpjax.interop import keras_h5
keras = sys.argv[1]
arch, variables = keras_h5.load_keras_model(
    f'{keras}/resnet56_baseline.json', f'{keras}/resnet56_baseline.h5')
x = np.load(f'{keras}/reference_outputs.npz')['inputs']
y = np.load(f'{keras}/reference_outputs.npz')['resnet56_baseline/logits']
out = {}
for name in ('cka', 'consensus'):
  ctx = methods.Context(arch=arch, variables=variables, inputs=x,
                        labels=np.argmax(y, -1), data_batch_size=128)
  d = methods.get_method(name)(ctx)
  out[name] = {'scores': dict(d.scores), 'removed': list(d.edit.remove)}
json.dump(out, open(sys.argv[2], 'w'), default=float)
"""

LLM = [
  '--config=configs/smollm2_depth.py',
  '--config.llm.remove=1,2',
  '--config.llm.calibration_windows=8',
  '--config.llm.calibration_length=64',
  '--config.llm.heldout_windows=4',
  '--config.llm.heldout_length=64',
  '--config.llm.heal.at=2',
  '--config.llm.heal.modes=lora',
  '--config.llm.heal.steps=3',
  '--config.llm.heal.batch_size=4',
]
MINILM = [
  '--config=configs/minilm.py',
  '--config.embedding.calibration_sentences=64',
  '--config.embedding.heldout_sentences=64',
  '--config.embedding.max_length=64',
  '--config.embedding.data_batch_size=64',
  '--config.prune.target_blocks=2',
]


def _export(rev: str, root: pathlib.Path) -> pathlib.Path:
  """The tree of `rev` (or of the working tree for '') in `root`."""
  if not rev:
    return REPO
  dest = root / rev
  dest.mkdir(parents=True, exist_ok=True)
  archive = subprocess.run(
    ['git', 'archive', rev], cwd=REPO, check=True, capture_output=True
  ).stdout
  subprocess.run(['tar', '-x', '-C', str(dest)], input=archive, check=True)
  return dest


def _probe(name: str, tree: pathlib.Path, out: pathlib.Path) -> dict:
  """Runs probe `name` from `tree`; its results as a dict."""
  env = {**os.environ, 'PYTHONPATH': str(tree)}
  out.mkdir(parents=True, exist_ok=True)
  if name == 'scores':
    path = out / 'scores.json'
    cmd = [sys.executable, '-c', SCORES, str(SHARED / 'reference/keras'), path]
  else:
    args = {
      'quickstart': ['--config=configs/quickstart.py'],
      'minilm': MINILM,
    }.get(name)
    if args is None:  # llm_<criterion>
      args = [*LLM, f'--config.prune.criterion={name[4:]}']
    path = out / 'work' / 'results.json'
    cmd = [sys.executable, 'main.py', *args, f'--workdir={out / "work"}']
  proc = subprocess.run(
    [str(c) for c in cmd], cwd=tree, env=env, capture_output=True, text=True
  )
  if proc.returncode:
    raise RuntimeError(f'{name} in {tree}:\n{proc.stderr[-3000:]}')
  return json.loads(pathlib.Path(path).read_text())


def _leaves(tree, path=''):
  if isinstance(tree, dict):
    for k, v in tree.items():
      if k == 'config' or 'seconds' in k or k in ('started', 'seconds'):
        continue
      yield from _leaves(v, f'{path}.{k}' if path else str(k))
  elif isinstance(tree, list):
    for i, v in enumerate(tree):
      yield from _leaves(v, f'{path}[{i}]')
  else:
    yield path, tree


def _top(key: str) -> str:
  return re.split(r'[.\[]', key, maxsplit=1)[0]


def compare(a: dict, b: dict) -> dict:
  """Over the values both sides record: identical?, max |Δ| over floats,
  the keys that differ; and the (top-level) keys only one side records
  (fields a revision added or dropped)."""
  la, lb = dict(_leaves(a)), dict(_leaves(b))
  shared = set(la) & set(lb)
  differ = sorted(k for k in shared if la[k] != lb[k])
  deltas = [
    abs(la[k] - lb[k])
    for k in differ
    if isinstance(la[k], float) and isinstance(lb[k], float)
  ]
  return {
    'identical': not differ,
    'values': len(shared),
    'max_abs_delta': max(deltas, default=0.0),
    'differ': differ[:20],
    'only_before': sorted({_top(k) for k in set(la) - shared}),
    'only_after': sorted({_top(k) for k in set(lb) - shared}),
  }


def main(argv):
  del argv
  out = pathlib.Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory() as tmp:
    trees = {
      'before': _export(_BEFORE.value, pathlib.Path(tmp)),
      'after': _export(_AFTER.value, pathlib.Path(tmp)),
    }
    rows = []
    for name in _PROBES.value:
      res = {}
      for side in ('before', 'after'):  # alternating, one process each
        res[side] = _probe(name, trees[side], out / side / name)
      rows.append((name, compare(res['before'], res['after'])))
      print(name, rows[-1][1], flush=True)
  after = _AFTER.value or 'the working tree'
  lines = [
    f'Revisions {_BEFORE.value} (before) and {after} (after): results of '
    'each probe compared value by value (timings and config excluded).',
    '',
    '| probe | values on both sides | identical | max abs Δ (floats) | '
    'differing keys | fields only before | fields only after |',
    '|---|---:|---|---:|---|---|---|',
  ]
  for name, c in rows:
    lines.append(
      f'| {name} | {c["values"]} | {"yes" if c["identical"] else "no"} | '
      f'{c["max_abs_delta"]:.3g} | {", ".join(c["differ"]) or "—"} | '
      f'{", ".join(c["only_before"]) or "—"} | '
      f'{", ".join(c["only_after"]) or "—"} |'
    )
  text = '\n'.join(lines)
  (out / 'revisions.md').write_text(text + '\n')
  print(text)
  return 0 if all(c['identical'] for _, c in rows) else 1


if __name__ == '__main__':
  app.run(main)
