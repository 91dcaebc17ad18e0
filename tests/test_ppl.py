"""The Shortened LLaMA PPL criterion (`ppl`, Kim et al. 2024) on a tiny
decoder, against a float64 NumPy oracle.

Each layer's score is the calibration perplexity of the model without it:
here every surgered model is run by the float64 LLaMA of
`tests/test_transformers.py` (written from the published definitions),
its next-token log-likelihoods taken with a float64 log-softmax, and the
perplexity is exp of their mean over every calibration token. lpjax scores
all layers in one compiled call.
"""

import numpy as np
from test_transformers import _decoder_oracle, _np, _random_variables
from tolerances import f32_atol, magnitude, network_terms

from lpjax import methods, models, scoring, surgery
from lpjax.methods import llm
from lpjax.methods.context import Context
from lpjax.models import decoder

N, T, VOCAB = 8, 7, 40


def _ctx():
  arch = decoder.decoder(
    vocab=VOCAB, width=16, depth=3, heads=4, kv_heads=2, mlp=24, seq_len=T
  )
  variables = _random_variables(arch, 7)
  ids = np.random.default_rng(8).integers(0, VOCAB, (N, T)).astype(np.int32)
  return Context(
    arch=arch,
    variables=variables,
    inputs=ids,
    labels=np.zeros(N, np.int32),
    data_batch_size=4,
  )


def _perplexity64(arch, variables, ids):
  """exp(mean next-token NLL) in float64, and the largest |logit|."""
  z = _decoder_oracle(arch, _np(variables['params']), ids)[:, :-1]
  top = z.max(-1, keepdims=True)
  logp = z - top - np.log(np.exp(z - top).sum(-1, keepdims=True))
  nll = -np.take_along_axis(logp, ids[:, 1:, None], -1)[..., 0]
  return float(np.exp(nll.mean())), float(nll.max()), magnitude(z)


def test_ppl_scores_are_float64_perplexities_from_one_compiled_call():
  ctx = _ctx()
  compiled = scoring._compiled_map(ctx.arch, llm._removal_nll)
  before = compiled._cache_size()
  got = llm.ppl_scores(ctx)
  assert compiled._cache_size() - before <= 1  # every layer in one program
  terms, depth = network_terms(models.variable_shapes(ctx.arch, (T,))['params'])
  want, atol = {}, {}
  for unit in ctx.arch.candidates:
    small, small_vars = surgery.remove_blocks(ctx.arch, ctx.variables, [unit])
    want[unit], nll_max, z = _perplexity64(small, small_vars, ctx.inputs)
    # A float32 logit is off by e; a log-softmax by at most 2e; the mean of
    # N (T − 1) log-likelihoods over VOCAB logits adds its own rounding.
    e = f32_atol(terms, z, depth)
    nll_atol = 2 * e + f32_atol(VOCAB * N * (T - 1), nll_max)
    atol[unit] = want[unit] * np.expm1(nll_atol)
    assert abs(got[unit] - want[unit]) <= atol[unit], unit
  # The layers' perplexities differ far beyond the tolerance.
  assert np.ptp(list(want.values())) > 100 * max(atol.values())
  decision = methods.get_method('ppl')(ctx)
  assert decision.edit.remove == (min(want, key=want.get),)
  assert decision.scores == got


def test_ppl_is_sleb_in_perplexity_units():
  """The same per-layer losses: SLEB's mean NLL is the log of PPL's
  perplexity (one compiled program serves both)."""
  ctx = _ctx()
  sleb = llm.sleb_scores(ctx)
  ppl = llm.ppl_scores(ctx)
  for unit in ctx.arch.candidates:
    np.testing.assert_allclose(np.log(ppl[unit]), sleb[unit], rtol=1e-15)
  assert methods.METHODS['ppl'].needs_of({}) == {'decoder'}
