"""Compare a git revision with the workspace for review (``make report``, ``report``): what differs
in params, metrics and plots, read through DVC (``collect``), the data versions (``data_diff``, also
``make data-diff``) and both models on the test images the two versions share (``shared_test``), as
Markdown a pull request shows (``markdown``).

May import: core, ingestion.
"""
