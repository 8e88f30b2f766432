"""The model: the network (``network``), its files on disk (``files``: safetensors + JSON),
batched inference and the ``predict`` command line (``mlpipeline-predict``).

May import: core, ingestion, versions.
"""
