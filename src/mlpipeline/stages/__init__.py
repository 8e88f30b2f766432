"""What ``dvc.yaml`` runs: one thin module per stage (``python -m mlpipeline.stages.<name>``:
``ingest``, ``synthesize``, ``augment``, ``train``, ``export``, ``evaluate``), each reading its
params, calling its library and writing its outputs. Nothing imports a stage.

May import: core, ingestion, synthetic, augmentation, training, modeling, evaluation.
"""
