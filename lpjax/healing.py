"""Healing: a short next-token fine-tune of a depth-pruned language model.

After layers are removed, LLM depth-pruning papers "heal" the model with a
brief fine-tune on text (Gromov et al. 2024 use QLoRA; Kim et al. 2024,
"Shortened LLaMA", compare LoRA with full fine-tuning). `heal` does either:

* `mode='full'`: every parameter is trained;
* `mode='lora'`: low-rank adapters (Hu et al. 2022, "LoRA") on the kernels
  the model's family names (`Family.lora_targets`; the decoder's: each
  remaining layer's MLP `gate`, `up` and `down`): each kernel `W`
  `[in, out]` becomes `W + (alpha / rank) · A B`, `A` `[in, rank]` drawn
  from N(0, 1/in), `B` `[rank, out]` zero (so training starts at the
  pruned model), and only `A`, `B` are trained. The adapters are merged
  into the kernels at the end: the healed model has the pruned model's
  shapes and costs nothing extra at inference.

The decoder is differentiated with each layer rematerialised
(`HealConfig.remat`, on by default; `Decoder(remat=True)`): the step keeps
every layer's input, not its attention weights and MLP activations.

The objective is the mean next-token negative log-likelihood of token
windows `[n, T]` (every position but the last predicts the next;
`lpjax.models.next_token.next_token_stats`, a chunk of positions' logits at a
time). Step `s` draws its `batch_size` windows from `windows` with the
seed `(seed, s)`, without replacement within a step, so a run that resumes
from step `s` sees exactly the batches a clean run would. The optimizer is AdamW
(weight decay 0 by default) with linear warmup over the first tenth of the
steps and cosine decay to zero, and global-norm gradient clipping at 1.

With a `directory`, the trained parameters, optimizer state and losses are
saved every `checkpoint_every` steps and at the end (`lpjax.checkpointing`,
atomic), and a call with the same directory continues from the latest
step; the result equals the uninterrupted run's bitwise on the same
machine.

A healed model is kept compactly by what healing trained (`heal`'s
`on_trained`): the LoRA adapters and their scale, or the full parameters,
in one safetensors file (`save_trained`, `load_trained`); merging the
adapters back (`merge_lora`, on JAX arrays as `heal` does) gives the
healed parameters bitwise on the same machine.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from lpjax import arch as arch_lib
from lpjax import checkpointing, errors, models
from lpjax.models import next_token

MODES = ('full', 'lora')


class HealingError(errors.UserError, ValueError):
  """Healing settings or a healing checkpoint that cannot be used."""


@dataclasses.dataclass(frozen=True)
class HealConfig:
  """How to heal.

  Attributes:
    mode: `'full'` or `'lora'`.
    steps: optimizer steps (0: no healing).
    learning_rate: peak AdamW learning rate.
    batch_size: windows per step.
    rank: LoRA rank.
    alpha: LoRA scale numerator (the update is `alpha / rank · A B`).
    weight_decay: AdamW's decoupled weight decay.
    seed: seeds the adapters' initialisation and the batch order.
    checkpoint_every: steps between checkpoints (with a directory).
    remat: rematerialise each decoder layer in the backward pass
      (`Decoder(remat=True)`): the step keeps each layer's input instead
      of every layer's attention weights and MLP activations, for about
      one more forward pass of compute. It changes the losses and
      gradients only by float32 rounding, so a healing may resume with
      the other setting (its later steps then differ from an
      uninterrupted run's by rounding, not bitwise equal).
  """

  mode: str = 'lora'
  steps: int = 100
  learning_rate: float = 1e-4
  batch_size: int = 8
  rank: int = 8
  alpha: float = 16.0
  weight_decay: float = 0.0
  seed: int = 0
  checkpoint_every: int = 10
  remat: bool = True

  def check(self) -> None:
    if self.mode not in MODES:
      raise HealingError(f'Unknown healing mode {self.mode!r}; valid: {MODES}.')
    if not isinstance(self.remat, bool):
      raise HealingError(
        f'healing remat must be True or False (True: recompute each '
        f'layer in the backward pass, less memory); got {self.remat!r}.'
      )
    for name in ('steps', 'batch_size', 'rank', 'checkpoint_every'):
      v = getattr(self, name)
      low = 0 if name == 'steps' else 1
      if not isinstance(v, int) or v < low:
        raise HealingError(
          f'healing {name} must be an integer >= {low}; got {v!r}.'
        )
    if not self.learning_rate > 0:
      raise HealingError(
        f'healing learning_rate must be > 0; got {self.learning_rate!r}.'
      )
    if not self.alpha > 0 or not self.weight_decay >= 0:
      raise HealingError(
        f'healing alpha must be > 0 and weight_decay >= 0; got '
        f'{self.alpha!r}, {self.weight_decay!r}.'
      )


def next_token_nll(model, params, ids: jax.Array) -> jax.Array:
  """Mean next-token negative log-likelihood of windows `ids` `[b, T]`.

  Computed a chunk of positions at a time (`next_token.next_token_stats`):
  neither the forward nor the gradient holds every position's logits.
  """
  nll, _ = next_token.next_token_stats(model, {'params': params}, ids)
  return jnp.mean(nll)


def lora_targets(arch: arch_lib.Arch) -> tuple[tuple[str, ...], ...]:
  """The kernel paths LoRA adapts in `arch`'s params (its family's choice).

  Raises:
    HealingError: the family declares no LoRA targets.
  """
  targets = models.get_family(arch.family).lora_targets
  if targets is None:
    raise HealingError(
      f'LoRA healing adapts the kernels a model family names; the '
      f'{arch.family} family names none (Family.lora_targets): heal with '
      f"mode='full'."
    )
  return tuple(tuple(path) for path in targets(arch))


def init_lora(arch: arch_lib.Arch, params: Any, rank: int, key: jax.Array):
  """Adapters for every LoRA target of `arch`, `{'a', 'b'}` at the path of
  the target's module (`{layer: {kernel: {'a', 'b'}}}` for a decoder)."""
  out: dict[str, Any] = {}
  for t, path in enumerate(lora_targets(arch)):
    w = params
    for name in path:
      w = w[name]
    if path[-1] != 'kernel' or len(w.shape) != 2:
      raise ValueError(
        f'LoRA target {path} must be a 2-D Dense kernel; got shape {w.shape}.'
      )
    fan_in, fan_out = w.shape
    k = jax.random.fold_in(key, t)
    node = out
    for name in path[:-2]:
      node = node.setdefault(name, {})
    node[path[-2]] = {
      'a': jax.random.normal(k, (fan_in, rank), jnp.float32) / np.sqrt(fan_in),
      'b': jnp.zeros((rank, fan_out), jnp.float32),
    }
  return out


def _is_adapter(node: Any) -> bool:
  """An `{'a', 'b'}` pair of arrays (not a module with submodules a, b)."""
  return (
    isinstance(node, Mapping)
    and set(node) == {'a', 'b'}
    and not isinstance(node['a'], Mapping)
  )


def merge_lora(params: Any, lora: Any, scale: float) -> Any:
  """`params` with every adapted kernel replaced by `W + scale · A B`."""
  out = dict(params)
  for name, sub in lora.items():
    if _is_adapter(sub):
      w = out[name]['kernel']
      delta = (sub['a'] @ sub['b']).astype(w.dtype)
      out[name] = {**out[name], 'kernel': w + scale * delta}
    else:
      out[name] = merge_lora(out[name], sub, scale)
  return out


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> np.ndarray:
  """The windows step `step` trains on (sorted, distinct)."""
  rng = np.random.default_rng([seed, step])
  return np.sort(rng.choice(n, size=min(batch_size, n), replace=False))


def _optimizer(cfg: HealConfig) -> optax.GradientTransformation:
  warmup = max(1, cfg.steps // 10)
  # Linear warmup from peak / (warmup + 1), so the first step trains too.
  lr = optax.warmup_cosine_decay_schedule(
    cfg.learning_rate / (warmup + 1),
    cfg.learning_rate,
    warmup,
    max(cfg.steps, warmup + 1),
  )
  return optax.chain(
    optax.clip_by_global_norm(1.0),
    optax.adamw(lr, weight_decay=cfg.weight_decay),
  )


def _compiled_step(arch: arch_lib.Arch, cfg: HealConfig):
  # Seed, batch size and checkpoint interval do not enter the program.
  return _step_program(
    arch, dataclasses.replace(cfg, seed=0, batch_size=1, checkpoint_every=1)
  )


@functools.lru_cache(maxsize=4)
def _step_program(arch: arch_lib.Arch, cfg: HealConfig):
  model = models.build_model(arch)
  if cfg.remat:  # the decoder's option (healing trains decoders only)
    model = model.clone(remat=True)
  tx = _optimizer(cfg)
  scale = cfg.alpha / cfg.rank

  def loss(trainable, frozen, ids):
    params = (
      trainable if cfg.mode == 'full' else merge_lora(frozen, trainable, scale)
    )
    return next_token_nll(model, params, ids)

  @jax.jit
  def step(trainable, opt_state, frozen, ids):
    value, grads = jax.value_and_grad(loss)(trainable, frozen, ids)
    updates, opt_state = tx.update(grads, opt_state, trainable)
    return optax.apply_updates(trainable, updates), opt_state, value

  return step, tx


def heal(
  arch: arch_lib.Arch,
  variables: Any,
  windows: np.ndarray,
  cfg: HealConfig,
  *,
  directory: str | None = None,
  progress: Callable[[int, float], None] | None = None,
  on_trained: Callable[[Any], None] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
  """Fine-tunes a decoder on token windows; returns `(variables, record)`.

  Args:
    arch: the (pruned) decoder.
    variables: its `{'params': ...}`.
    windows: training token windows `[n, T]` (calibration text only).
    cfg: the settings.
    directory: where to checkpoint and resume from (`None`: no checkpoints).
    progress: called as `progress(step, loss)` after every step.
    on_trained: called once, after the last step, with what was trained:
      the LoRA adapters (`mode='lora'`; `{module path: {'a', 'b'}}`, to
      merge with `merge_lora(params, adapters, cfg.alpha / cfg.rank)`) or
      the healed params (`mode='full'`); e.g. to keep them
      (`save_trained`). It changes nothing of the result.

  Returns:
    The healed variables (LoRA merged) and a record: `losses` (one per
    step), `seconds` (this call's), `steps`, `mode`, `resumed_from`.

  Raises:
    HealingError: bad settings, windows that are not `[n, T >= 2]`, a
      checkpoint of another architecture or settings in `directory`, or a
      loss that is not finite.
  """
  cfg.check()
  windows = np.asarray(windows, np.int32)
  if windows.ndim != 2 or windows.shape[1] < 2 or len(windows) < 1:
    raise HealingError(
      f'Healing windows must be [n >= 1, T >= 2] token ids; got {windows.shape}.'
    )
  params = variables['params']
  key = jax.random.PRNGKey(cfg.seed)
  if cfg.mode == 'full':
    trainable, frozen = params, None
  else:
    trainable, frozen = init_lora(arch, params, cfg.rank, key), params
  step_fn, tx = _compiled_step(arch, cfg)
  opt_state = tx.init(trainable)
  losses: list[float] = []
  start = 0
  resumed_from = None
  ckpt = checkpointing.Checkpoints(directory) if directory else None
  # Everything but the checkpoint interval and remat (float32 rounding
  # only) decides the result.
  settings = {
    k: v
    for k, v in dataclasses.asdict(cfg).items()
    if k not in ('checkpoint_every', 'remat')
  }
  meta_want = {'mode': cfg.mode, 'config': settings}
  try:  # a background save finishes before this returns or raises
    if ckpt is not None and ckpt.latest_step() is not None:
      saved_arch, meta = ckpt.restore_meta()
      saved = meta.get('config') or {}
      differ = sorted(
        k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k)
      )
      if saved_arch != arch or differ:
        what = (
          f'settings {", ".join(f"{k}: {saved.get(k)!r} -> {settings.get(k)!r}" for k in differ)}'
          if differ
          else 'another architecture'
        )
        raise HealingError(
          f'{directory} holds an unfinished healing with {what}. Delete that '
          'directory to start this healing afresh, or heal elsewhere.'
        )
      abstract = jax.eval_shape(
        lambda: {'trainable': trainable, 'opt_state': opt_state}
      )
      state = ckpt.restore(abstract)
      trainable, opt_state = state['trainable'], state['opt_state']
      losses = [float(v) for v in meta['losses']]
      start = resumed_from = ckpt.latest_step()
      logging.info('Healing resumes at step %d of %d.', start, cfg.steps)
    t0 = time.perf_counter()
    for s in range(start, cfg.steps):
      ids = jnp.asarray(
        windows[batch_indices(len(windows), cfg.batch_size, cfg.seed, s)]
      )
      trainable, opt_state, value = step_fn(trainable, opt_state, frozen, ids)
      value = float(value)
      if not np.isfinite(value):
        raise HealingError(
          f'Healing loss is {value} at step {s + 1} ({cfg.mode}, learning rate '
          f'{cfg.learning_rate}): lower the learning rate and heal afresh '
          f'(nothing after step {s} was saved).'
        )
      losses.append(value)
      if progress is not None:
        progress(s + 1, value)
      done = s + 1
      if ckpt is not None and (
        done % cfg.checkpoint_every == 0 or done == cfg.steps
      ):
        # Written while the next steps run (the step donates no buffer);
        # the last step is on disk before healing returns.
        ckpt.save(
          done,
          state={'trainable': trainable, 'opt_state': opt_state},
          arch=arch,
          meta={**meta_want, 'losses': losses},
          wait=done == cfg.steps,
        )
  finally:
    if ckpt is not None:
      ckpt.close()
  if on_trained is not None:
    on_trained(trainable)
  if cfg.mode == 'full':
    healed = trainable
  else:
    healed = merge_lora(params, trainable, cfg.alpha / cfg.rank)
  record = {
    'mode': cfg.mode,
    'steps': cfg.steps,
    'losses': losses,
    'seconds': time.perf_counter()
    - t0,  # of this call (after a resume: the rest)
    'resumed_from': resumed_from,
  }
  return {**variables, 'params': healed}, record


# The safetensors metadata key of `save_trained`'s description.
TRAINED_KEY = 'lpjax.healing'


def _flat(tree: Any, prefix: tuple[str, ...] = ()) -> dict[str, Any]:
  if isinstance(tree, Mapping):
    out: dict[str, Any] = {}
    for name, sub in tree.items():
      if '/' in str(name):
        raise ValueError(f'Parameter name {name!r} contains "/".')
      out.update(_flat(sub, (*prefix, str(name))))
    return out
  return {'/'.join(prefix): tree}


def save_trained(
  path: str | os.PathLike,
  trained: Any,
  *,
  mode: str,
  scale: float | None = None,
  meta: Mapping[str, Any] | None = None,
) -> str:
  """Writes what healing trained as one safetensors file; its SHA-256.

  Args:
    path: the file (written under a temporary name, then renamed).
    trained: `heal`'s `on_trained` value: LoRA adapters or full params.
    mode: `'lora'` or `'full'`.
    scale: the adapters' scale `alpha / rank` (`'lora'`).
    meta: more JSON to describe the file (e.g. which model was healed).

  Tensors are named by their path in the tree (`layer03/gate/a`,
  `layer03/attn_norm/scale`); the metadata key `lpjax.healing` holds
  `{'mode', 'scale', **meta}` as JSON (`scale` as Python's exact repr).
  """
  from safetensors.numpy import save_file

  if mode not in MODES or (mode == 'lora') != (scale is not None):
    raise ValueError(f'mode {mode!r} with scale {scale!r}.')
  tensors = {
    k: np.ascontiguousarray(jax.device_get(v))
    for k, v in _flat(trained).items()
  }
  info = {**dict(meta or {}), 'mode': mode, 'scale': scale}
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f'{path}.{os.getpid()}.tmp'
  try:
    save_file(tensors, tmp, metadata={TRAINED_KEY: json.dumps(info)})
    umask = os.umask(0)  # readable as any new file (the library writes 0600)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
  except BaseException:  # Ctrl-C too: no half-written file left behind
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return file_sha256(path)


def file_sha256(path: str | os.PathLike) -> str:
  """The SHA-256 of a file, hex."""
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      h.update(chunk)
  return h.hexdigest()


def load_trained(path: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
  """`(trained, info)` of a `save_trained` file.

  `trained` is the tree of JAX arrays (as `heal` trained them, so that
  `merge_lora` computes what `heal` did); `info` the metadata (`mode`,
  `scale`, ...).

  Raises:
    HealingError: the file is not a readable `save_trained` file.
  """
  from safetensors import SafetensorError, safe_open

  try:
    with safe_open(os.fspath(path), framework='numpy') as f:
      info = json.loads((f.metadata() or {})[TRAINED_KEY])
      flat = {k: f.get_tensor(k) for k in f.keys()}
  except (OSError, KeyError, ValueError, SafetensorError) as e:
    raise HealingError(
      f'{path} is not a healed model lpjax saved ({type(e).__name__}: {e}); '
      'it was damaged or replaced. Heal that model again.'
    ) from None
  tree: dict[str, Any] = {}
  for key, value in flat.items():
    *parents, leaf = key.split('/')
    node = tree
    for name in parents:
      node = node.setdefault(name, {})
    node[leaf] = jnp.asarray(value)
  return tree, info
