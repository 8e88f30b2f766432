"""Shared foundations every stage uses: params (``params``), dataset IO (``shards``: reading;
``shard_writer``: writing; ``shard_rows``: rows at random; ``channel_sums``: the exact pixel sums
it records), the paths
stages read and write (``paths``), atomic writes (``atomic``), seeding (``seeding``), devices
(``device``), worker pools (``workers``), the stage runner (``stage``) and its one error type
(``errors``), progress on stderr (``progress``), environment settings in seconds (``settings``),
redacted URLs (``urls``), the exact integer kernels (``bitexact``) and image grids (``previews``).

May import: nothing of ours (core is the bottom layer).
"""
