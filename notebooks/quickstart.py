# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # lpjax quickstart: CKA layer pruning of a ResNet-20 on digits
#
# This notebook
#
# 1. prunes a ResNet-20 on scikit-learn's 8×8 digits with the CKA criterion
#    (Pons et al., ICPR 2024): every removable block is scored by
#    1 − CKA between the pooled features of the full model and of the model
#    without that block, the lowest is removed, the model is fine-tuned, and
#    this repeats once more (two of the nine blocks removed);
# 2. shows the run's table and plots;
# 3. measures every pruned model beyond accuracy: FGSM and PGD robustness,
#    corruptions, latency (`lpjax.evaluate`);
# 4. uses `lpjax.cka` on its own: the CKA matrix between the trained
#    network's blocks, checked against a float64 NumPy formula.
#
# It runs offline on a CPU in about two minutes (the digits ship with
# scikit-learn); on Colab, a GPU runtime makes it faster. The epochs are
# shortened from `configs/quickstart.py` (10 baseline and 2 fine-tuning
# epochs instead of 30 and 8, two removals instead of three) to keep it
# quick; `python main.py --config=configs/quickstart.py` runs the full
# schedule.

# %% [markdown]
# ## Install
#
# Locally, install lpjax from the repository root first
# (`pip install -e .`) and start Jupyter from the repository. On Colab, set
# `LPJAX_SOURCE` in the next cell to the repository's git address (or
# upload the source and give its folder); the first run of the cell clones
# and installs it, with JAX's CUDA plugin when the runtime has a GPU, and
# restarts the runtime (pip replaces packages Colab has already loaded);
# then run all cells again.

# %%
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

IN_COLAB = 'google.colab' in sys.modules
if IN_COLAB:  # Colab only: fetch and install lpjax once, then restart.
  LPJAX_SOURCE = ''  # @param {type:"string"}
  local = bool(LPJAX_SOURCE) and Path(LPJAX_SOURCE).is_dir()
  source = Path(LPJAX_SOURCE) if local else Path('/content/lpjax')
  if importlib.util.find_spec('lpjax') is None:
    if not LPJAX_SOURCE:
      raise ValueError(
        'Set LPJAX_SOURCE to the lpjax git address or to the folder of an '
        'uploaded copy of the repository, then run this cell again.'
      )
    if not local:
      subprocess.run(
        ['git', 'clone', '--depth=1', LPJAX_SOURCE, str(source)], check=True
      )
    extra = '[cuda12]' if shutil.which('nvidia-smi') else ''
    subprocess.run(
      [sys.executable, '-m', 'pip', 'install', '-q', '-e', f'{source}{extra}'],
      check=True,
    )
    # pip replaced packages this runtime has loaded (numpy, jax): restart.
    print('lpjax is installed; the runtime restarts. Run all cells again.')
    os.kill(os.getpid(), signal.SIGKILL)
  os.chdir(source)

# The configs live beside the package, in the repository root.
ROOT = next(
  (
    p
    for p in (Path.cwd(), *Path.cwd().parents)
    if (p / 'configs' / 'quickstart.py').is_file()
  ),
  None,
)
if ROOT is None:
  raise FileNotFoundError(
    f'No lpjax repository at or above {Path.cwd()}: open this notebook from '
    'the repository (its notebooks/ folder).'
  )
sys.path.insert(0, str(ROOT))

import jax

print('JAX', jax.__version__, 'on', jax.devices())


# %% [markdown]
# ## Prune
#
# A run is a config and a workdir. Everything it does is written there:
# checkpoints (a rerun resumes), `results.json`, `report.md` and the
# plots. `LPJAX_WORKDIR` chooses the folder; by default a new temporary one.

# %%
import tempfile

from configs import quickstart
from lpjax import report
from lpjax.run import classifier

WORKDIR = os.environ.get('LPJAX_WORKDIR') or tempfile.mkdtemp(
  prefix='lpjax_quickstart_'
)
config = quickstart.get_config()
config.baseline.epochs = 10
config.prune.finetune_epochs = 2
config.prune.target_blocks = 2  # the quickstart goes on to the floor: 3
config.prune.calibration_examples = 250
config.prune.data_batch_size = 250
results = classifier.run(config, WORKDIR)
print('workdir:', WORKDIR)

# %% [markdown]
# ## Results
#
# One row per model: the unpruned baseline, then one per removal. Test
# accuracy is measured after each fine-tune; the test split never steers a
# decision (the scores use training images).

# %%
from IPython.display import Image, Markdown, display

display(Markdown(report.markdown_table(results)))

# %%
report.write_report(WORKDIR)
display(Image(filename=str(Path(WORKDIR) / report.ACCURACY_PLOT_FILENAME)))
display(Image(filename=str(Path(WORKDIR) / report.SCORES_PLOT_FILENAME)))

# %% [markdown]
# ## Beyond accuracy
#
# `lpjax.evaluate` loads every model of the run and measures FGSM and PGD
# accuracy (L∞ budget in pixel units, clipped to the valid pixel range),
# accuracy under CIFAR-10-C corruptions (Hendrycks & Dietterich, 2019),
# and the latency speed-up against the unpruned model beside the FLOPs
# ratio. The command-line form is `python -m lpjax.evaluate --workdir=...`.
# Here, a small setting that runs in seconds: 200 test images, one budget
# (ε = 0.1, pixels in [0, 1]), PGD with 5 steps, two corruptions at three
# severities, batch-256 latency.

# %%
from lpjax.evaluate.run import evaluate_run

evaluation = evaluate_run(
  WORKDIR,
  eps=(0.1,),
  examples=200,
  batch=200,
  pgd_steps=5,
  corruptions=('gaussian_noise', 'contrast'),
  severities=(1, 3, 5),
  corruption_examples=200,
  latency_batches=(256,),
  latency_runs=5,
)
display(Markdown(report.evaluation_table(evaluation)))
display(Image(filename=str(Path(WORKDIR) / report.ROBUSTNESS_PLOT_FILENAME)))

# %% [markdown]
# ## `lpjax.cka` on its own
#
# `lpjax.cka` needs only JAX. Here it compares the outputs of every block
# of the trained, unpruned ResNet-20 on 500 training images: one
# `cka_matrix` call gives every pair. Blocks within a stage are close to
# each other, which is what makes some of them removable.

# %%
import numpy as np

from lpjax import cka, data, models
from lpjax.evaluate.run import load_model

arch, variables = load_model(Path(WORKDIR) / 'baseline')
model = models.build_model(arch)
digits = data.load('digits')
batch = next(digits.eval_batches(split='train', batch_size=500))
names = [b.name for b in arch.blocks]
reps = models.representations(model, variables, batch['image'], names)
matrix = np.asarray(cka.cka_matrix([reps[n] for n in names]))
heatmap = report.cka_heatmap(
  matrix,
  names,
  Path(WORKDIR) / 'block_cka.png',
  title='Linear CKA between block outputs (unpruned ResNet-20)',
)
display(Image(filename=str(heatmap)))

# %% [markdown]
# The same numbers from the definition, in float64 NumPy: with centred
# features, linear CKA is ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F)
# (Kornblith et al., 2019).


# %%
def cka_float64(x, y):
  x = np.asarray(x, np.float64).reshape(len(x), -1)
  y = np.asarray(y, np.float64).reshape(len(y), -1)
  x, y = x - x.mean(0), y - y.mean(0)
  return np.linalg.norm(y.T @ x) ** 2 / (
    np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
  )


first, last = names[0], names[-1]
print(f'lpjax.cka  {first} vs {last}: {matrix[0, -1]:.6f}')
print(
  f'float64    {first} vs {last}: {cka_float64(reps[first], reps[last]):.6f}'
)
worst = max(
  abs(matrix[i, j] - cka_float64(reps[a], reps[b]))
  for i, a in enumerate(names)
  for j, b in enumerate(names)
)
print(f'largest difference over all {len(names)}² pairs: {worst:.1e}')
assert worst < 1e-4, worst

# %% [markdown]
# CKA is invariant to rotations and to scaling of either representation,
# and it is not invariant to arbitrary invertible linear maps:

# %%
x = reps[first].reshape(500, -1)
q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(x.shape[1],) * 2))
print('rotated and scaled by 1e6:', float(cka.linear_cka(x, 1e6 * (x @ q))))
stretch = np.diag(np.geomspace(1e-2, 1e2, x.shape[1]))
print('axis-stretched          :', float(cka.linear_cka(x, x @ stretch)))
