"""The evaluate stage's library: metrics, the scikit-learn baseline, the report files and the
stage's params.

May import: core.
"""
