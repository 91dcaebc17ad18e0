"""SmolLM2-135M depth pruning: every criterion, with and without healing.

Runs `configs/smollm2_depth.py` once per criterion, each in its own process
and workdir (`--out/<run>`; a re-run resumes every run where it stopped and
skips finished ones), then writes the comparison:

* `llm_depth.md`: held-out perplexity at k = 0, 3, 6, 9, 12 layers removed
  (of 30) without healing, healed perplexity (full fine-tune and LoRA) at
  the config's `heal.at`, next-token agreement with the unpruned model, and
  each criterion's scoring time;
* with `--paired=6,12`: each criterion's perplexity ratio to `cka`'s
  (`--reference`) with a 95 % t-interval paired over the held-out windows;
* `perplexity_vs_layers.png`: perplexity against layers removed, one line
  per criterion (log scale), healed points marked.

Runs (`RUNS`): the one-shot criteria score the unpruned model once (or once
per k: `angular_block`, `sglp`); `sleb` is SLEB's greedy loop (iterative);
`cka` runs on the mean-pooled (`cka`) and on the last-token (`cka_last`)
final hidden states.

  python benchmarks/llm_depth.py --out /tmp/llm_depth [--runs cka,tail] \\
      [-- --config.llm.heal.steps=20 ...]

Arguments after `--` go to every run's main.py. Hours on 2 CPU cores (see
BENCHMARKS.md for the measured times); minutes on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from lpjax.run import language_model  # noqa: E402

# name -> main.py overrides. Every run heals with LoRA at heal.at; the runs
# in FULL_HEAL also with a full fine-tune. SLEB decides on 8 calibration
# windows (its greedy loop runs about L²/2 forwards: with 32 it alone would
# take as long as every other run together on 2 CPU cores).
RUNS = {
  'tail': ['--config.prune.criterion=tail'],
  'random': ['--config.prune.criterion=random'],
  'block_influence': ['--config.prune.criterion=block_influence'],
  'angular_block': ['--config.prune.criterion=angular_block'],
  'cka': ['--config.prune.criterion=cka'],
  'cka_last': [
    '--config.prune.criterion=cka',
    '--config.prune.representation=last',
  ],
  'consensus': ['--config.prune.criterion=consensus'],
  'sglp': ['--config.prune.criterion=sglp'],
  'sleb': [
    '--config.prune.criterion=sleb',
    '--config.llm.schedule=iterative',
    '--config.llm.calibration_windows=8',
  ],
}
FULL_HEAL = ('block_influence',)
# The control: the unpruned model healed exactly as the pruned ones are, so
# the table can tell repair of a removal from adaptation to the calibration
# text's domain (the held-out text is other topics of the same manual).
CONTROL = ['--config.llm.remove=(1,)', '--config.llm.heal.at=(0,)']
RUNS['control'] = ['--config.prune.criterion=tail', *CONTROL]


def run_one(name: str, out: str, extra: list[str]) -> dict:
  workdir = os.path.join(out, name)
  cmd = [
    sys.executable,
    os.path.join(ROOT, 'main.py'),
    '--config=' + os.path.join(ROOT, 'configs', 'smollm2_depth.py'),
    f'--workdir={workdir}',
    *RUNS[name],
    '--config.llm.heal.modes=' + ('full,lora' if name in FULL_HEAL else 'lora'),
    *extra,
  ]
  print('$', ' '.join(cmd), flush=True)
  t0 = time.perf_counter()
  with open(os.path.join(out, f'{name}.log'), 'a') as log:
    subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
  print(f'  {name}: {time.perf_counter() - t0:.0f} s', flush=True)
  with open(os.path.join(workdir, 'results.json')) as f:
    return json.load(f)


NOTES = {
  'cka': 'one-shot; 1 − CKA of the mean-pooled final hidden states',
  'cka_last': "one-shot; 1 − CKA of the last token's final hidden state",
  'consensus': 'one-shot; rank sum of the five label-free metrics',
  'sglp': 'one call per k (mode one_shot, num_remove = k)',
  'angular_block': 'one call per k: the block of k consecutive layers',
  'sleb': 'iterative (greedy): one layer per step, 8 calibration windows',
  'block_influence': 'one-shot (ShortGPT)',
  'random': 'one-shot, seed 0',
  'tail': 'the deepest layers but the last',
}


def _ppl(value: float) -> str:
  return f'{value:.2f}' if value < 1e4 else f'{value:.3g}'


def table(results: dict[str, dict]) -> str:
  results = dict(results)
  control = results.pop('control', None)
  first = next(iter(results.values()))
  ks = sorted(int(k) for k in first['pruned'])
  heal_keys = sorted(
    {key for r in results.values() for key in r['healed']},
    key=lambda s: (int(s.split('/')[0]), s.split('/')[1]),
  )
  base = first['baseline']['perplexity']
  head = (
    ['criterion', 'score s']
    + [f'k={k}' for k in ks]
    + [f'k={key.split("/")[0]} {key.split("/")[1]}' for key in heal_keys]
  )
  lines = [
    f'Held-out perplexity (unpruned: {base:.3f}); k = layers removed of '
    f'{first["baseline"]["layers"]}; "full"/"lora" = after healing. Score s: '
    'seconds the criterion took to decide k = '
    f'{ks[-1]} (all of them for one-shot scores).',
    '',
    '| ' + ' | '.join(head) + ' |',
    '|' + '---|' * len(head),
  ]
  for name, r in results.items():
    cells = [name, f'{language_model.score_seconds(r, ks[-1]):.1f}']
    cells += [_ppl(r['pruned'][str(k)]['perplexity']) for k in ks]
    cells += [
      _ppl(r['healed'][key]['perplexity']) if key in r['healed'] else '—'
      for key in heal_keys
    ]
    lines.append('| ' + ' | '.join(cells) + ' |')
  lines += [
    '',
    'Next-token top-1 agreement with the unpruned model (held-out):',
    '',
    '| criterion | ' + ' | '.join(f'k={k}' for k in ks) + ' | '
    + ' | '.join(f'k={key.split("/")[0]} {key.split("/")[1]}' for key in heal_keys)
    + ' |',
    '|' + '---|' * (1 + len(ks) + len(heal_keys)),
  ]  # fmt: skip
  for name, r in results.items():
    cells = [name] + [f'{r["pruned"][str(k)]["agreement"]:.3f}' for k in ks]
    cells += [
      f'{r["healed"][key]["agreement"]:.3f}' if key in r['healed'] else '—'
      for key in heal_keys
    ]
    lines.append('| ' + ' | '.join(cells) + ' |')
  if control is not None:
    healed = '; '.join(
      f'{v["perplexity"]:.2f} ({key.split("/")[1]})'
      for key, v in control['healed'].items()
    )
    lines += [
      '',
      f'Control: the unpruned model healed the same way: perplexity {base:.3f}'
      f' → {healed}.',
    ]
  lines += ['', 'Runs, and the layers each removed at the largest k:', '']
  for name, r in results.items():
    lines.append(
      f'- {name} ({NOTES.get(name, "")}): '
      f'{", ".join(r["pruned"][str(ks[-1])]["removed"])}'
    )
  return '\n'.join(lines)


CAP = 1e4  # perplexities above are drawn at the cap (tail reaches 1e9)


def plot(results: dict[str, dict], path: str) -> None:
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(7, 4.5), dpi=120)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  for i, (name, r) in enumerate(results.items()):
    ks = sorted(int(k) for k in r['pruned'])
    xs = [0, *ks]
    ys = [r['baseline']['perplexity']] + [
      r['pruned'][str(k)]['perplexity'] for k in ks
    ]
    color = f'C{i % 10}'
    clipped = any(y > CAP for y in ys)
    ys = [min(y, CAP) for y in ys]
    label = f'{name} (clipped at {CAP:.0e})' if clipped else name
    ax.plot(xs, ys, marker='o', color=color, label=label)
    for key, h in r['healed'].items():
      k, mode = key.split('/')
      ax.plot(
        int(k),
        min(h['perplexity'], CAP),
        marker='s' if mode == 'full' else '^',
        color=color,
        linestyle='none',
      )
  ax.set_yscale('log')
  ax.set_xlabel('layers removed (of 30)')
  ax.set_ylabel('held-out perplexity')
  ax.set_title('SmolLM2-135M depth pruning (■ full heal, ▲ LoRA heal)')
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(path, format='png', facecolor='white')


def paired(results: dict[str, dict], k: int, reference: str) -> str:
  """95 % t-intervals of each criterion's held-out perplexity ratio to
  `reference`'s at `k`, paired over the held-out windows.

  Perplexity is exp(mean NLL); the windows are equal in length, so the log
  of a ratio is the mean over windows of the NLL differences. The models
  are rebuilt from each run's recorded removals and evaluated again where
  a run has no per-window NLLs recorded.
  """
  import scipy.stats

  from configs import smollm2_depth
  from lpjax import models, surgery
  from lpjax.data import text
  from lpjax.models import decoder

  config = smollm2_depth.get_config()
  lm = language_model.load(config)
  held = text.corpus_windows(
    lm.encode, 'heldout', config.llm.heldout_length, config.llm.heldout_windows
  )
  nll = {}
  for name, r in results.items():
    rec = r['pruned'].get(str(k))
    if rec is None:
      continue
    if 'window_nll' in rec:
      nll[name] = np.asarray(rec['window_nll'])
      continue
    arch, variables = surgery.apply(
      lm.arch, lm.variables, surgery.remove(rec['removed'])
    )
    ev = decoder.evaluate(models.build_model(arch), variables, held)
    if abs(ev['perplexity'] / rec['perplexity'] - 1) > 1e-4:
      raise RuntimeError(
        f'{name} at k={k}: re-evaluated perplexity {ev["perplexity"]} is '
        f'not the recorded {rec["perplexity"]}.'
      )
    nll[name] = ev['window_nll']
  n = len(held)
  t = scipy.stats.t.ppf(0.975, n - 1)
  lines = [
    f'Perplexity ratio to {reference} at k = {k}, 95 % t-interval paired '
    f'over {n} held-out windows (< 1: better than {reference}):',
    '',
    '| criterion | ratio | 95 % interval |',
    '|---|---:|---|',
  ]
  for name, v in nll.items():
    if name == reference:
      continue
    d = v - nll[reference]
    half = t * d.std(ddof=1) / np.sqrt(n)
    lines.append(
      f'| {name} | {np.exp(d.mean()):.3g} | {np.exp(d.mean() - half):.3g} – '
      f'{np.exp(d.mean() + half):.3g} |'
    )
  return '\n'.join(lines)


def main():
  argv = sys.argv[1:]
  extra = []
  if '--' in argv:
    cut = argv.index('--')
    argv, extra = argv[:cut], argv[cut + 1 :]
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--out', default='/tmp/lpjax_llm_depth')
  p.add_argument('--runs', default=','.join(RUNS))
  p.add_argument(
    '--paired',
    default='',
    help='comma-separated k: perplexity ratios to --reference with 95 %% '
    'intervals paired over held-out windows (re-evaluates where needed)',
  )
  p.add_argument('--reference', default='cka')
  p.add_argument(
    '--collect_only',
    action='store_true',
    help='only tabulate and plot the finished runs in --out',
  )
  args = p.parse_args(argv)
  names = [n for n in args.runs.split(',') if n]
  unknown = [n for n in names if n not in RUNS]
  if unknown:
    p.error(f'unknown runs {unknown}; valid: {list(RUNS)}')
  os.makedirs(args.out, exist_ok=True)
  print(f'{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs')
  if args.collect_only:
    results = {}
    for n in names:
      path = os.path.join(args.out, n, 'results.json')
      if os.path.exists(path):
        with open(path) as f:
          results[n] = json.load(f)
  else:
    results = {n: run_one(n, args.out, extra) for n in names}
  md = table(results)
  for k in [int(v) for v in args.paired.split(',') if v]:
    md += '\n\n' + paired(
      {n: r for n, r in results.items() if n != 'control'}, k, args.reference
    )
  with open(os.path.join(args.out, 'llm_depth.md'), 'w') as f:
    f.write(md + '\n')
  plot(
    {n: r for n, r in results.items() if n != 'control'},
    os.path.join(args.out, 'perplexity_vs_layers.png'),
  )
  print(md)


if __name__ == '__main__':
  main()
