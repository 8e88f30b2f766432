"""Keeping DVC's cache and remote in check, outside the pipeline: ``make gc`` (``gc``, with
``scope``, ``listing`` and ``origins``), ``make verify`` (``verify``) and ``make check-remote``
(``remote_check``).

May import: core.
"""
