"""Shared foundations every stage uses: params (``params``), dataset IO (``shards``, written by
``shard_writer``, read at random by ``shard_rows``, with the exact pixel sums ``channel_sums``
records), the window of a stored image a model sees (``windows``), the paths stages read and
write (``paths``), atomic writes (``atomic``), seeding
(``seeding``), devices (``device``), worker pools (``workers``), the stage runner (``stage``) and
its one error type (``errors``), progress on stderr (``progress``), environment settings
(``settings``), redacted URLs (``urls``), the exact integer kernels (``bitexact``) and image grids
(``previews``).

May import: nothing of ours (core is the bottom layer).
"""
