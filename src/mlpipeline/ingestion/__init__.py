"""The ingest stage's library: listing a source (``sources``) as DVC hashes it (``unhashed``) with
its class names in one spelling (``labels``), decoding and converting images
(``decoding``, ``images``), the disk-backed scratch that keeps memory bounded (``scratch``,
``scratch_rows``), the hashed split (``splitting``), a version built on the previous one (its
files: ``history``; its rows: ``base``; where each image goes: ``layout``; what is written:
``writing``, ``records``), a version read back as one table (``version``) and the stage's params (``params``).

May import: core.
"""
