"""Peak resident memory per phase of the SmolLM2 depth-pruning run.

Runs `main.py --config=configs/smollm2_depth.py` (a reduced but realistic
variant: one criterion, one `k`, one short LoRA healing; every phase of the
full run happens) in a subprocess, samples its resident set size (psutil,
every 0.2 s) and reads its log lines as they come. The run logs the end of
every phase (`lpjax.run.language_model`: 'Loaded ...' after the model and
the windows are in memory, the baseline's held-out perplexity, each
decision, each evaluation, each healing step), so every sample is
attributed to the phase whose end-of-phase line comes next:

    load -> evaluation (baseline) -> scoring -> evaluation (k)
         -> healing (k, mode) -> evaluation (healed k, mode) -> end

A tree without the 'Loaded' line (before this benchmark existed) reports
load and the baseline evaluation as one phase.

  python benchmarks/llm_memory.py                      # this tree
  python benchmarks/llm_memory.py --root=/tmp/lpjax_before  # another copy

`--root` runs another copy of the repository (e.g. `git archive HEAD |
tar -x -C /tmp/lpjax_before`) with `PYTHONPATH` set to it. Prints a
markdown table (phase, seconds, peak RSS in GB) and writes it with the raw
samples to `--out` (JSON). Run one at a time: the samples are of one
process, but a second run competes for the same cores and memory.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import threading
import time

import psutil

REPO = pathlib.Path(__file__).resolve().parents[1]
# The reduced run: CKA scoring, 6 layers removed, LoRA healing of 4 steps
# at k = 6 (default windows: 32 x 128 calibration, 16 x 256 held-out,
# batches of 8).
OVERRIDES = (
  '--config.prune.criterion=cka',
  '--config.llm.remove=(6,)',
  '--config.llm.heal.at=(6,)',
  '--config.llm.heal.modes=lora',
  '--config.llm.heal.steps=4',
)
# The line that ends a phase -> the phase's name (`{0}`: the match's group).
ENDS = (
  (re.compile(r'Loaded (\S+)'), 'load'),
  (re.compile(r'layers, held-out perplexity'), 'evaluation (baseline)'),
  (re.compile(r'Step (\d+): \S+ removes'), 'scoring (step {0})'),
  (re.compile(r'k=(\d+): removed'), 'evaluation (k={0})'),
  (re.compile(r'Healing k=(\d+) \((\w+)\): step'), 'healing (k={0}, {1})'),
  (re.compile(r'k=(\d+) healed \((\w+)'), 'evaluation (healed k={0}, {1})'),
)


def phase_of(line: str) -> str | None:
  """The phase a log line ends, or None."""
  for pattern, name in ENDS:
    m = pattern.search(line)
    if m:
      return name.format(*m.groups())
  return None


def run(root: pathlib.Path, workdir: str, extra: list[str]) -> dict:
  """Runs the task in `root`; returns samples, phase ends and the log."""
  cmd = [
    sys.executable,
    str(root / 'main.py'),
    f'--config={root / "configs" / "smollm2_depth.py"}',
    f'--workdir={workdir}',
    *OVERRIDES,
    *extra,
  ]
  env = {**os.environ, 'PYTHONPATH': str(root)}
  t0 = time.monotonic()
  proc = subprocess.Popen(
    cmd,
    cwd=root,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )
  ps = psutil.Process(proc.pid)
  samples: list[tuple[float, int]] = []
  lines: list[tuple[float, str]] = []

  def read():
    for line in proc.stdout:
      lines.append((time.monotonic() - t0, line.rstrip('\n')))

  reader = threading.Thread(target=read, daemon=True)
  reader.start()
  while proc.poll() is None:
    try:
      samples.append((time.monotonic() - t0, ps.memory_info().rss))
    except psutil.NoSuchProcess:
      break
    time.sleep(0.2)
  reader.join()
  return {
    'command': cmd,
    'returncode': proc.returncode,
    'seconds': time.monotonic() - t0,
    'samples': samples,
    'log': lines,
  }


def phases(result: dict) -> list[dict]:
  """Consecutive phases: name, start, end, peak RSS of their samples.

  Consecutive ends of the same phase (the healing steps) extend it; a
  sample belongs to the first phase ending at or after it.
  """
  ends: list[tuple[float, str]] = []
  for t, line in result['log']:
    name = phase_of(line)
    if name is None:
      continue
    if ends and ends[-1][1] == name:
      ends[-1] = (t, name)
    else:
      ends.append((t, name))
  if ends and ends[0][1] == 'evaluation (baseline)':
    ends[0] = (ends[0][0], 'load + evaluation (baseline)')
  ends.append((float('inf'), 'end (report, exit)'))
  out, start, i = [], 0.0, 0
  for end, name in ends:
    rss = []
    while i < len(result['samples']) and result['samples'][i][0] <= end:
      rss.append(result['samples'][i][1])
      i += 1
    stop = min(end, result['seconds'])
    out.append(
      {
        'phase': name,
        'start_s': start,
        'end_s': stop,
        'peak_rss_gb': max(rss) / 1e9 if rss else None,
      }
    )
    start = stop
  return out


def table(rows: list[dict]) -> str:
  lines = ['| phase | seconds | peak RSS (GB) |', '|---|---:|---:|']
  for r in rows:
    peak = '-' if r['peak_rss_gb'] is None else f'{r["peak_rss_gb"]:.2f}'
    lines.append(f'| {r["phase"]} | {r["end_s"] - r["start_s"]:.0f} | {peak} |')
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--root', default=str(REPO), help='repository copy')
  parser.add_argument('--workdir', default=None, help='default: a temp dir')
  parser.add_argument('--out', default=None, help='JSON of samples, phases')
  args, extra = parser.parse_known_args()
  root = pathlib.Path(args.root).resolve()
  with tempfile.TemporaryDirectory() as tmp:
    result = run(root, args.workdir or tmp, extra)
  rows = phases(result)
  if result['returncode'] != 0:
    print('\n'.join(line for _, line in result['log'][-40:]))
    raise SystemExit(f'the run failed (exit {result["returncode"]})')
  peak = max(s[1] for s in result['samples']) / 1e9
  print(f'{root}: {result["seconds"]:.0f} s, peak RSS {peak:.2f} GB')
  print(table(rows))
  if args.out:
    with open(args.out, 'w') as f:
      json.dump({**result, 'phases': rows, 'peak_rss_gb': peak}, f)


if __name__ == '__main__':
  main()
