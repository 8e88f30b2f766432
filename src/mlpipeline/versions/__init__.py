"""Model versions as GTO git tags: reading them (``registry``), making one (``release``) and the
model card a release carries (``card``).

May import: core, cache.
"""
