"""The augment stage's library: the exact, vectorized transforms (``transforms``), their online
form that training draws per batch (``online``) and the stage's params (``params``).

May import: core.
"""
