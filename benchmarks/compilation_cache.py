"""A run with and without JAX's persistent compilation cache, side by side.

Each round runs `python main.py --config=<config>` three times, each in its
own process and a fresh workdir, nothing set in the environment that lpjax
or JAX reads:

* `off`: `--config.compilation_cache=` (every program compiled);
* `cold`: a fresh, empty cache folder (compiled, and written there);
* `warm`: the same folder again (what a second run finds: another seed of
  the same model, a rerun).

`off` runs before the pair in even rounds and after it in odd ones. Prints
each run's wall time and CPU use, warm / off and cold / off per round with
their median [quartiles], and checks that every run printed the same
results table.

  python benchmarks/compilation_cache.py --rounds=2
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--config', default='configs/quickstart.py')
  p.add_argument('--rounds', type=int, default=2)
  args = p.parse_args()
  if args.rounds < 1:
    p.error('--rounds must be at least 1.')
  scratch = tempfile.mkdtemp(prefix='lpjax_compilation_cache_')
  print(
    f'{common.cpu_model()}, {os.cpu_count()} CPUs; {args.config}, '
    f'{args.rounds} round(s)',
    flush=True,
  )
  walls: dict[str, list[float]] = {'off': [], 'cold': [], 'warm': []}
  tables = set()
  try:
    for r in range(args.rounds):
      cache = os.path.join(scratch, f'cache_{r}')
      runs = {
        'off': '',
        'cold': cache,
        'warm': cache,
      }
      order = ['cold', 'warm']
      order = ['off', *order] if r % 2 == 0 else [*order, 'off']
      for name in order:
        workdir = os.path.join(scratch, f'work_{name}_{r}')
        load = os.getloadavg()[0]
        wall, cpu, table = common.run_main(
          ROOT,
          [
            f'--config={args.config}',
            f'--workdir={workdir}',
            f'--config.compilation_cache={runs[name]}',
          ],
        )
        walls[name].append(wall)
        tables.add(table)
        print(
          f'round {r + 1} {name}: {wall:.1f} s wall, {cpu / wall:.2f} cores '
          f'busy, load {load:.2f} -> {os.getloadavg()[0]:.2f}',
          flush=True,
        )
        shutil.rmtree(workdir, ignore_errors=True)
    for name in ('cold', 'warm'):
      ratios = [x / o for x, o in zip(walls[name], walls['off'])]
      print(
        f'{name} / off per round: {", ".join(f"{x:.3f}" for x in ratios)}; '
        f'median [quartiles] {common.median_quartiles(ratios)}'
      )
    print(f'results tables identical: {len(tables) == 1}')
    for table in tables:
      print(table)
    if len(tables) != 1:
      sys.exit(1)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == '__main__':
  main()
