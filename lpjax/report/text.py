"""Reports of the language-model and sentence-encoder runs (`lpjax.report`).

* Language model (`task='llm'`): `llm_table` (one row per number of layers
  removed: the layers, FLOPs, held-out perplexity, next-token agreement
  with the unpruned model, healed perplexities), `plot_perplexity`
  (perplexity against layers removed, pruned and healed) and the per-layer
  scores of every decision (`plots.plot_scores`).
* Sentence encoder (`task='embedding'`): `embedding_table` (one row per
  iteration: the layer removed, FLOPs and parameters, cosine to the unpruned
  embeddings, nearest-neighbour agreement), `plot_agreement` and the
  per-layer scores per iteration.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lpjax.report import plots
from lpjax.report.tables import SCORES_PLOT_FILENAME, PathLike

PERPLEXITY_PLOT_FILENAME = 'perplexity.png'
AGREEMENT_PLOT_FILENAME = 'agreement.png'


def llm_table(results: Mapping[str, Any]) -> str:
  """One row per k: removed layers, perplexity and agreement, healed too."""
  lines = [
    f'{results["model"]}, criterion {results["criterion"]} '
    f'({results["schedule"]}), {results["calibration_shape"][0]} × '
    f'{results["calibration_shape"][1]} calibration tokens, '
    f'{results["heldout_shape"][0]} × {results["heldout_shape"][1]} held-out.',
    '',
    '| layers removed | removed | FLOPs ↓ % | perplexity | next-token '
    'agreement | healed perplexity (mode) |',
    '|---|---|---|---|---|---|',
  ]

  def healed(k):
    return '; '.join(
      f'{v["perplexity"]:.3f} ({key.split("/")[1]})'
      for key, v in results.get('healed', {}).items()
      if key.split('/')[0] == k
    )

  lines.append(
    f'| 0 | — | 0.00 | {results["baseline"]["perplexity"]:.3f} | 1.0000 | '
    f'{healed("0") or "—"} |'
  )
  for k, r in sorted(results['pruned'].items(), key=lambda kv: int(kv[0])):
    lines.append(
      f'| {k} | {", ".join(r["removed"])} | {r["flops_reduction"]:.2f} | '
      f'{r["perplexity"]:.3f} | {r["agreement"]:.4f} | '
      f'{healed(k) or "—"} |'
    )
  return '\n'.join(lines)


def embedding_table(results: Mapping[str, Any]) -> str:
  """One row per iteration: removed layer, FLOPs and the agreement."""
  lines = [
    f'{results["model"]}, criterion {results["criterion"]}: '
    f'{results["calibration_shape"][0]} calibration and '
    f'{results["heldout_shape"][0]} held-out sentences.',
    '',
    '| iteration | removed | layers | FLOPs ↓ % | params ↓ % | cosine to '
    'unpruned (mean / min) | nearest-neighbour agreement |',
    '|---|---|---|---|---|---|---|',
    f'| 0 | — | {results["baseline"]["blocks"]} | 0.00 | 0.00 | 1.0000 / '
    '1.0000 | 1.0000 |',
  ]
  for r in results['iterations']:
    lines.append(
      f'| {r["iteration"]} | {", ".join(r["removed"])} | {r["blocks"]} | '
      f'{r["flops_reduction"]:.2f} | {r["params_reduction"]:.2f} | '
      f'{r["cosine"]:.4f} / {r["cosine_min"]:.4f} | {r["nn_agreement"]:.4f} |'
    )
  return '\n'.join(lines)


def plot_perplexity(results: Mapping[str, Any], path: PathLike) -> Path:
  """Held-out perplexity (log scale) against layers removed: the pruned
  models as a line, the healed ones as one marker style per mode."""
  fig = plots._new_figure((6.0, 4.0))
  ax = fig.add_subplot()
  pruned = sorted((int(k), v) for k, v in results['pruned'].items())
  ks = [0, *(k for k, _ in pruned)]
  ppl = [
    results['baseline']['perplexity'],
    *(v['perplexity'] for _, v in pruned),
  ]
  ax.plot(ks, ppl, marker='o', label=f'pruned ({results["criterion"]})')
  by_mode: dict[str, list[tuple[int, float]]] = {}
  for key, v in results.get('healed', {}).items():
    k, mode = key.split('/')
    by_mode.setdefault(mode, []).append((int(k), v['perplexity']))
  for marker, (mode, points) in zip('s^Dv', sorted(by_mode.items())):
    points.sort()
    ax.plot(
      [k for k, _ in points],
      [p for _, p in points],
      linestyle='none',
      marker=marker,
      label=f'healed ({mode})',
    )
  if min(ppl) > 0:
    ax.set_yscale('log')
  ax.set_xticks(ks)
  ax.set_xlabel('layers removed')
  ax.set_ylabel('held-out perplexity')
  ax.set_title(f'{results["model"]}: perplexity vs layers removed')
  ax.grid(True, alpha=0.3)
  ax.legend(loc='upper left', fontsize='small', framealpha=0.9)
  return plots._save(fig, path)


def plot_agreement(results: Mapping[str, Any], path: PathLike) -> Path:
  """Cosine to the unpruned embeddings (mean and min) and nearest-neighbour
  agreement against the FLOPs reduction, one point per iteration."""
  fig = plots._new_figure((6.0, 4.0))
  ax = fig.add_subplot()
  its = results['iterations']
  x = [0.0, *(r['flops_reduction'] for r in its)]
  for key, label, style in (
    ('cosine', 'cosine (mean)', 'o-'),
    ('cosine_min', 'cosine (min)', 's--'),
    ('nn_agreement', 'nearest-neighbour agreement', '^-'),
  ):
    ax.plot(x, [1.0, *(r[key] for r in its)], style, label=label)
  ax.set_xlabel('FLOPs reduction (%)')
  ax.set_ylabel('agreement with the unpruned model')
  ax.set_ylim(min(0.0, *(r['cosine_min'] for r in its)) if its else 0.0, 1.02)
  ax.set_title(f'{results["model"]}: layers removed one by one')
  ax.grid(True, alpha=0.3)
  ax.legend(loc='lower left', fontsize='small', framealpha=0.9)
  return plots._save(fig, path)


def _decisions_as_iterations(results: Mapping[str, Any]) -> dict[str, Any]:
  """The LLM run's decisions in the shape `plots.plot_scores` reads."""
  its = []
  for i, d in enumerate(results.get('decisions', [])):
    scores = {
      u: (np.nan if v is None else float(v)) for u, v in d['scores'].items()
    }
    its.append(
      {
        'iteration': d.get('k', d.get('step', i + 1)),
        'scores': scores,
        'removed': d['removed'],
      }
    )
  return {'iterations': its}


def write(workdir: Path, results: Mapping[str, Any]) -> str:
  """`report.md` and the figures of a language-model or encoder run."""
  if results.get('task') == 'llm':
    plot_perplexity(results, workdir / PERPLEXITY_PLOT_FILENAME)
    scored = _decisions_as_iterations(results)
    table, figure = llm_table(results), PERPLEXITY_PLOT_FILENAME
    title = f'Depth pruning of {results["model"]}'
    caption = 'Held-out perplexity vs layers removed'
    rows = 'decisions (k for one-shot per-k calls, step when iterative)'
  else:
    plot_agreement(results, workdir / AGREEMENT_PLOT_FILENAME)
    scored = results
    table, figure = embedding_table(results), AGREEMENT_PLOT_FILENAME
    title = f'Layer pruning of the sentence encoder {results["model"]}'
    caption = 'Agreement with the unpruned embeddings vs FLOPs reduction'
    rows = 'iterations'
  plots.plot_scores(scored, workdir / SCORES_PLOT_FILENAME)
  markdown = '\n'.join(
    [
      f'# {title}',
      '',
      table,
      '',
      '## Figures',
      '',
      f'![{caption}]({figure})',
      '',
      f'![Per-layer scores of the {rows}]({SCORES_PLOT_FILENAME})',
      '',
      'Scores: lower = more removable; the layers removed at each row are '
      'marked.',
      '',
    ]
  )
  return markdown
