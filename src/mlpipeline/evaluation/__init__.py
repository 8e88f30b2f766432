"""The evaluate stage's library: metrics (``metrics``), the scikit-learn baseline (``baseline``) on
a seeded subset (``subset``), the report files (``report``) and the stage's params (``params``).

May import: core.
"""
