"""Shared by the digits pruning studies: one baseline per seed, then every
criterion from that baseline's checkpoint, each in its own resumable
workdir (`out/seed{s}/{criterion}`)."""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Sequence

import jax
import ml_collections

from lpjax.run import classifier

# The baseline's workdir records one config whatever the criteria are (a
# workdir refuses to resume under a changed config); training ignores it.
BASELINE_CRITERION = 'cka'


def run_criteria(
  out: str,
  seeds: Sequence[int],
  criteria: Sequence[str],
  config: Callable[[int, str], ml_collections.ConfigDict],
) -> dict[str, list[dict]]:
  """`{criterion: [results of each seed]}`; prints one line per run.

  `config(seed, criterion)` builds a run's config; re-running skips the
  finished runs.
  """
  runs = {k: [] for k in criteria}
  t0 = time.time()
  for seed in seeds:
    base_dir = os.path.join(out, f'seed{seed}', 'baseline')
    classifier.Classifier(config(seed, BASELINE_CRITERION), base_dir).load()
    for crit in criteria:
      c = config(seed, crit)
      c.baseline.source = 'checkpoint'
      c.baseline.path = os.path.join(base_dir, 'baseline')
      res = classifier.run(c, os.path.join(out, f'seed{seed}', crit))
      runs[crit].append(res)
      # Every run compiles for its own shrinking architectures; dropping
      # them keeps a many-run process from exhausting the memory LLVM maps
      # for compiled code ("LLVM compilation error: Cannot allocate
      # memory", then a segfault, after ~40 runs in one process).
      jax.clear_caches()
      gc.collect()
      last = res['iterations'][-1]
      removed = [u for it in res['iterations'] for u in it['removed']]
      print(
        f'seed {seed} {crit:>15}: baseline '
        f'{100 * res["baseline"]["test_accuracy"]:.2f}% -> '
        f'{100 * last["test_accuracy"]:.2f}% at '
        f'-{last["flops_reduction"]:.2f}% FLOPs, removed {removed} '
        f'({time.time() - t0:.0f}s elapsed)',
        flush=True,
      )
  return runs


def pruning_config(
  seed: int, criterion: str, model: str, baseline_epochs: int, finetune: int
) -> ml_collections.ConfigDict:
  """The quickstart config on `model`, pruned to the floor by `criterion`."""
  from configs import quickstart

  c = quickstart.get_config()
  c.seed = seed
  c.model = model
  c.baseline.epochs = baseline_epochs
  c.prune.finetune_epochs = finetune
  c.prune.criterion = criterion
  c.prune.target_blocks = 0  # to the floor
  return c
