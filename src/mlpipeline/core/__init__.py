"""Shared foundations every stage uses: params, dataset IO (shards), atomic writes, seeding,
devices, worker pools, the stage runner, the exact integer kernels (``bitexact``) and image grids.

May import: nothing of ours (core is the bottom layer).
"""
