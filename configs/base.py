"""Every field of an lpjax run, documented; experiments override it.

An experiment file defines `get_config()` that starts from
`configs.base.get_config()` and changes what it needs. Fields can also be
overridden on the command line, e.g. `--config.prune.target_blocks=5`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """The defaults: the papers' CIFAR-10 ResNet-56 recipe (Pons et al. 2024)."""
  c = ml_collections.ConfigDict()
  # main: train, prune and fine-tune a classifier (lpjax.run.classifier);
  # embedding: prune a pretrained sentence encoder (configs/minilm.py);
  # llm: depth-prune a pretrained language model (configs/smollm2_depth.py).
  c.task = 'main'
  c.seed = 0  # Seeds initialisation, data order and stochastic criteria.
  # Several hosts: True calls jax.distributed.initialize() before any work;
  # with no arguments it reads the cluster from the environment (Cloud TPU
  # VMs, SLURM, Open MPI, Kubernetes). Run the same command on every host:
  # each process loads only its rows of every global batch.
  c.distributed = False

  # --- Data (lpjax.data) ---
  # digits | synthetic | basicmotions | japanesevowels (sensor series) |
  # cifar10 | cifar100 | imagenet2012
  c.dataset = 'cifar10'
  c.data_dir = ''  # tfds data_dir with the prepared dataset ('' = tfds default)
  c.manual_dir = ''  # where the downloaded archives are (for instructions)
  c.normalization = ''  # '' = dataset default (per_pixel_mean for CIFAR)
  c.holdout = 0.0  # fraction of train held out as split 'holdout'
  # Only for dataset='synthetic': overrides of its defaults.
  c.synthetic = ml_collections.ConfigDict()
  c.synthetic.image_shape = (8, 8, 3)
  c.synthetic.num_classes = 4
  c.synthetic.num_train = 256
  c.synthetic.num_test = 128

  # --- Model (lpjax.models: the family registry) ---
  # resnet{6n+2} (CIFAR) | resnet50/101/152 (ImageNet) | vit | encoder
  c.model = 'resnet56'
  c.min_blocks_per_stage = 2  # pruning floor per stage (papers: 2)
  # ResNets only:
  c.width = 0  # stem / first-stage width; 0 = family default (16 or 64)
  c.blocks_per_stage = ()  # explicit blocks per stage; () = from the depth
  c.style = 'keras'  # keras (the papers' models) | keras_imagenet | pytorch
  # ViT only (lpjax.models.vit; the image shape comes from the dataset):
  c.vit = ml_collections.ConfigDict()
  c.vit.patch = 4  # patch side in pixels
  c.vit.width = 192  # token width (a multiple of heads)
  c.vit.depth = 12  # encoder layers, every one a pruning candidate
  c.vit.heads = 3
  c.vit.mlp = 768  # MLP inner width
  c.vit.pool = 'cls'  # cls (class token) | mean (mean over patch tokens)
  c.vit.dropout = 0.0
  # Sensor-series transformer encoder only (lpjax.models.encoder; steps and
  # channels come from the dataset): each time step projected to `width`.
  c.encoder = ml_collections.ConfigDict()
  c.encoder.width = 64
  c.encoder.depth = 10  # encoder layers, every one a pruning candidate
  c.encoder.heads = 4
  c.encoder.mlp = 128
  c.encoder.norm = 'pre'  # pre (LN before each branch) | post (BERT)
  c.encoder.pool = 'mean'  # mean over time steps | cls (first step)
  c.encoder.dropout = 0.1

  # --- Baseline: the unpruned model pruning starts from ---
  c.baseline = ml_collections.ConfigDict()
  c.baseline.source = 'train'  # train | checkpoint | keras
  c.baseline.path = ''  # checkpoint dir (source=checkpoint)
  c.baseline.keras_json = ''  # architecture JSON (source=keras)
  c.baseline.keras_h5 = ''  # weights .h5 (source=keras)
  c.baseline.epochs = 200  # training epochs (source=train)
  # epochs=0 with source=train prunes the randomly initialised network,
  # whose accuracies and deltas mean nothing: refused unless this is True
  # (e.g. to study criteria on untrained networks).
  c.baseline.allow_untrained = False

  # --- Optimisation (lpjax.train), shared by baseline and fine-tuning ---
  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 128  # global; a multiple of the device count
  c.train.eval_batch_size = 500
  c.train.learning_rate = 0.01  # papers: SGD lr 0.01
  c.train.momentum = 0.9
  c.train.nesterov = True
  c.train.weight_decay = 1e-4  # L2 coefficient, in the loss (papers: 1e-4)
  # Which weights the L2 covers: conv_kernels (papers) | kernels (Dense too)
  c.train.weight_decay_mask = 'conv_kernels'
  c.train.schedule = 'step'  # step (/10 at 50 % and 75 %) | cosine | constant
  c.train.warmup_epochs = 0
  c.train.augment = True  # pad-and-crop (+ flip where the dataset allows)
  c.train.log_every_steps = 100

  # --- Pruning ---
  c.prune = ml_collections.ConfigDict()
  # The pruning method: any name in lpjax.methods.METHODS (cka | random |
  # l1 | ...). A method whose needs the task cannot meet (sleb and
  # angular_block need a decoder; sglp a loss; ...) is refused before any
  # work. Its own hyperparameters live in c.prune.<name>, below.
  c.prune.criterion = 'cka'
  # What similarity methods compare: pooled | logits | stem | a unit name
  c.prune.representation = 'pooled'
  # Stop when either target is reached (0 = unused; both 0 = to the floor).
  c.prune.target_blocks = 0  # blocks removed in total
  c.prune.target_flops_reduction = 0.0  # percent
  c.prune.calibration_examples = 5000  # images the criterion scores on
  c.prune.calibration_split = 'train'  # train | holdout
  c.prune.data_batch_size = 500  # images per forward while scoring
  # 0: all candidates in one shared-prefix pass (least work); k > 0: k masked
  # full forwards at a time (bounded memory, about twice the work).
  c.prune.candidate_chunk = 0
  # float32 | float64: dtype of the similarity step (the forwards stay
  # float32); float64 for rankings that hinge on tiny score differences.
  c.prune.similarity_dtype = 'float32'
  c.prune.finetune_epochs = 200  # after each removal (papers: 200)
  c.prune.finetune_learning_rate = 0.01
  # Methods' own hyperparameters (Context.hparams), one group per method
  # that has any; each is declared with its type and default in the method's
  # record (lpjax.methods.METHODS; tests/test_method_records.py checks these
  # groups against them). A key the record does not declare is refused.
  c.prune.cka = ml_collections.ConfigDict()
  c.prune.cka.debiased = False  # True: unbiased HSIC (Song et al. 2012)
  # Consensus (Mugnaini et al. 2024): the rank sum of these metrics
  # (comma-separated names from lpjax.methods.consensus.METRICS; default
  # the paper's eight) with these weights ('' = equal; else one number >= 0
  # per metric); lowest sum removed, ties to the earliest unit.
  c.prune.consensus = ml_collections.ConfigDict()
  c.prune.consensus.metrics = (
    'cka,gaussian_stochastic_0,gaussian_stochastic_1,gaussian_stochastic_2,'
    'permutation,linear_0,linear_1,wasserstein'
  )
  c.prune.consensus.weights = ''
  # The Gaussian metrics' alternating Procrustes fit: iteration cap,
  # relative tolerance, start (samples | means | both: every start, both
  # directions, symmetric by construction at 2x the cost; lpjax.similarity).
  c.prune.consensus.gaussian_max_iter = 1000
  c.prune.consensus.gaussian_tol = 1e-8
  c.prune.consensus.gaussian_init = 'samples'
  # SGLP (Li et al. 2024; lpjax.methods.sglp has every choice and why):
  # mode: iterative (one unit per iteration, re-segmented) | one_shot
  # (num_remove units, or round(removal_ratio * units), in one iteration;
  # set target_blocks to the same number). num_segments: K, 0 = smallest K
  # whose Fisher SSE <= sse_fraction * K=1's. cka: minibatch (memory
  # independent of n) | full. aggregation: row_sum | neighbour. gradnorm:
  # params (sum of ||dL/dW||) | output (||dL/dA||).
  c.prune.sglp = ml_collections.ConfigDict()
  c.prune.sglp.mode = 'iterative'
  c.prune.sglp.num_remove = 0
  c.prune.sglp.removal_ratio = 0.0
  c.prune.sglp.num_segments = 0
  c.prune.sglp.sse_fraction = 0.1
  c.prune.sglp.cka = 'minibatch'
  c.prune.sglp.aggregation = 'row_sum'
  c.prune.sglp.gradnorm = 'params'
  # Everything (Nascimento et al. 2025; lpjax.methods.everything): per step
  # a layer child (layer_criterion: any layer method) and a filter child
  # removing as many filters (filter_criterion: l1 | kl | hrank | random),
  # each fine-tuned probe_epochs, the one with the higher linear CKA to the
  # parent (representation: pooled | logits) on arbitration_examples of the
  # holdout (0 = all; needs c.holdout > 0) kept; winner_continues: the
  # iteration fine-tunes the winner's probe-trained weights (False: the
  # edit applied to the parent). filter_chunk: masked forwards at a time of
  # the kl filter criterion (memory grows with it). The authors' CIFAR
  # recipe: probe 10 epochs, then finetune_epochs=190.
  c.prune.everything = ml_collections.ConfigDict()
  c.prune.everything.layer_criterion = 'kl'
  c.prune.everything.filter_criterion = 'kl'
  c.prune.everything.probe_epochs = 10
  c.prune.everything.arbitration_examples = 0
  c.prune.everything.representation = 'pooled'
  c.prune.everything.winner_continues = True
  c.prune.everything.filter_chunk = 16
  # forward: KL(p || q) (CURL) | reverse: KL(q || p), the direction of the
  # authors' code, for the kl layer and filter criteria.
  c.prune.everything.kl_direction = 'forward'
  # CURL's KL criterion (lpjax.methods.baselines.kl_scores): forward,
  # KL(p || q) with p the unpruned model's distribution (CURL) | reverse,
  # KL(q || p) (the Everything authors' code).
  c.prune.kl = ml_collections.ConfigDict()
  c.prune.kl.direction = 'forward'
  # Gromov et al.'s angular distance: consecutive layers removed per call
  # (the language-model task's one-shot schedule sets it to k).
  c.prune.angular_block = ml_collections.ConfigDict()
  c.prune.angular_block.n = 1

  # --- Bookkeeping ---
  c.checkpoint_max_to_keep = 2
  # Save a training checkpoint every this many epochs (and at the end);
  # more than 1 for tiny datasets, where saving costs more than an epoch.
  c.checkpoint_every_epochs = 1
  # A folder for JAX's persistent compilation cache: a program compiled once
  # (same model, shapes, XLA flags and jaxlib) is loaded from it by later
  # runs instead of compiled again (e.g. '~/.cache/lpjax/jax' for a study
  # over seeds). '' (default): off. On a 2-core CPU the quickstart's first
  # run with it took 1.10x as long (writing), later runs 0.92x
  # (BENCHMARKS.md). JAX_COMPILATION_CACHE_DIR, when set, decides instead.
  c.compilation_cache = ''
  # A workdir remembers its config: resuming it with any field changed that
  # changes results is refused, unless this is True.
  c.resume_despite_config_change = False
  return c
