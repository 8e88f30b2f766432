"""The training machinery behind the train stage: device set-up, data placement, the epoch loop,
checkpoints, DDP and progress reporting, each small enough to test on its own.

May import: core, augmentation.
"""
