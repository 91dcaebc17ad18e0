"""Taking the pruned model out: `lpjax.load` and `python -m lpjax.export`.

Runs, one per task, each as small as the task allows:

* a tiny classifier run (a Keras-style CIFAR ResNet, 8x8 synthetic images,
  an untrained baseline, one block removed and fine-tuned one epoch, so
  the pruned model is not a replay of its edit): `load` against the stage
  checkpoints restored here with orbax, and logits against the model built
  from them (the suite's float32 rule); the Keras export read back by
  lpjax's Keras importer, bitwise;
* a tiny byte-level decoder run (tests/test_llm_pipeline.py's, iterative,
  healed with LoRA and full fine-tuning): pruned models against the
  unpruned variables with the recorded layers deleted here; healed models
  against the run's own held-out record (the same program on the same
  machine: equal) and a float64 NumPy forward;
* the real MiniLM (tests/test_language.py's tiny config, two layers
  removed): `load` against the imported source with the recorded layers
  deleted here; the sentence-transformers export read back by lpjax's BERT
  importer, bitwise;
* a SmolLM2 run written by hand (27 of 30 layers removed, nothing scored):
  the GGUF export re-imported by lpjax's GGUF importer and the HF export's
  safetensors, both bitwise against the source's kept layers.

Every refusal of the CLI is one `error:` line and status 2 before any model
is read (`lpjax.run.saved.load` is replaced by a tripwire).
"""

import dataclasses
import json

import h5py
import numpy as np
import pytest
from safetensors import safe_open
from test_llm_pipeline import _config as _llm_config
from test_llm_pipeline import _encode, _heldout, _ppl64, _variables
from tolerances import assert_f32_close, magnitude, network_terms

import lpjax
from configs import base, minilm, smollm2_depth
from lpjax import checkpointing, healing, models, wheels
from lpjax.export import ExportError, export
from lpjax.export import gguf as export_gguf
from lpjax.export import keras as export_keras
from lpjax.export.__main__ import main
from lpjax.interop import gguf_llama, keras_h5, safetensors_bert
from lpjax.models import decoder, next_token, vit
from lpjax.run import classifier, embedding, language_model, saved
from lpjax.run.saved import SavedModelError

GGUF = 'SmolLM2-135M-Instruct.Q4_1.gguf'
KEEP = (0, 14, 29)  # SmolLM2 layers the hand-made run keeps


def _flat(tree, prefix=()):
  if isinstance(tree, dict) or hasattr(tree, 'items'):
    out = {}
    for k, v in tree.items():
      out.update(_flat(v, (*prefix, str(k))))
    return out
  return {prefix: np.asarray(tree)}


def _assert_equal_trees(got, want):
  got, want = _flat(got), _flat(want)
  assert sorted(got) == sorted(want)
  for key, value in want.items():
    assert got[key].dtype == value.dtype, key
    np.testing.assert_array_equal(got[key], value, err_msg=str(key))


def _without(variables, units):
  """`variables` with the units' subtrees deleted (written here)."""
  return {
    col: {k: v for k, v in tree.items() if k not in set(units)}
    for col, tree in variables.items()
  }


# --- Runs ---------------------------------------------------------------------


@pytest.fixture(scope='module')
def classifier_run(tmp_path_factory):
  c = base.get_config()
  c.dataset = 'synthetic'
  c.synthetic.image_shape = (8, 8, 3)
  c.synthetic.num_classes = 4
  c.synthetic.num_train = 64
  c.synthetic.num_test = 32
  c.model = 'resnet20'
  c.width = 4
  c.blocks_per_stage = (1, 1, 2)
  c.min_blocks_per_stage = 1
  c.style = 'keras'  # the Keras export writes the papers' style
  c.baseline.epochs = 0  # untrained: only the fine-tune below is trained
  c.baseline.allow_untrained = True
  c.train.batch_size = 16
  c.train.eval_batch_size = 32
  c.train.learning_rate = 0.05
  c.train.log_every_steps = 0
  c.prune.target_blocks = 1
  c.prune.calibration_examples = 16
  c.prune.data_batch_size = 16
  c.prune.finetune_epochs = 1
  c.prune.criterion = 'random'  # what is loaded, not how it was chosen
  workdir = tmp_path_factory.mktemp('classifier')
  return workdir, classifier.run(c, str(workdir))


def _restore(directory):
  with checkpointing.Checkpoints(directory) as ck:
    arch, _ = ck.restore_meta()
    tree = ck.restore()
  return arch, {'params': tree['params'], 'batch_stats': tree['batch_stats']}


def test_classifier_steps_load_as_their_stage_checkpoints(classifier_run):
  workdir, results = classifier_run
  assert len(results['iterations']) == 1
  x = np.random.default_rng(0).normal(size=(5, 8, 8, 3)).astype(np.float32)
  for step, stage in ((0, 'baseline'), (1, 'iter_001')):
    arch, variables = _restore(workdir / stage)
    for alias in (step, stage) if step == 0 else (stage, None):
      got = lpjax.load(workdir, alias)
      assert got.step == step and got.task == 'main'
      assert got.arch == arch
      _assert_equal_trees(got.variables, variables)
    logits = models.build_model(arch).apply(variables, x, train=False)
    terms, depth = network_terms(variables['params'])
    assert_f32_close(got.apply(x), logits, terms, depth)
    p = got.provenance
    assert json.loads(json.dumps(p)) == p
    assert p['source']['stage'] == 'baseline'
    assert p['edits'] == [r['edit'] for r in results['iterations'][:step]]
    assert p['removed'] == (results['iterations'][0]['removed'] if step else [])
  # The fine-tune moved the weights: what was loaded is the checkpoint,
  # not the baseline with the block deleted.
  _, base = _restore(workdir / 'baseline')
  edited = _flat(_without(base, results['iterations'][0]['removed']))
  tuned = _flat(got.variables)
  assert any(not np.array_equal(tuned[k], v) for k, v in edited.items())
  with pytest.raises(
    SavedModelError, match=r'Valid steps: 0 \(or baseline\), 1\.'
  ):
    lpjax.load(workdir, 2)


def test_keras_export_reads_back_bitwise(classifier_run, tmp_path, capsys):
  workdir, _ = classifier_run
  out = tmp_path / 'keras'
  assert (
    main(['--workdir', str(workdir), '--format', 'keras', '--out', str(out)])
    == 0
  )
  assert sorted(p.name for p in out.iterdir()) == ['model.h5', 'model.json']
  want = lpjax.load(workdir)
  with h5py.File(out / 'model.h5', 'r') as f:
    recorded = json.loads(f.attrs[export_keras.ARCH_ATTR])
    provenance = json.loads(f.attrs[export_keras.PROVENANCE_ATTR])
  ids = [[b['index'] for b in st['blocks']] for st in recorded['stages']]
  arch, variables = keras_h5.load_keras_model(
    out / 'model.json', out / 'model.h5', block_ids=ids
  )
  # The importer reads blocks and style; the floor is in `lpjax_arch`.
  assert recorded == json.loads(want.arch.to_json())
  floor = want.arch.min_blocks_per_stage
  assert dataclasses.replace(arch, min_blocks_per_stage=floor) == want.arch
  _assert_equal_trees(variables, want.variables)
  assert provenance == want.provenance
  assert f'Wrote {out / "model.json"}' in capsys.readouterr().out


# --- A tiny decoder, given in memory --------------------------------------------


@pytest.fixture(scope='module')
def llm_run(tmp_path_factory):
  arch = decoder.decoder(
    vocab=256, width=16, depth=5, heads=2, kv_heads=1, mlp=24, seq_len=16,
    rope_theta=1e4,
  )  # fmt: skip
  lm = language_model.LanguageModel(arch, _variables(arch), _encode, 'bytes')
  c = _llm_config(
    **{
      'prune.criterion': 'random',
      'llm.schedule': 'iterative',
      'llm.remove': (1, 2),
      'llm.heal.at': (2,),
      'llm.heal.modes': 'full,lora',
    }
  )
  workdir = tmp_path_factory.mktemp('llm')
  return workdir, language_model.run(c, str(workdir), lm=lm), lm, c


def test_pruned_decoders_load_as_the_source_without_their_layers(llm_run):
  workdir, results, lm, c = llm_run
  source = (lm.arch, lm.variables)
  with pytest.raises(SavedModelError, match=r"'bytes'.*source=\(arch"):
    lpjax.load(workdir, 2)
  assert [d['step'] for d in results['decisions']] == [1, 2]
  held = _heldout(lm, c)
  for k in (0, 1, 2):
    removed = results['pruned'][str(k)]['removed'] if k else []
    got = lpjax.load(workdir, k, source=source)
    assert [b.name for b in got.arch.blocks] == [
      b.name for b in lm.arch.blocks if b.name not in removed
    ]
    _assert_equal_trees(got.variables, _without(lm.variables, removed))
    assert got.provenance['removed'] == removed
    assert got.provenance['healing'] is None
    if k:  # the run's own evaluation of the model (same program: equal)
      ev = next_token.evaluate(
        models.build_model(got.arch), got.variables, held, batch=4
      )
      assert ev['perplexity'] == results['pruned'][str(k)]['perplexity']
  # Iterative: one edit per step, in order.
  assert got.provenance['edits'] == [d['edit'] for d in results['decisions']]
  assert lpjax.load(workdir, source=source).step == 2


def test_healed_decoders_load_as_the_run_evaluated_them(llm_run):
  workdir, results, lm, c = llm_run
  source = (lm.arch, lm.variables)
  removed = results['pruned']['2']['removed']
  pruned = _without(lm.variables, removed)
  held = _heldout(lm, c)
  assert sorted(results['healed']) == ['2/full', '2/lora']
  for mode in ('full', 'lora'):
    rec = results['healed'][f'2/{mode}']
    got = lpjax.load(workdir, f'2/{mode}', source=source)
    assert got.step == f'2/{mode}'
    # The run's held-out evaluation of its healed model, recomputed.
    ev = next_token.evaluate(
      models.build_model(got.arch), got.variables, held, batch=4
    )
    assert ev['perplexity'] == rec['perplexity']
    assert ev['window_nll'].tolist() == rec['window_nll']
    # ... and against a float64 forward of the loaded weights.
    want, rel = _ppl64(got.arch, got.variables, held)
    assert rec['perplexity'] == pytest.approx(want, rel=rel)
    ppl_pruned = results['pruned']['2']['perplexity']
    assert abs(rec['perplexity'] / ppl_pruned - 1) > 10 * rel  # it healed
    flat, base = _flat(got.variables), _flat(pruned)
    changed = {k for k in base if not np.array_equal(flat[k], base[k])}
    if mode == 'lora':  # only the adapted kernels moved
      assert changed and {k[-2] for k in changed} == {'gate', 'up', 'down'}
    else:
      assert len(changed) > len(base) // 2
    h = got.provenance['healing']
    assert h['mode'] == mode and h['steps'] == c.llm.heal.steps
    assert h['record']['losses'] == rec['losses']
    assert h['weights'] == rec['saved']
    assert (workdir / rec['saved']['file']).is_file()
  # The LoRA file: the adapters and their scale, rank 2 factors of the
  # MLP kernels, merged here in float64 to the loaded kernels.
  factors, info = healing.load_trained(workdir / 'heal' / 'k2_lora.safetensors')
  assert info['scale'] == c.llm.heal.alpha / c.llm.heal.rank
  got = lpjax.load(workdir, '2/lora', source=source).variables['params']
  for layer, kernels in factors.items():
    for name, ab in kernels.items():
      w = np.asarray(pruned['params'][layer][name]['kernel'], np.float64)
      a, b = np.asarray(ab['a'], np.float64), np.asarray(ab['b'], np.float64)
      want = w + info['scale'] * (a @ b)
      assert_f32_close(
        got[layer][name]['kernel'], want, c.llm.heal.rank, 2,
        scale=magnitude(w, info['scale'] * (a @ b)),
      )  # fmt: skip
  # The optimizer checkpoints are still deleted (keep_checkpoints=False).
  assert not (workdir / 'heal' / 'k2_lora').exists()


def test_a_healing_the_run_did_not_keep_is_refused(llm_run, tmp_path):
  workdir, results, lm, _ = llm_run
  old = dict(results, healed={'2/lora': {**results['healed']['2/lora']}})
  del old['healed']['2/lora']['saved']  # a run healed before they were kept
  (tmp_path / 'results.json').write_text(json.dumps(old))
  with pytest.raises(SavedModelError, match=r"did not keep.*'healed'"):
    lpjax.load(tmp_path, '2/lora', source=(lm.arch, lm.variables))
  changed = json.loads(json.dumps(results))
  (tmp_path / 'results.json').write_text(json.dumps(changed))
  (tmp_path / 'heal').mkdir()
  (tmp_path / 'heal' / 'k2_full.safetensors').write_bytes(
    (workdir / 'heal' / 'k2_lora.safetensors').read_bytes()
  )
  with pytest.raises(SavedModelError, match='SHA-256 differs'):
    lpjax.load(tmp_path, '2/full', source=(lm.arch, lm.variables))


# --- The real MiniLM ----------------------------------------------------------


@pytest.fixture(scope='module')
def embedding_run(tmp_path_factory):
  c = minilm.get_config()
  c.embedding.calibration_sentences = 12
  c.embedding.heldout_sentences = 10
  c.embedding.max_length = 24
  c.embedding.data_batch_size = 12
  c.prune.target_blocks = 2
  c.prune.criterion = 'random'
  workdir = tmp_path_factory.mktemp('minilm')
  return workdir, embedding.run(c, str(workdir))


def test_minilm_steps_load_as_the_source_without_their_layers(embedding_run):
  workdir, results = embedding_run
  folder = wheels.fetch('minilm')
  arch, variables = safetensors_bert.load_bert(folder)
  gone = []
  for k in (0, 1, 2):
    if k:
      gone += results['iterations'][k - 1]['removed']
    got = lpjax.load(workdir, k)
    assert [b.name for b in got.arch.blocks] == [
      b.name for b in arch.blocks if b.name not in gone
    ]
    _assert_equal_trees(got.variables, _without(variables, gone))
    assert got.provenance['removed'] == gone
  digest = got.provenance['source']['sha256']['model.safetensors']
  assert digest == healing.file_sha256(folder / 'model.safetensors')
  assert lpjax.load(workdir).step == 2


def test_sentence_transformers_export_reads_back_bitwise(
  embedding_run, tmp_path
):
  workdir, _ = embedding_run
  out = tmp_path / 'st'
  args = ['--workdir', str(workdir), '--step', '2', '--out', str(out)]
  assert main([*args, '--format', 'sentence-transformers']) == 0
  want = lpjax.load(workdir, 2)
  arch, variables = safetensors_bert.load_bert(out, seq_len=24)
  assert len(arch.blocks) == 4
  renamed = {b.name: f'layer{j:02d}' for j, b in enumerate(want.arch.blocks)}
  want_params = {
    renamed.get(k, k): v for k, v in want.variables['params'].items()
  }
  _assert_equal_trees(variables, {'params': want_params})
  with safe_open(out / 'model.safetensors', framework='numpy') as f:
    stored = json.loads(f.metadata()['lpjax.provenance'])
  assert stored == want.provenance
  for name in ('modules.json', 'tokenizer.json', '1_Pooling/config.json'):
    assert (out / name).is_file()


# --- SmolLM2, a run written by hand -------------------------------------------


@pytest.fixture(scope='module')
def smollm2_run(tmp_path_factory):
  """A record of an llm run on the real SmolLM2 whose only model removes 27
  layers (nothing was scored: no model was run to make it)."""
  c = smollm2_depth.get_config()
  c.llm.remove = (27,)
  c.llm.heal.at = ()
  removed = [f'layer{i:02d}' for i in range(30) if i not in KEEP]
  results = {
    'task': 'llm',
    'config': c.to_dict(),
    'model': 'smollm2',
    'criterion': c.prune.criterion,
    'schedule': 'one_shot',
    'baseline': {'layers': 30},
    'decisions': [],
    'pruned': {'27': {'removed': removed, 'layers': 3}},
    'healed': {},
  }
  workdir = tmp_path_factory.mktemp('smollm2')
  (workdir / 'config.json').write_text(json.dumps(c.to_dict()))
  (workdir / 'results.json').write_text(json.dumps(results))
  path = wheels.fetch('smollm2') / GGUF
  return workdir, path, gguf_llama.load_gguf_llama(path)


def _kept_layers(variables):
  """The source's params keeping `KEEP`, renumbered 0.. (written here)."""
  params = dict(variables['params'])
  out = {k: v for k, v in params.items() if not k.startswith('layer')}
  for j, i in enumerate(KEEP):
    out[f'layer{j:02d}'] = params[f'layer{i:02d}']
  return {'params': out}


def test_gguf_and_hf_exports_hold_the_kept_layers_bitwise(
  smollm2_run, tmp_path
):
  workdir, path, (_, variables) = smollm2_run
  want = _kept_layers(variables)
  (file,) = export(workdir, None, 'gguf', tmp_path / 'pruned.gguf')
  assert file == tmp_path / 'pruned.gguf'
  got_arch, got = gguf_llama.load_gguf_llama(file)
  assert len(got_arch.blocks) == 3
  _assert_equal_trees(got, want)
  reader = gguf_llama._reader(file)
  prov = json.loads(reader.fields[export_gguf.PROVENANCE_KEY].contents())
  assert prov['step'] == 27 and prov['source']['model'] == 'smollm2'
  assert prov['source']['sha256'][GGUF] == healing.file_sha256(path)
  assert prov['removed'] == [
    f'layer{i:02d}' for i in range(30) if i not in KEEP
  ]
  # hf: transformers' names, torch Linear weights [out, in].
  (folder,) = export(workdir, 27, 'hf', tmp_path / 'hf')
  config = json.loads((folder / 'config.json').read_text())
  assert config['num_hidden_layers'] == 3
  with safe_open(folder / 'model.safetensors', framework='numpy') as f:
    for j, i in enumerate(KEEP):
      layer = variables['params'][f'layer{i:02d}']
      np.testing.assert_array_equal(
        f.get_tensor(f'model.layers.{j}.mlp.up_proj.weight'),
        np.asarray(layer['up']['kernel']).T,
      )
      np.testing.assert_array_equal(
        f.get_tensor(f'model.layers.{j}.self_attn.q_proj.weight'),
        np.asarray(layer['q']['kernel']).T,
      )
    assert json.loads(f.metadata()['lpjax.provenance']) == prov


# --- Refusals -----------------------------------------------------------------


@pytest.fixture
def tripwire(monkeypatch):
  """Fails a test whose refusal reads a model."""

  def load(*args, **kwargs):
    raise AssertionError('a model was loaded before the refusal')

  monkeypatch.setattr(saved, 'load', load)


def _refused(capsys, *args):
  status = main([str(a) for a in args])
  err = capsys.readouterr().err
  assert status == 2, err
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), err
  return lines[0]


def test_every_refusal_is_one_line_before_any_work(
  classifier_run, llm_run, smollm2_run, tmp_path, capsys, tripwire
):
  cls, _ = classifier_run
  llm, *_ = llm_run
  smol, *_ = smollm2_run
  out = tmp_path / 'out'

  def refused(workdir, *more, out=out):
    before = sorted(out.iterdir()) if out.is_dir() else out.exists()
    line = _refused(capsys, '--workdir', workdir, '--out', out, *more)
    assert (sorted(out.iterdir()) if out.is_dir() else out.exists()) == before
    return line

  empty = tmp_path / 'empty'
  empty.mkdir()
  assert 'holds no run' in refused(empty, '--format', 'keras')
  assert 'holds no run' in refused(tmp_path / 'nowhere', '--format', 'keras')
  assert refused(cls, '--format', 'keras', '--step', '7').endswith(
    "has no step '7'. Valid steps: 0 (or baseline), 1."
  )
  assert 'Valid steps: 0, 1, 2, 2/full, 2/lora.' in refused(
    llm, '--format', 'gguf', '--step', '2/qlora'
  )
  assert refused(cls, '--format', 'gguf').endswith(
    "Format 'gguf' does not write the 'resnet_cifar' models of this 'main' "
    'run; formats that do: keras.'
  )
  assert 'formats that do: gguf, hf.' in refused(smol, '--format', 'keras')
  assert 'Unknown format' in refused(smol, '--format', 'onnx')
  assert 'Unknown GGUF dtype' in refused(
    smol, '--format', 'gguf', '--dtype', 'Q4_0'
  )
  assert 'takes no option dtype' in refused(
    smol, '--format', 'hf', '--dtype', 'F16'
  )
  assert 'given in memory' in refused(llm, '--format', 'gguf')
  used = tmp_path / 'used'
  used.mkdir()
  (used / 'x').write_text('')
  line = refused(cls, '--format', 'keras', out=used)
  assert line.endswith(
    'is not empty; export into a new or empty folder (--out).'
  )
  blocker = tmp_path / 'file'
  blocker.write_text('')
  assert 'Cannot create' in refused(cls, '--format', 'keras', out=blocker / 'x')
  assert 'exists and is not a folder' in refused(
    cls, '--format', 'keras', out=blocker
  )
  assert '--format' in _refused(capsys, '--workdir', cls, '--out', out)
  # A classifier of a family no format writes (a ViT's stage, meta only).
  arch = vit.vit(image_shape=(8, 8, 3), num_classes=4, depth=2, width=8,
                 heads=2, mlp=8, patch=4)  # fmt: skip
  workdir = tmp_path / 'vit'
  with checkpointing.Checkpoints(workdir / 'baseline') as ck:
    ck.save(0, state={'params': {}}, arch=arch, meta={'complete': True})
  c = base.get_config()
  c.model = 'vit'
  (workdir / 'results.json').write_text(
    json.dumps({'task': 'main', 'config': c.to_dict(), 'iterations': []})
  )
  with pytest.raises(ExportError, match='no export format does'):
    export(workdir, 0, 'keras', out)
  assert not out.exists()
  # A run with no pruned model yet: the default step names the valid ones.
  with pytest.raises(SavedModelError, match=r'no pruned model yet.*: 0 \(or'):
    export(workdir, None, 'keras', out)
