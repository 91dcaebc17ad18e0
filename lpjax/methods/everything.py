"""Pruning Everything, Everywhere, All at Once (Nascimento et al. 2025).

Each step builds two children of the current model that remove the same
number of filters, fine-tunes both briefly, and keeps the one whose pooled
features are more similar (linear CKA) to the parent's:

1. the **layer child**: a layer criterion (`layer_criterion`, default
   `kl` as in the authors' code) removes one unit; `D` = the filters it
   removes (every convolution's output channels, `lpjax.models.num_filters`);
2. the **filter child**: a filter criterion (`filter_criterion`, default
   `kl`) removes exactly `D` filters from the prunable inner widths
   (`lpjax.methods.filters.select`); if they cannot give up `D` while
   keeping one filter each, the layer child is taken;
3. both are fine-tuned for `probe_epochs` as their own checkpointed stages
   (`Context.finetune`: a run killed during the second probe resumes it
   without retraining the first);
4. arbitration: linear CKA between the parent's and each child's
   representation (`representation`, default `pooled`) on the **holdout
   split carved from the training data** (`Context.holdout`) - the
   authors' CIFAR script used the test set, which lets the test data steer
   the pruning; the layer child wins ties;
5. the winner continues: its probe-trained variables are the start of the
   iteration's fine-tune (`winner_continues=True`), or the pipeline
   fine-tunes the winner's edit applied to the parent (`False`).

The run ends when layer pruning is exhausted (no unit removable above the
floor) or the pipeline's target is reached. Hyperparameters:
`config.prune.everything.<name>` (`configs/base.py`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from lpjax import cka, flops, models, scoring, surgery
from lpjax.methods import filters
from lpjax.methods.context import Context, Decision
from lpjax.methods.record import Hparam

REPRESENTATIONS = ('pooled', 'logits')

HPARAMS = {
  'layer_criterion': Hparam(
    'kl', 'the layer child: any layer method but everything'
  ),
  'filter_criterion': Hparam(
    'kl',
    'the filter child: l1 | kl | hrank | random',
    choices=tuple(filters.FILTER_CRITERIA),
  ),
  'probe_epochs': Hparam(10, 'fine-tuning epochs of each child', low=0),
  'arbitration_examples': Hparam(
    0, 'holdout examples the CKA arbitration uses (0 = all)', low=0
  ),
  'representation': Hparam(
    'pooled', 'what the arbitration compares', choices=REPRESENTATIONS
  ),
  'winner_continues': Hparam(
    True,
    "the iteration fine-tunes the winner's probe-trained weights (False: "
    'the edit applied to the parent)',
  ),
  'kl_direction': Hparam(
    'forward',
    'direction of the kl layer and filter criteria: forward, KL(p || q) '
    "(CURL) | reverse, KL(q || p) (the authors' code)",
    choices=('forward', 'reverse'),
  ),
  'filter_chunk': Hparam(
    filters.FILTER_CHUNK,
    'masked forwards at a time of the kl filter criterion',
    low=1,
  ),
}


def validate(hp: Mapping[str, Any]) -> None:
  """The layer criterion is a registered method other than this one."""
  from lpjax import methods  # the registry imports this module

  if hp['layer_criterion'] == 'everything':
    raise ValueError('everything.layer_criterion cannot be everything.')
  methods.get_method(hp['layer_criterion'])


def _pooled(model, variables, x):
  return models.representations(model, variables, x, ['pooled'])['pooled']


def _logits(model, variables, x):
  return models.representations(model, variables, x, ['logits'])['logits']


_FEATURES = {'pooled': _pooled, 'logits': _logits}


def features(ctx: Context, arch, variables, inputs, representation):
  """`[n, d]` representation of `inputs` (eval mode), batched."""
  out = scoring.map_batches(
    _FEATURES[representation],
    arch,
    variables,
    inputs,
    data_batch_size=ctx.data_batch_size,
    mesh=ctx.mesh,
  )
  out = np.asarray(out, np.float64)
  return out.reshape(-1, out.shape[-1])


def _similarity(ref: np.ndarray, child: np.ndarray) -> float:
  with jax.enable_x64(True):
    value = float(cka.linear_cka(ref, child))
  if not np.isfinite(value):
    raise FloatingPointError(
      'The arbitration CKA is not finite: a child or the parent has '
      'constant features on the holdout examples.'
    )
  return value


def _child_record(arch, shape, edit) -> dict[str, Any]:
  cost = flops.cost(arch, shape)
  return {'macs': cost.macs, 'params': cost.params, 'edit': edit.to_dict()}


def everything(ctx: Context) -> Decision:
  """One step: a layer child and a filter child, arbitrated by CKA."""
  from lpjax import methods

  hp = ctx.hparams
  if not ctx.arch.removable():
    raise ValueError(f'{ctx.arch.summary()}: nothing is removable (floor).')
  shape = tuple(ctx.inputs.shape[1:])

  record = methods.get_method(hp['layer_criterion'])
  # The layer criterion at its defaults, but for the KL direction.
  shared = {'direction': hp['kl_direction']}
  layer = record(
    dataclasses.replace(
      ctx, hparams={k: v for k, v in shared.items() if k in record.hparams}
    )
  )
  layer_arch, layer_vars = surgery.apply(ctx.arch, ctx.variables, layer.edit)
  budget = models.num_filters(ctx.arch) - models.num_filters(layer_arch)
  scores = filters.get_filter_criterion(hp['filter_criterion'])(
    dataclasses.replace(
      ctx,
      hparams={
        'filter_chunk': hp['filter_chunk'],
        'direction': hp['kl_direction'],
      },
    )
  )
  rng = np.random.default_rng([ctx.seed, ctx.iteration, 2])
  filter_edit = filters.select(ctx.arch, scores, budget, rng)

  holdout = ctx.holdout(hp['arbitration_examples'] or None)
  rep = hp['representation']
  ref = features(ctx, ctx.arch, ctx.variables, holdout, rep)
  layer_vars = ctx.finetune(
    'layer', layer_arch, layer_vars, epochs=hp['probe_epochs']
  )
  cka_layer = _similarity(
    ref, features(ctx, layer_arch, layer_vars, holdout, rep)
  )
  diag = {
    'filters_removed': budget,
    'cka_layer': cka_layer,
    'layer_child': _child_record(layer_arch, shape, layer.edit),
  }
  winner, edit, variables = 'layer', layer.edit, layer_vars
  if filter_edit is None:
    diag['filter_child'] = None
    diag['cka_filter'] = None
    diag['note'] = (
      f'the prunable widths cannot give up {budget} filters while keeping '
      'one each: layer child taken'
    )
  else:
    filter_arch, filter_vars = surgery.apply(
      ctx.arch, ctx.variables, filter_edit
    )
    filter_vars = ctx.finetune(
      'filter', filter_arch, filter_vars, epochs=hp['probe_epochs']
    )
    cka_filter = _similarity(
      ref, features(ctx, filter_arch, filter_vars, holdout, rep)
    )
    diag['cka_filter'] = cka_filter
    diag['filter_child'] = _child_record(filter_arch, shape, filter_edit)
    if cka_filter > cka_layer:
      winner, edit, variables = 'filter', filter_edit, filter_vars
  diag['winner'] = winner
  return Decision(
    edit=edit,
    scores=dict(layer.scores),
    diagnostics={'everything': diag},
    variables=variables if hp['winner_continues'] else None,
  )
