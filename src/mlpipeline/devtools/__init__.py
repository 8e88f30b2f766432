"""Developer tools that are not pipeline stages: the demo data, a local S3 server, repository
guard rails, the params schema and the offline plots page.

May import: core, ingestion, synthetic, augmentation, training, modeling, evaluation.
"""
