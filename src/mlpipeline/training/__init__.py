"""The training machinery behind the train stage, each part small enough to test on its own: its
params (``params``), what it reads (``data``) phase by phase (``phases``), device set-up
(``device``), data placement (``loader``) and the model's windows of the images (``windows``), the
epoch loop (``loop``) with its optimizer (``optim``), loss (``losses``), mixup and CutMix
(``mixing``), weight average (``ema``) and divergence checks (``divergence``), checkpoints
(``checkpoint``) within epochs too (``savepoints``), stored without pickle (``state_codec``) where
they outlive the machine (``checkpoint_store``), stop signals (``stopping``), progress reporting
(``reporting``), DDP (``distributed``) across nodes (``rendezvous``) and one GPU per run
(``gpu_lock``).

May import: core, augmentation.
"""
