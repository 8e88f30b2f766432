"""What runs around the train stage on a cluster, outside the pipeline: node 0's command runner
(``node0``: stop signals passed on, the other nodes told when no training meets them, the
workspace restored after a stopped run) and the SLURM job's resources, derived from the train
params (``slurm``).

May import: core, training.
"""
