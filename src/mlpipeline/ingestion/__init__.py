"""The ingest stage's library: listing a source (``sources``) as DVC hashes it (``unhashed``) with
its class names in one spelling (``labels``), decoding and converting images
(``decoding``, ``images``), the disk-backed scratch that keeps memory bounded (``scratch``,
``scratch_rows``), the seeded stratified split (``splitting``) and the stage's params (``params``).

May import: core.
"""
