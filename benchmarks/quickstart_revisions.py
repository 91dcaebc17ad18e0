"""The quickstart's wall time at two git revisions, side by side in one run.

Each revision is checked out into a temporary `git worktree` (removed at the
end, also on error) and `python main.py --config=<config>` runs there, in
its own process and a fresh workdir, with nothing set in the environment
that lpjax reads. Rounds alternate the order (A B, B A, ...) so that the
machine's load falls on both alike. Prints each run's wall time, CPU time
(user + system of the process and its children) and the load average, the
per-round ratio B / A and its median [quartiles], and checks that both
revisions print the same results table (a speed change must not change a
number; `--tables_may_differ` for a change that sums in another order, such
as splitting training over devices, prints both and does not fail).
`--set field=value` (repeatable) passes `--config.field=value` to both.

  python benchmarks/quickstart_revisions.py --before=HEAD~1 --after=HEAD \
    --rounds=3
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _git(*args: str) -> str:
  return subprocess.run(
    ['git', *args], cwd=ROOT, check=True, capture_output=True, text=True
  ).stdout.strip()


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--before', default='HEAD~1', help='revision A')
  p.add_argument('--after', default='HEAD', help='revision B')
  p.add_argument('--config', default='configs/quickstart.py')
  p.add_argument('--rounds', type=int, default=3)
  p.add_argument(
    '--set',
    action='append',
    default=[],
    metavar='FIELD=VALUE',
    help='a config override for both revisions (repeatable)',
  )
  p.add_argument(
    '--tables_may_differ',
    action='store_true',
    help='print both tables instead of failing when they differ',
  )
  args = p.parse_args()
  for item in args.set:
    if '=' not in item:
      p.error(f'--set takes FIELD=VALUE; got {item!r}.')
  overrides = [f'--config.{item}' for item in args.set]
  if args.rounds < 1:
    p.error('--rounds must be at least 1.')
  revs = {'A': args.before, 'B': args.after}
  commits = {k: _git('rev-parse', '--short', v) for k, v in revs.items()}
  scratch = tempfile.mkdtemp(prefix='lpjax_qs_revisions_')
  trees = {}
  try:
    for k, commit in commits.items():
      trees[k] = os.path.join(scratch, k)
      _git('worktree', 'add', '--detach', trees[k], commit)
    print(
      f'{common.cpu_model()}, {os.cpu_count()} CPUs; '
      f'A = {revs["A"]} ({commits["A"]}), B = {revs["B"]} ({commits["B"]}); '
      f'{args.config} {" ".join(overrides)}, {args.rounds} round(s)'
    )
    walls = {'A': [], 'B': []}
    tables = {}
    for r in range(args.rounds):
      order = ('A', 'B') if r % 2 == 0 else ('B', 'A')
      for k in order:
        workdir = os.path.join(scratch, f'work_{k}_{r}')
        load0 = os.getloadavg()[0]
        wall, cpu, table = common.run_main(
          trees[k],
          [f'--config={args.config}', f'--workdir={workdir}', *overrides],
        )
        walls[k].append(wall)
        tables.setdefault(k, table)
        if table != tables[k]:
          raise RuntimeError(f'{k} printed different tables across rounds.')
        print(
          f'round {r + 1} {k}: {wall:.1f} s wall, {cpu / wall:.2f} cores '
          f'busy, load {load0:.2f} -> {os.getloadavg()[0]:.2f}',
          flush=True,
        )
        shutil.rmtree(workdir, ignore_errors=True)
    ratios = [b / a for a, b in zip(walls['A'], walls['B'])]
    print(
      f'wall B / A per round: {", ".join(f"{x:.3f}" for x in ratios)}; '
      f'median [quartiles] {common.median_quartiles(ratios)}'
    )
    same = tables['A'] == tables['B']
    print(f'results tables identical: {same}')
    print(tables['B'])
    if not same:
      print(tables['A'])
      if not args.tables_may_differ:
        sys.exit(1)
  finally:
    for tree in trees.values():
      subprocess.run(
        ['git', 'worktree', 'remove', '--force', tree],
        cwd=ROOT,
        capture_output=True,
      )
    subprocess.run(['git', 'worktree', 'prune'], cwd=ROOT, capture_output=True)
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == '__main__':
  main()
