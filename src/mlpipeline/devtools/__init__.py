"""Developer tools that are not pipeline stages: the demo data, a local S3 server, repository
guard rails, the params schema, the offline plots page and the data flywheel's base update.

May import: core, ingestion, synthetic, augmentation, training, modeling, evaluation.
"""
