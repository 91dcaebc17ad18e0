"""Tables and figures for a layer-pruning run's `results.json`.

The pruning pipeline writes `results.json` into a run's workdir: the baseline
(iteration 0) and one entry per pruning iteration, with the removed block(s),
the remaining blocks per stage, the FLOPs and parameter reductions (in
percent), the test accuracy (a fraction) and the criterion's scores of the
candidates. This module turns that into a Markdown report with two figures:

  * `markdown_table`: one row per iteration, baseline first.
  * `plot_accuracy_vs_flops`: accuracy against FLOPs reduction for one or
    several runs (several seeds per run give a mean and a +-std band).
  * `plot_scores`: a heatmap of the block scores per iteration, with the
    removed block(s) marked.
  * `plot_pareto`: accuracy change against FLOPs reduction beside the
    published points for the same model and dataset (`paper_points`).
  * `write_report`: all of the above for one workdir.
  * `aggregate`: per-iteration mean and std over seeds.
  * `cka_heatmap`: a square similarity matrix.

It imports only NumPy, Matplotlib (lazily, and never `pyplot`: figures are
drawn on Agg canvases, so no display is needed) and the standard library, so
reports can be made without JAX.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

RESULTS_FILENAME = 'results.json'
REPORT_FILENAME = 'report.md'
ACCURACY_PLOT_FILENAME = 'accuracy_vs_flops.png'
SCORES_PLOT_FILENAME = 'scores.png'
SGLP_PLOT_FILENAME = 'sglp.png'
PARETO_PLOT_FILENAME = 'pareto.png'
EVALUATION_FILENAME = 'evaluation.json'  # written by lpjax.evaluate.run
ROBUSTNESS_PLOT_FILENAME = 'robustness.png'
# Published result tables (`third_party/papers/*.json`, numbers only).
PAPERS_DIR = Path(__file__).resolve().parents[1] / 'third_party' / 'papers'

# Scores are drawn on a log colour scale when all are positive and span more
# than this ratio.
LOG_SCALE_RATIO = 100.0

_MISSING = '—'
_BLOCK_NAME_RE = re.compile(r'^stage(\d+)_block(\d+)$')

Results = dict[str, Any]
PathLike = str | os.PathLike


# --------------------------------------------------------------------------
# Loading and small helpers.
# --------------------------------------------------------------------------


def load_results(path: PathLike) -> Results:
  """Reads a run's `results.json`.

  Args:
    path: the JSON file, or a workdir that holds `results.json`.

  Returns:
    The results dict; `iterations` is an empty list where absent.

  Raises:
    FileNotFoundError: there is no such file.
    ValueError: the file is not valid JSON, or not a results object (a JSON
      object with a `baseline` entry).
  """
  path = Path(path)
  if path.is_dir():
    path = path / RESULTS_FILENAME
  if not path.is_file():
    raise FileNotFoundError(
      f'No results file at {path}: run the pruning pipeline first (it '
      f'writes {RESULTS_FILENAME} into the workdir).'
    )
  try:
    with path.open(encoding='utf-8') as f:
      results = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f'{path} is not valid JSON: {e}') from e
  except UnicodeDecodeError as e:
    raise ValueError(f'{path} is not UTF-8 text: {e}') from e
  if not isinstance(results, dict) or not isinstance(
    results.get('baseline'), dict
  ):
    raise ValueError(
      f'{path} is not a pruning results file: expected a JSON object with '
      'a "baseline" object.'
    )
  if results.get('iterations') is None:
    results['iterations'] = []
  return results


def _iterations(results: Mapping[str, Any]) -> list[Mapping[str, Any]]:
  return list(results.get('iterations') or [])


def _rows(results: Mapping[str, Any]) -> list[Mapping[str, Any]]:
  """The baseline followed by the iterations."""
  return [results['baseline'], *_iterations(results)]


def _float(value: Any) -> float:
  """`value` as a float; NaN for None or anything non-numeric."""
  if value is None or isinstance(value, bool):
    return math.nan
  try:
    return float(value)
  except (TypeError, ValueError):
    return math.nan


def _removed(entry: Mapping[str, Any]) -> list[str]:
  removed = entry.get('removed') or []
  if isinstance(removed, str):
    return [removed]
  return [str(name) for name in removed]


def _filters_removed(
  entry: Mapping[str, Any], previous: Mapping[str, Any] | None
) -> tuple[int, int]:
  """(filters removed, widths shrunk) by the entry's edit of `previous`.

  Counted from the inner widths both records hold, of the units that are
  still there (a removed unit's filters count as the unit, not here).
  """
  now = entry.get('widths') or {}
  before = (previous or {}).get('widths') or {}
  removed = shrunk = 0
  for unit, widths in now.items():
    if unit in before:
      for w0, w1 in zip(before[unit], widths):
        if int(w1) < int(w0):
          removed += int(w0) - int(w1)
          shrunk += 1
  return removed, shrunk


def _edit_cell(
  entry: Mapping[str, Any], previous: Mapping[str, Any] | None
) -> str:
  """The removed blocks and the filters the edit removed, if any."""
  parts = [f'`{name}`' for name in _removed(entry)]
  removed, shrunk = _filters_removed(entry, previous)
  if shrunk:
    parts.append(f'{removed} filters in {shrunk} conv(s)')
  return ', '.join(parts) or _MISSING


def _reduction(
  entry: Mapping[str, Any], baseline: Mapping[str, Any], key: str, cost: str
) -> float:
  """`entry[key]` (percent), or derived from the costs where absent."""
  value = _float(entry.get(key))
  if math.isnan(value):
    base, now = _float(baseline.get(cost)), _float(entry.get(cost))
    if base > 0 and not math.isnan(now):
      value = 100.0 * (1.0 - now / base)
    elif entry is baseline:
      value = 0.0
  return value


def _flops_reduction(entry, baseline) -> float:
  return _reduction(entry, baseline, 'flops_reduction', 'macs')


def _params_reduction(entry, baseline) -> float:
  return _reduction(entry, baseline, 'params_reduction', 'params')


def _accuracy(entry: Mapping[str, Any]) -> float:
  return _float(entry.get('test_accuracy'))


def _delta_accuracy(entry, baseline) -> float:
  """Accuracy change against the baseline, a fraction."""
  if entry is baseline:
    return math.nan
  delta = _float(entry.get('delta_accuracy'))
  if math.isnan(delta):
    delta = _accuracy(entry) - _accuracy(baseline)
  return delta


def _fmt(value: float, spec: str, scale: float = 1.0) -> str:
  value = _float(value)
  if math.isnan(value):
    return _MISSING
  return format(value * scale, spec)


def block_sort_key(name: str) -> tuple[int, int, str]:
  """Network order of block names `stage<s>_block<i>`; others go last."""
  match = _BLOCK_NAME_RE.match(name)
  if match:
    return (int(match.group(1)), int(match.group(2)), '')
  return (1 << 30, 0, name)


# --------------------------------------------------------------------------
# Table.
# --------------------------------------------------------------------------


def markdown_table(results: Mapping[str, Any]) -> str:
  """A Markdown table of the run, one row per iteration, baseline first.

  Columns: iteration, removed block(s), blocks per stage, FLOPs and params
  reduction (%), test accuracy (%), accuracy change against the baseline
  (percentage points, signed) and, where any iteration records it, the
  accuracy right after removal, before fine-tuning (%).

  Args:
    results: a results dict (see `load_results`).

  Returns:
    The table, newline-terminated.
  """
  baseline = results['baseline']
  rows = _rows(results)
  with_before = any(
    not math.isnan(_float(it.get('accuracy_before_finetune')))
    for it in _iterations(results)
  )
  header = [
    'iteration',
    'removed block(s)',
    'blocks per stage',
    'FLOPs ↓ %',
    'params ↓ %',
    'accuracy %',
    'Δ accuracy (pp)',
  ]
  align = ['---:', ':---', ':---', '---:', '---:', '---:', '---:']
  if with_before:
    header.append('accuracy before fine-tune %')
    align.append('---:')
  lines = [_table_line(header), _table_line(align)]
  for i, entry in enumerate(rows):
    blocks = entry.get('blocks_per_stage')
    cells = [
      str(entry.get('iteration', i)),
      _edit_cell(entry, rows[i - 1] if i else None),
      '[' + ', '.join(str(b) for b in blocks) + ']' if blocks else _MISSING,
      _fmt(_flops_reduction(entry, baseline), '.2f'),
      _fmt(_params_reduction(entry, baseline), '.2f'),
      _fmt(_accuracy(entry), '.2f', 100.0),
      _fmt(_delta_accuracy(entry, baseline), '+.2f', 100.0),
    ]
    if with_before:
      before = math.nan
      if entry is not baseline:
        before = _float(entry.get('accuracy_before_finetune'))
      cells.append(_fmt(before, '.2f', 100.0))
    lines.append(_table_line(cells))
  return '\n'.join(lines) + '\n'


def _table_line(cells: Sequence[str]) -> str:
  return '| ' + ' | '.join(c.replace('|', r'\|') for c in cells) + ' |'


# --------------------------------------------------------------------------
# Aggregation over seeds.
# --------------------------------------------------------------------------


def aggregate(
  results_list: Sequence[Mapping[str, Any]], *, ddof: int = 0
) -> dict[str, Any]:
  """Per-iteration mean and std over several runs (seeds) of one setting.

  Iterations align by index: entry 0 is the baseline, entry `i` the `i`-th
  pruning iteration of every run that reached it (`n[i]` of them).

  Args:
    results_list: results dicts, one per seed.
    ddof: delta degrees of freedom of the standard deviations (NumPy's
      default 0; 1 gives the sample std). A std over fewer than `ddof + 1`
      runs is 0.

  Returns:
    A dict of equal-length lists (JSON-serialisable): `iteration`, `n`,
    `flops_reduction_mean`, `flops_reduction_std`, `params_reduction_mean`
    (percent), `accuracy_mean`, `accuracy_std` (fractions, like
    `test_accuracy`).

  Raises:
    ValueError: `results_list` is empty.
  """
  results_list = list(results_list)
  if not results_list:
    raise ValueError('aggregate needs at least one results dict.')
  num = max(len(_rows(r)) for r in results_list)
  out: dict[str, list] = {
    key: []
    for key in (
      'iteration',
      'n',
      'flops_reduction_mean',
      'flops_reduction_std',
      'params_reduction_mean',
      'accuracy_mean',
      'accuracy_std',
    )
  }
  for i in range(num):
    flops, params, accuracy = [], [], []
    for results in results_list:
      rows = _rows(results)
      if i < len(rows):
        baseline = results['baseline']
        flops.append(_flops_reduction(rows[i], baseline))
        params.append(_params_reduction(rows[i], baseline))
        accuracy.append(_accuracy(rows[i]))
    out['iteration'].append(i)
    out['n'].append(len(accuracy))
    out['flops_reduction_mean'].append(float(np.mean(flops)))
    out['flops_reduction_std'].append(_std(flops, ddof))
    out['params_reduction_mean'].append(float(np.mean(params)))
    out['accuracy_mean'].append(float(np.mean(accuracy)))
    out['accuracy_std'].append(_std(accuracy, ddof))
  return out


def _std(values: Sequence[float], ddof: int) -> float:
  if len(values) <= ddof:
    return 0.0
  return float(np.std(values, ddof=ddof))


# --------------------------------------------------------------------------
# Figures.
# --------------------------------------------------------------------------


def _new_figure(figsize: tuple[float, float]):
  """A Figure on an Agg canvas (no pyplot, no display, no global state)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=figsize, dpi=100, layout='constrained')
  FigureCanvasAgg(fig)
  return fig


def _save(fig, path: PathLike) -> Path:
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, format='png', dpi=fig.dpi, facecolor='white')
  return path


def plot_accuracy_vs_flops(
  runs: Mapping[str, Mapping[str, Any] | Sequence[Mapping[str, Any]]],
  path: PathLike,
  *,
  title: str | None = None,
) -> Path:
  """Plots test accuracy (%) against FLOPs reduction (%).

  Args:
    runs: label (e.g. the criterion) -> one results dict, or a list of
      results dicts (seeds), drawn as the per-iteration mean with a +-std
      band (see `aggregate`). A single results dict (one with a `baseline`
      entry) is also accepted and labelled by its criterion.
    path: the PNG to write.
    title: the figure title; a default one where None.

  Returns:
    `path`, as a Path.

  Raises:
    ValueError: `runs` is empty.
  """
  if isinstance(runs, Mapping) and isinstance(runs.get('baseline'), Mapping):
    runs = {str(runs.get('criterion') or 'run'): runs}
  if not runs:
    raise ValueError('plot_accuracy_vs_flops needs at least one run.')
  fig = _new_figure((6.4, 4.4))
  ax = fig.add_subplot()
  baselines = []
  for k, (label, value) in enumerate(runs.items()):
    seeds = [value] if isinstance(value, Mapping) else list(value)
    agg = aggregate(seeds)
    x = np.asarray(agg['flops_reduction_mean'])
    y = 100.0 * np.asarray(agg['accuracy_mean'])
    std = 100.0 * np.asarray(agg['accuracy_std'])
    color = f'C{k % 10}'
    name = f'{label} (n={len(seeds)})' if len(seeds) > 1 else str(label)
    ax.plot(x, y, marker='o', markersize=4, color=color, label=name)
    if len(seeds) > 1:
      ax.fill_between(x, y - std, y + std, color=color, alpha=0.2, lw=0)
    baselines.append((y[0], color, label))
  finite = [b for b in baselines if not math.isnan(b[0])]
  if finite and np.ptp([b[0] for b in finite]) <= 1e-9:
    ax.axhline(
      finite[0][0], color='0.3', ls='--', lw=1, label='baseline', zorder=0
    )
  else:
    for y0, color, label in finite:
      ax.axhline(
        y0, color=color, ls='--', lw=1, label=f'{label} baseline', zorder=0
      )
  ax.set_xlabel('FLOPs reduction (%)')
  ax.set_ylabel('Test accuracy (%)')
  ax.set_title(title or 'Accuracy vs FLOPs reduction')
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize='small')
  path = _save(fig, path)
  return path


def paper_points(
  model: str | None, dataset: str | None, directory: PathLike | None = None
) -> dict[str, list[tuple[float, float]]]:
  """Published `(FLOPs reduction %, Δ accuracy pp)` points for a model and
  dataset, `{method: points sorted by FLOPs reduction}`, from every table of
  `directory` (default `PAPERS_DIR`; its README describes the files).
  Labels carry no citation; each file's `citation` field has it.

  Raises:
    ValueError: a file that is not a valid table (naming the file).
  """
  folder = Path(directory) if directory is not None else PAPERS_DIR
  out: dict[str, list[tuple[float, float]]] = {}
  if not model or not dataset or not folder.is_dir():
    return out
  for path in sorted(folder.glob('*.json')):
    try:
      doc = json.loads(path.read_text(encoding='utf-8'))
      for table in doc['tables']:
        if table['model'] != model or table['dataset'] != dataset:
          continue
        for row in table['rows']:
          out.setdefault(str(row['method']), []).append(
            (float(row['flops_reduction']), float(row['delta_accuracy']))
          )
    except (KeyError, TypeError, ValueError) as e:
      raise ValueError(f'{path} is not a valid result table: {e!r}') from e
  return {k: sorted(v) for k, v in out.items()}


def plot_pareto(
  results: Mapping[str, Any],
  path: PathLike,
  papers: Mapping[str, Sequence[tuple[float, float]]],
  *,
  title: str | None = None,
) -> dict[str, tuple[list[float], list[float]]]:
  """Δ accuracy (pp) against FLOPs reduction (%): the run beside papers.

  Args:
    results: one run's results dict.
    path: the PNG to write.
    papers: `{method: [(FLOPs reduction %, Δ accuracy pp), ...]}`
      (`paper_points`).
    title: the figure title; a default one where None.

  Returns:
    Every series drawn, `{label: (x, y)}`: the run's label is its
    criterion followed by `(this run)`.
  """
  baseline = results['baseline']
  rows = _iterations(results)
  drawn = {
    f'{results.get("criterion") or "run"} (this run)': (
      [_flops_reduction(r, baseline) for r in rows],
      [100.0 * _delta_accuracy(r, baseline) for r in rows],
    )
  }
  for method, points in papers.items():
    drawn[method] = ([p[0] for p in points], [p[1] for p in points])
  fig = _new_figure((8.4, 4.6))
  ax = fig.add_subplot()
  markers = itertools.cycle('sv^<>Dph*')
  for k, (label, (x, y)) in enumerate(drawn.items()):
    if k == 0:
      ax.plot(x, y, marker='o', color='k', lw=2, label=label, zorder=3)
    elif 'Pons' in label or len(x) > 2:
      ax.plot(x, y, marker=next(markers), ms=5, lw=1, label=label)
    else:
      ax.scatter(x, y, marker=next(markers), s=20, label=label)
  ax.axhline(0.0, color='0.3', lw=1, ls='--', zorder=0)
  ax.set_xlabel('FLOPs reduction (%)')
  ax.set_ylabel('Accuracy change vs unpruned (pp)')
  model, dataset = results.get('model'), results.get('dataset')
  ax.set_title(title or f'{model} on {dataset}: this run and published')
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize='x-small', loc='center left', bbox_to_anchor=(1.01, 0.5))
  _save(fig, path)
  return drawn


def evaluation_table(evaluation: Mapping[str, Any]) -> str:
  """One row per model of `evaluation.json`: accuracy clean and under
  attack, latency speed-up beside the FLOPs ratio, energy."""
  eps = [f'{e:g}' for e in evaluation['eps']]
  sev = (
    [str(v) for v in evaluation.get('severities', [])]
    if evaluation.get('corruptions')
    else []
  )
  first = evaluation['models'][0] if evaluation['models'] else {}
  batches = list(first.get('latency', {}))
  sets = list(first.get('test_sets', {}))
  head = (
    ['model', 'FLOPs ↓ %', 'clean %']
    + [f'FGSM ε={e} %' for e in eps]
    + [f'PGD-{evaluation["pgd_steps"]} ε={e} %' for e in eps]
    + [f'corrupted s={v} %' for v in sev]
    + [f'{t} %' for t in sets]
    + [f'speed-up b={b} (ms)' for b in batches]
    + ['FLOPs ratio', 'energy']
  )
  lines = [_table_line(head), _table_line(['---'] * len(head))]
  for m in evaluation['models']:
    cells = [
      m['stage'],
      f'{m["flops_reduction"]:.2f}',
      f'{100 * m["clean_accuracy"]:.2f}',
      *[f'{100 * m["fgsm"][e]:.2f}' for e in eps],
      *[f'{100 * m["pgd"][e]:.2f}' for e in eps],
      *[f'{100 * m["corruption_mean"][v]:.2f}' for v in sev],
      *[f'{100 * m["test_sets"][t]:.2f}' for t in sets],
      *[
        f'{m["latency"][b]["speedup"]:.2f}× ({m["latency"][b]["median_ms"]:.3g})'
        for b in batches
      ],
      f'{m["flops_ratio"]:.2f}×',
      (
        f'{m["energy"]["joules_per_call"]:.3g} J'
        if m['energy'].get('measured')
        else 'not measured'
      ),
    ]
    lines.append(_table_line(cells))
  d = evaluation['device']
  energy_note = next(
    (
      m['energy']['reason']
      for m in evaluation['models']
      if not m['energy'].get('measured')
    ),
    None,
  )
  lines += [
    '',
    f'{evaluation["examples"]} test examples; ε in pixel units (pixels in '
    f'[0, 1]); corrupted: mean accuracy over '
    f'{len(evaluation.get("corruptions", []))} CIFAR-10-C corruptions at '
    f'each severity, on {evaluation.get("corruption_examples", 0)} images; '
    f'latency: median of jitted eval forwards on {d["device"]} '
    f'({d["backend"]}, {d["cpu_threads"]} CPU threads), compile excluded.'
    + (f' Energy not measured: {energy_note}.' if energy_note else ''),
  ]
  return '\n'.join(lines) + '\n'


def plot_robustness(evaluation: Mapping[str, Any], path: PathLike) -> Path:
  """Accuracy clean and under FGSM / PGD against FLOPs reduction."""
  fig = _new_figure((6.4, 4.4))
  ax = fig.add_subplot()
  models_ = evaluation['models']
  x = [m['flops_reduction'] for m in models_]
  ax.plot(
    x, [100 * m['clean_accuracy'] for m in models_], marker='o', label='clean'
  )
  for e in evaluation['eps']:
    key = f'{e:g}'
    for attack, marker in (('fgsm', 's'), ('pgd', '^')):
      ax.plot(
        x,
        [100 * m[attack][key] for m in models_],
        marker=marker,
        label=f'{attack.upper()} ε={key}',
      )
  if evaluation.get('corruptions'):
    ax.plot(
      x,
      [
        100 * float(np.mean(list(m['corruption_mean'].values())))
        for m in models_
      ],
      marker='D',
      label='corrupted (mean)',
    )
  ax.set_xlabel('FLOPs reduction (%)')
  ax.set_ylabel('Test accuracy (%)')
  ax.set_title('Robustness of the pruned models')
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize='small')
  return _save(fig, path)


def _score_matrix(results: Mapping[str, Any]):
  """(matrix [iterations, blocks] with NaN gaps, block names, removed)."""
  iterations = _iterations(results)
  seen: dict[str, None] = {}
  for it in iterations:
    for name in (it.get('scores') or {}).keys():
      seen.setdefault(str(name), None)
    for name in _removed(it):
      seen.setdefault(name, None)
  # `sorted` is stable: unrecognised names keep their first-seen order.
  blocks = sorted(seen, key=block_sort_key)
  column = {name: j for j, name in enumerate(blocks)}
  matrix = np.full((len(iterations), len(blocks)), np.nan)
  removed = []
  for i, it in enumerate(iterations):
    for name, score in (it.get('scores') or {}).items():
      matrix[i, column[str(name)]] = _float(score)
    removed.append([column[name] for name in _removed(it)])
  return matrix, blocks, removed


def _norm(values: np.ndarray, *, log: bool | None = None):
  """LogNorm for positive scores spanning > `LOG_SCALE_RATIO`, else linear."""
  from matplotlib import colors

  finite = values[np.isfinite(values)]
  vmin, vmax = float(finite.min()), float(finite.max())
  if log is None:
    log = vmin > 0 and vmax / vmin > LOG_SCALE_RATIO
  if log and vmin > 0:
    return colors.LogNorm(vmin=vmin, vmax=vmax)
  if vmin == vmax:
    vmin, vmax = vmin - 0.5, vmax + 0.5
  return colors.Normalize(vmin=vmin, vmax=vmax)


def plot_scores(
  results: Mapping[str, Any],
  path: PathLike,
  *,
  log: bool | None = None,
  cmap: str = 'viridis',
  title: str | None = None,
) -> Path:
  """Plots the criterion's block scores per iteration as a heatmap.

  Rows are iterations, columns every block scored (or removed) in any
  iteration, in network order. Cells of blocks not scored in an iteration
  (already removed, or never candidates) are blank. The block(s) removed in
  each iteration are outlined in red and crossed.

  Args:
    results: a results dict (see `load_results`).
    path: the PNG to write.
    log: log colour scale; None picks it when all scores are positive and
      span more than `LOG_SCALE_RATIO`.
    cmap: a Matplotlib colormap name.
    title: the figure title; a default one where None.

  Returns:
    `path`, as a Path.
  """
  from matplotlib import colormaps
  from matplotlib.patches import Rectangle

  matrix, blocks, removed = _score_matrix(results)
  criterion = results.get('criterion')
  title = title or (
    f'Block scores ({criterion}; lower = more removable)'
    if criterion
    else 'Block scores (lower = more removable)'
  )
  if not np.isfinite(matrix).any():
    fig = _new_figure((6.4, 2.4))
    ax = fig.add_subplot()
    message = (
      'No pruning iterations (baseline only)'
      if not _iterations(results)
      else 'No block scores recorded'
    )
    ax.text(0.5, 0.5, message, ha='center', va='center', fontsize=12)
    ax.set_axis_off()
    ax.set_title(title)
    return _save(fig, path)

  num_iters, num_blocks = matrix.shape
  fig = _new_figure(
    (max(6.4, 1.6 + 0.32 * num_blocks), max(3.0, 1.6 + 0.32 * num_iters))
  )
  ax = fig.add_subplot()
  colormap = colormaps[cmap].with_extremes(bad='white')
  image = ax.imshow(
    np.ma.masked_invalid(matrix),
    aspect='auto',
    interpolation='nearest',
    cmap=colormap,
    norm=_norm(matrix, log=log),
  )
  for i, columns in enumerate(removed):
    for j in columns:
      ax.add_patch(
        Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor='red', lw=2)
      )
      ax.plot(j, i, marker='x', color='red', markersize=6, mew=1.5)
  iterations = [
    it.get('iteration', i + 1) for i, it in enumerate(_iterations(results))
  ]
  ax.set_xticks(range(num_blocks), blocks, rotation=90, fontsize='x-small')
  ax.set_yticks(range(num_iters), [str(i) for i in iterations])
  ax.set_xlim(-0.5, num_blocks - 0.5)
  ax.set_ylim(num_iters - 0.5, -0.5)
  ax.set_xlabel('block')
  ax.set_ylabel('iteration')
  ax.set_title(title)
  fig.colorbar(image, ax=ax, label='score')
  return _save(fig, path)


def cka_heatmap(
  matrix: Any,
  labels: Sequence[str],
  path: PathLike,
  *,
  title: str | None = None,
  vmin: float | None = 0.0,
  vmax: float | None = 1.0,
  cmap: str = 'magma',
  annotate: bool | None = None,
) -> Path:
  """Plots a square similarity matrix (e.g. CKA between block outputs).

  Args:
    matrix: `[n, n]` similarities.
    labels: `n` names, for both axes.
    path: the PNG to write.
    title: the figure title; a default one where None.
    vmin: colour scale bottom; the data's minimum where None.
    vmax: colour scale top; the data's maximum where None.
    cmap: a Matplotlib colormap name.
    annotate: write the values into the cells; None does so for n <= 12.

  Returns:
    `path`, as a Path.

  Raises:
    ValueError: `matrix` is not square or `labels` does not match it.
  """
  matrix = np.asarray(matrix, dtype=float)
  if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
    raise ValueError(f'Expected a square matrix, got shape {matrix.shape}.')
  n = matrix.shape[0]
  labels = [str(label) for label in labels]
  if len(labels) != n:
    raise ValueError(f'Got {len(labels)} labels for a {n}x{n} matrix.')
  if annotate is None:
    annotate = n <= 12
  size = max(4.0, 1.8 + 0.4 * n)
  fig = _new_figure((size + 1.0, size))
  ax = fig.add_subplot()
  image = ax.imshow(
    matrix, cmap=cmap, vmin=vmin, vmax=vmax, interpolation='nearest'
  )
  if annotate:
    norm = image.norm
    for i in range(n):
      for j in range(n):
        value = matrix[i, j]
        if np.isfinite(value):
          dark = norm(value) < 0.5
          ax.text(
            j,
            i,
            f'{value:.2f}',
            ha='center',
            va='center',
            fontsize='x-small',
            color='white' if dark else 'black',
          )
  ax.set_xticks(range(n), labels, rotation=90, fontsize='x-small')
  ax.set_yticks(range(n), labels, fontsize='x-small')
  ax.set_title(title or 'Similarity')
  fig.colorbar(image, ax=ax)
  return _save(fig, path)


def plot_sglp(diagnostics: Mapping[str, Any], path: PathLike) -> Path:
  """SGLP's view of one iteration: CKA heatmap and per-unit GradNorm.

  Left: the CKA matrix between the stem and every unit output, segment
  boundaries drawn as lines, removed units' labels in red with an x on the
  diagonal. Right: every unit's GradNorm, removed units in red.

  Args:
    diagnostics: an SGLP decision's diagnostics (`cka_labels`,
      `cka_matrix`, `segments`, `grad_norms`, `removed`).
    path: the PNG to write.

  Returns:
    `path`, as a Path.

  Raises:
    ValueError: a key is missing or the matrix does not match its labels.
  """
  missing = [
    k
    for k in ('cka_labels', 'cka_matrix', 'segments', 'grad_norms', 'removed')
    if k not in diagnostics
  ]
  if missing:
    raise ValueError(f'SGLP diagnostics miss {missing}.')
  labels = [str(x) for x in diagnostics['cka_labels']]
  matrix = np.asarray(diagnostics['cka_matrix'], dtype=float)
  if matrix.shape != (len(labels), len(labels)):
    raise ValueError(
      f'cka_matrix {matrix.shape} does not match {len(labels)} labels.'
    )
  removed = set(diagnostics['removed'])
  n = len(labels)
  size = max(4.0, 1.8 + 0.3 * n)
  fig = _new_figure((2 * size + 1.5, size))
  ax, bars = fig.subplots(1, 2)
  image = ax.imshow(matrix, cmap='magma', vmin=0.0, vmax=1.0)
  # Segment k starts at its first unit; index 0 of the matrix is the stem.
  for seg in diagnostics['segments'][1:]:
    edge = labels.index(seg[0]) - 0.5
    ax.axhline(edge, color='cyan', linewidth=1.5)
    ax.axvline(edge, color='cyan', linewidth=1.5)
  for i, name in enumerate(labels):
    if name in removed:
      ax.plot(i, i, 'x', color='red', markersize=8, markeredgewidth=2)
  ax.set_xticks(range(n), labels, rotation=90, fontsize='x-small')
  ax.set_yticks(range(n), labels, fontsize='x-small')
  for tick in [*ax.get_xticklabels(), *ax.get_yticklabels()]:
    if tick.get_text() in removed:
      tick.set_color('red')
  ax.set_title('CKA between unit outputs (segments, removed x)')
  fig.colorbar(image, ax=ax, label='linear CKA')
  units = [u for u in labels if u in diagnostics['grad_norms']]
  values = [float(diagnostics['grad_norms'][u]) for u in units]
  colors = ['tab:red' if u in removed else 'tab:blue' for u in units]
  bars.bar(range(len(units)), values, color=colors)
  bars.set_xticks(range(len(units)), units, rotation=90, fontsize='x-small')
  bars.set_ylabel('GradNorm')
  bars.set_title('GradNorm per unit (removed in red)')
  return _save(fig, path)


def _sglp_diagnostics(results: Mapping[str, Any]) -> Mapping[str, Any] | None:
  """The first iteration's SGLP diagnostics, if the run recorded any."""
  for entry in _iterations(results):
    diag = entry.get('diagnostics') or {}
    if 'cka_matrix' in diag and 'segments' in diag:
      return diag
  return None


# --------------------------------------------------------------------------
# Report.
# --------------------------------------------------------------------------


def _summary(results: Mapping[str, Any]) -> str:
  """One line: model, dataset, criterion, iterations and the outcome."""
  parts = [
    f'**{key.capitalize()}:** {results.get(key) or _MISSING}'
    for key in ('model', 'dataset', 'criterion')
  ]
  iterations = _iterations(results)
  baseline = results['baseline']
  parts.append(f'**Iterations:** {len(iterations)}')
  line = ' · '.join(parts)
  acc = _fmt(_accuracy(baseline), '.2f', 100.0)
  if not iterations:
    return f'{line}\n\nBaseline only: accuracy {acc} %.'
  last = iterations[-1]
  removed = sum(len(_removed(it)) for it in iterations)
  rows = _rows(results)
  filters = sum(
    _filters_removed(now, before)[0] for before, now in itertools.pairwise(rows)
  )
  what = f'{removed} block(s)' + (f' and {filters} filters' if filters else '')
  return (
    f'{line}\n\n'
    f'Removed {what}: FLOPs ↓ '
    f'{_fmt(_flops_reduction(last, baseline), ".2f")} %, params ↓ '
    f'{_fmt(_params_reduction(last, baseline), ".2f")} %, accuracy '
    f'{acc} % → {_fmt(_accuracy(last), ".2f", 100.0)} % '
    f'({_fmt(_delta_accuracy(last, baseline), "+.2f", 100.0)} pp).'
  )


def everything_table(results: Mapping[str, Any]) -> str | None:
  """Per step of an `everything` run: the children, their CKA, the winner.

  Returns:
    A Markdown table, or None if no iteration recorded `everything`
    diagnostics.
  """
  steps = [
    (it, (it.get('diagnostics') or {}).get('everything'))
    for it in _iterations(results)
  ]
  steps = [(it, d) for it, d in steps if d]
  if not steps:
    return None
  base = results['baseline']
  header = [
    'iteration',
    'filters removed',
    'CKA layer child',
    'CKA filter child',
    'winner',
    'layer child FLOPs ↓ % / params ↓ %',
    'filter child FLOPs ↓ % / params ↓ %',
  ]
  lines = [
    _table_line(header),
    _table_line(['---:', '---:', '---:', '---:', ':---', '---:', '---:']),
  ]

  def child(record):
    if not record:
      return _MISSING
    flops = _reduction(record, base, '_', 'macs')
    params = _reduction(record, base, '_', 'params')
    return f'{_fmt(flops, ".2f")} / {_fmt(params, ".2f")}'

  for it, d in steps:
    lines.append(
      _table_line(
        [
          str(it.get('iteration', _MISSING)),
          str(d.get('filters_removed', _MISSING)),
          _fmt(d.get('cka_layer'), '.4f'),
          _fmt(d.get('cka_filter'), '.4f'),
          str(d.get('winner', _MISSING)),
          child(d.get('layer_child')),
          child(d.get('filter_child')),
        ]
      )
    )
  return '\n'.join(lines) + '\n'


def widths_table(results: Mapping[str, Any]) -> str | None:
  """The final model's inner widths of every block whose widths changed.

  Returns:
    A Markdown table (block, baseline widths, final widths), or None if no
    width changed (or the run did not record widths).
  """
  iterations = _iterations(results)
  first = results['baseline'].get('widths')
  last = iterations[-1].get('widths') if iterations else None
  if not first or not last:
    return None
  changed = [
    (b, first[b], last[b])
    for b in sorted(last, key=block_sort_key)
    if b in first and list(first[b]) != list(last[b])
  ]
  if not changed:
    return None
  lines = [
    _table_line(['block', 'baseline widths', 'final widths']),
    _table_line([':---', ':---', ':---']),
  ]
  for b, w0, w1 in changed:
    lines.append(_table_line([f'`{b}`', str(list(w0)), str(list(w1))]))
  return '\n'.join(lines) + '\n'


def _section(title: str, table: str | None) -> list[str]:
  return [] if table is None else [f'## {title}', '', table.rstrip('\n'), '']


def write_report(workdir: PathLike, *, title: str | None = None) -> str:
  """Writes `report.md` and its figures for the run in `workdir`.

  Reads `workdir/results.json` and writes `report.md`,
  `accuracy_vs_flops.png` and `scores.png` beside it, and `pareto.png`
  when published results exist for the run's model and dataset.

  Args:
    workdir: the run's workdir.
    title: the report's title; a default one where None.

  Returns:
    The Markdown written to `report.md`.

  Raises:
    FileNotFoundError: `workdir/results.json` is missing.
    ValueError: it is not a valid results file.
  """
  workdir = Path(workdir)
  results = load_results(workdir / RESULTS_FILENAME)
  criterion = results.get('criterion') or 'run'
  plot_accuracy_vs_flops(
    {str(criterion): results}, workdir / ACCURACY_PLOT_FILENAME
  )
  plot_scores(results, workdir / SCORES_PLOT_FILENAME)
  sglp_diag = _sglp_diagnostics(results)
  if sglp_diag is not None:
    plot_sglp(sglp_diag, workdir / SGLP_PLOT_FILENAME)
  papers = paper_points(results.get('model'), results.get('dataset'))
  if papers:
    plot_pareto(results, workdir / PARETO_PLOT_FILENAME, papers)
  evaluation = None
  if (workdir / EVALUATION_FILENAME).is_file():
    evaluation = json.loads((workdir / EVALUATION_FILENAME).read_text())
    plot_robustness(evaluation, workdir / ROBUSTNESS_PLOT_FILENAME)
  if title is None:
    model = results.get('model')
    title = f'Layer pruning of {model}' if model else 'Layer pruning'
  markdown = '\n'.join(
    [
      f'# {title}',
      '',
      _summary(results),
      '',
      '## Iterations',
      '',
      markdown_table(results).rstrip('\n'),
      '',
      *_section(
        'Everything: the two children of every step', everything_table(results)
      ),
      *_section(
        'Final inner widths (blocks whose filters were pruned)',
        widths_table(results),
      ),
      *_section(
        'Beyond accuracy (python -m lpjax.evaluate)',
        evaluation_table(evaluation) if evaluation else None,
      ),
      '## Figures',
      '',
      f'![Accuracy vs FLOPs reduction]({ACCURACY_PLOT_FILENAME})',
      '',
      f'![Block scores per iteration]({SCORES_PLOT_FILENAME})',
      '',
    ]
    + (
      [f'![SGLP: CKA segments and GradNorm]({SGLP_PLOT_FILENAME})', '']
      if sglp_diag is not None
      else []
    )
    + (
      [
        f'![Accuracy change vs FLOPs reduction, beside published results]'
        f'({PARETO_PLOT_FILENAME})',
        '',
        'Published points: `third_party/papers/` (citations in each file).',
        '',
      ]
      if papers
      else []
    )
    + (
      [f'![Robustness vs FLOPs reduction]({ROBUSTNESS_PLOT_FILENAME})', '']
      if evaluation
      else []
    )
  )
  (workdir / REPORT_FILENAME).write_text(markdown, encoding='utf-8')
  return markdown
