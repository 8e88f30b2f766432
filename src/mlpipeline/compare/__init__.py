"""Compare a git revision with the workspace for review: params, metrics, plots, the data versions
and the models on the test images both share (``make report``, ``make data-diff``).

May import: core, ingestion.
"""
