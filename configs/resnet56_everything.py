"""Everything (Nascimento et al. 2025) on ResNet-56 / CIFAR-10, the authors'
CIFAR recipe with the arbitration moved off the test set.

Trains the baseline (200 epochs; or start from the authors' Keras model as in
`configs/resnet56.py`), holding out 10 % of the training images. Each step
builds a layer child (CURL's `kl` removes one block) and a filter child
removing as many filters (`kl` per filter, spread over the first conv of
every block), fine-tunes each for 10 epochs, keeps the one whose pooled
features on the holdout are more CKA-similar to the parent's, and fine-tunes
it 190 epochs more; until layer pruning is exhausted ([2, 2, 2] blocks).
The paper reports 86.37 % FLOPs reduction (ALGORITHMS §5.2). CIFAR-10 must
be prepared first (see the README).

  python main.py --config=configs/resnet56_everything.py --workdir=$HOME/runs/e56

Expected runtime: ~210 epochs per step over 21+ steps (~4,600 epochs): use
an accelerator.
"""

from configs import base


def get_config():
  c = base.get_config()
  c.dataset = 'cifar10'
  c.model = 'resnet56'
  c.holdout = 0.1  # the arbitration's data: carved from train, never test
  c.baseline.epochs = 200
  c.prune.criterion = 'everything'
  c.prune.target_flops_reduction = 0.0  # until layer pruning is exhausted
  c.prune.calibration_examples = 5000  # the authors: 500 per class
  c.prune.finetune_epochs = 190
  c.prune.everything.layer_criterion = 'kl'
  c.prune.everything.filter_criterion = 'kl'
  c.prune.everything.probe_epochs = 10
  return c
