"""CKA layer pruning of ResNet-110 on CIFAR-10 (Pons et al. 2024, Table 1).

Same recipe as `resnet56.py`: baseline 200 epochs, then one block per
iteration (54 blocks, 48 candidates under the floor) with 200 fine-tuning
epochs each, here to 76.42 % FLOPs reduction (41 removals), where the paper
reports +0.23 pp.

  python main.py --config=configs/resnet110.py --workdir=$HOME/runs/r110

Expected runtime: ~8,400 epochs in total; an accelerator is required in
practice (an epoch of ResNet-110 on a 2-core CPU is about an hour). Shorten
`prune.finetune_epochs` for a faster, weaker run.
"""

from configs import base


def get_config():
  c = base.get_config()
  c.dataset = 'cifar10'
  c.model = 'resnet110'
  c.baseline.epochs = 200
  c.prune.criterion = 'cka'
  c.prune.target_flops_reduction = 76.42
  c.prune.finetune_epochs = 200
  return c
