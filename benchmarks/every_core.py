"""The quickstart with lpjax's default devices against one CPU device.

Runs `main.py --config=configs/quickstart.py` (or `--config`) twice per
round, each in its own process and fresh workdir, the two in alternating
order: once as a new user runs it (nothing set: `import lpjax` gives JAX
one CPU device per core) and once with `JAX_NUM_CPU_DEVICES=1` (JAX's own
default before). While a run works, its CPU time is sampled every 0.5 s
(psutil, the process and its threads) and each sample is attributed to the
phase its log lines say is running: baseline training, scoring, fine-tuning
(everything after a removal up to the next score). Prints, per run, the
wall time and CPU seconds per wall second of each phase, the final table's
accuracies, and the wall-time ratio of the two runs in each round.

  python benchmarks/every_core.py [--rounds 1] [--out FILE]

About 12 minutes per round on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]

# Log line -> the phase that starts with it.
PHASES = (
  (re.compile(r'baseline: epochs'), 'baseline training'),
  (re.compile(r'Baseline .* test accuracy'), 'scoring'),
  (re.compile(r'Step \d+: .* removes'), 'fine-tuning'),
  (re.compile(r'Iteration \d+: removed'), 'scoring'),
)


def run_once(config: str, env: dict[str, str], workdir: Path) -> dict:
  cmd = [
    sys.executable,
    'main.py',
    f'--config={config}',
    f'--workdir={workdir}',
  ]
  log = workdir.with_suffix('.log')
  with open(log, 'w') as out:
    proc = subprocess.Popen(
      cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
    )
    ps = psutil.Process(proc.pid)
    phase, seen = 'start-up', 0
    usage: dict[str, list[float]] = {}
    t0 = last_t = time.perf_counter()
    last_cpu = 0.0
    while proc.poll() is None:
      time.sleep(0.5)
      try:
        c = ps.cpu_times()
        cpu = c.user + c.system
      except psutil.NoSuchProcess:
        break
      now = time.perf_counter()
      lines = log.read_text(errors='replace').splitlines()
      for line in lines[seen:]:
        for pattern, name in PHASES:
          if pattern.search(line):
            phase = name
      seen = len(lines)
      wall_cpu = usage.setdefault(phase, [0.0, 0.0])
      wall_cpu[0] += now - last_t
      wall_cpu[1] += cpu - last_cpu
      last_t, last_cpu = now, cpu
    wall = time.perf_counter() - t0
  if proc.returncode:
    raise SystemExit(f'{cmd} failed; see {log}')
  table = [
    line
    for line in log.read_text().splitlines()
    if line.startswith('|') and re.search(r'\d', line)
  ]
  return {'wall': wall, 'usage': usage, 'table': table}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--config', default='configs/quickstart.py')
  p.add_argument('--rounds', type=int, default=1)
  p.add_argument('--out', default=None)
  args = p.parse_args(argv)
  base = {
    k: v
    for k, v in os.environ.items()
    if k not in ('JAX_NUM_CPU_DEVICES', 'XLA_FLAGS')
  }
  variants = {
    'default (nothing set)': base,
    'JAX_NUM_CPU_DEVICES=1': {**base, 'JAX_NUM_CPU_DEVICES': '1'},
  }
  tmp = Path(tempfile.mkdtemp(prefix='lpjax_every_core_'))
  cpu = next(
    (
      line.split(':', 1)[1].strip()
      for line in Path('/proc/cpuinfo').read_text().splitlines()
      if line.startswith('model name')
    ),
    'unknown CPU',
  )
  lines = [
    f'`python benchmarks/every_core.py --config={args.config} --rounds='
    f'{args.rounds}`: {cpu}, {psutil.cpu_count()} CPUs, '
    f'{time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}, load average '
    f'{os.getloadavg()[0]:.2f} at the start.',
    '',
  ]
  for r in range(args.rounds):
    names = list(variants) if r % 2 == 0 else list(variants)[::-1]
    got = {}
    for name in names:
      workdir = tmp / f'r{r}_{len(got)}'
      got[name] = res = run_once(args.config, variants[name], workdir)
      shutil.rmtree(workdir, ignore_errors=True)
      lines.append(f'Round {r}, {name}: {res["wall"]:.0f} s wall.')
      lines.append('')
      lines.append('| phase | wall s | CPU s per wall s |')
      lines.append('|---|---:|---:|')
      for phase, (wall, used) in res['usage'].items():
        lines.append(f'| {phase} | {wall:.0f} | {used / max(wall, 1e-9):.2f} |')
      lines.append('')
      lines += res['table'] + ['']
      print('\n'.join(lines[-(len(res['table']) + 8) :]), flush=True)
    a, b = (got[n]['wall'] for n in variants)
    lines.append(
      f'Round {r}: default / one device wall time = {a / b:.2f} '
      f'({a:.0f} s against {b:.0f} s).'
    )
    lines.append('')
  lines.append(f'Load average at the end: {os.getloadavg()[0]:.2f}.')
  text = '\n'.join(lines)
  print(text)
  if args.out:
    Path(args.out).write_text(text + '\n')


if __name__ == '__main__':
  main()
