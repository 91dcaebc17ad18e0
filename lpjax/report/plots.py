"""Figures of a pruning run (`lpjax.report`): accuracy vs FLOPs, the
published points beside a run, robustness, per-unit scores per iteration,
CKA heatmaps and SGLP's segments.

Matplotlib is imported lazily and `pyplot` never: figures are drawn on Agg
canvases, so no display is needed.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lpjax.report.tables import (
  LOG_SCALE_RATIO,
  PAPERS_DIR,
  PathLike,
  _delta_accuracy,
  _float,
  _flops_reduction,
  _iterations,
  _removed,
  aggregate,
  block_sort_key,
)


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


def plot_robustness(evaluation: Mapping[str, Any], path: PathLike) -> Path:
  """Accuracy clean and under FGSM / PGD against FLOPs reduction."""
  fig = _new_figure((8.0, 4.4))
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
  # Beside the axes, clear of every line.
  ax.legend(fontsize='small', loc='center left', bbox_to_anchor=(1.01, 0.5))
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


def protected(results: Mapping[str, Any]) -> list[list[str]]:
  """Per iteration, the scored units the floor kept: those of a stage that
  had `min_blocks_per_stage` units or fewer when the iteration decided.

  Read from the model before each iteration (the baseline's or the previous
  iteration's `widths`, in network order, and `blocks_per_stage`); empty
  where the results do not record them.
  """
  floor = (results.get('config') or {}).get('min_blocks_per_stage')
  rows = [results.get('baseline') or {}, *_iterations(results)]
  out = []
  for parent, it in itertools.pairwise(rows):
    names, counts = (
      list(parent.get('widths') or ()),
      parent.get('blocks_per_stage'),
    )
    kept: list[str] = []
    if floor is not None and counts and sum(counts) == len(names):
      start = 0
      for count in counts:
        if count <= floor:
          kept += names[start : start + count]
        start += count
    scored = set(it.get('scores') or ())
    out.append([u for u in kept if u in scored])
  return out


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
  each iteration are outlined in red and crossed; blocks the floor kept
  (`protected`: their stage was at `min_blocks_per_stage`) are hatched, so
  a lower score there is not a block the method passed over. A legend
  below the axes says so.

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
  column = {name: j for j, name in enumerate(blocks)}
  kept = protected(results)
  for i, names in enumerate(kept):
    for name in names:
      ax.add_patch(
        Rectangle(
          (column[name] - 0.5, i - 0.5), 1, 1, fill=False, hatch='///',
          edgecolor='0.35', lw=0,
        )
      )  # fmt: skip
  handles = [
    Rectangle((0, 0), 1, 1, fill=False, edgecolor='red', lw=2, label='removed')
  ]
  if any(kept):
    floor = results['config']['min_blocks_per_stage']
    handles.append(
      Rectangle(
        (0, 0), 1, 1, fill=False, hatch='///', edgecolor='0.35', lw=0,
        label=f'kept by the floor ({floor} per stage)',
      )
    )  # fmt: skip
  fig.legend(
    handles=handles, loc='outside lower center', ncol=2, fontsize='x-small'
  )
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
