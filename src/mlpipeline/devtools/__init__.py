"""Developer tools that are not pipeline stages: the demo data (``demo``), a local S3 server
(``s3server``) and a local two-node SLURM (``slurm_local``), repository guard rails
(``dvc_config_guard``), the params schema (``params_schema``), the offline plots page
(``plots_page``) and pretrained weights fetched once (``fetch_weights``).

May import: core, ingestion, synthetic, augmentation, training, modeling, evaluation.
"""
