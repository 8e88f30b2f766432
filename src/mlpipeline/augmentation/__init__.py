"""The augment stage's library: the exact, vectorized transforms (``transforms``, with the elastic
distortion in ``elastic``), their online form that training draws per batch (``online``) and the
stage's params (``params``).

May import: core.
"""
