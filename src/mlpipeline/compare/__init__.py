"""Compare a git revision with the workspace for review: params, metrics and plots (``make report``).

May import: core.
"""
