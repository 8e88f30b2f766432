"""Compare a git revision with the workspace for review (``make report``, ``report``): what differs
in params, metrics and plots, read through DVC (``collect``), as Markdown a pull request shows
(``markdown``).

May import: core.
"""
