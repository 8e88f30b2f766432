"""The augment stage's library: the exact, vectorized transforms (``transforms``, with the elastic
distortion in ``elastic``): the random-resized crop (``crop``) and the policy (``policy``) as
sampling maps (``maps``), the integer pixel kernels (``pixels``) of the policy and the colour
jitter (``colour``); their online form that training draws per batch (``online``) and the stage's
params (``params``).

May import: core.
"""
