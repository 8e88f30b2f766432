"""Model versions as GTO git tags: reading them (``registry``) and making one (``release``).

May import: core, cache.
"""
