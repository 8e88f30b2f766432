"""Developer tools that are not pipeline stages: the demo data (``demo``), a local S3 server
(``s3server``), a local two-node SLURM (``slurm_local``), the model server in a child process
for tests and benchmarks (``serve_process``), repository guard rails (``dvc_config_guard``), the
params schema (``params_schema``), the offline plots page (``plots_page``), pretrained weights
fetched once (``fetch_weights``), the data flywheel's base advanced (``data_update``), params
presets written into params.yaml (``preset``) and generated photos (``photos``).

May import: core, ingestion, synthetic, augmentation, training, modeling, evaluation.
"""
