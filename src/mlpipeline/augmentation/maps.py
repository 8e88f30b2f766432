"""Per-image linear maps of the sampling grid: where an output pixel reads, moved by the
random-resized crop and the policy's rotations, shears and translations before the one bilinear
resampling of ``transforms.Draws``.

A map sends a point given in pixels from the image centre to another such point: ``(x, y) ->
(xx x + xy y + x0, yx x + yy y + y0)``, each coefficient a float64 array with one value per
image. Composing and applying them is float64 ``+`` and ``*``, one correctly rounded operation at
a time and never a matrix product (BLAS would add in an order of its own), so the fixed-point
coordinates they give are the same on every CPU. The affine map of ``transforms`` is one too when
composed with them (``transforms.affine_maps``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlpipeline.core.bitexact import ONE


@dataclass(frozen=True)
class Maps:
    xx: np.ndarray
    xy: np.ndarray
    yx: np.ndarray
    yy: np.ndarray
    x0: np.ndarray
    y0: np.ndarray

    @classmethod
    def identity(cls, n: int) -> Maps:
        ones, zeros = np.ones(n), np.zeros(n)
        return cls(ones, zeros.copy(), zeros.copy(), ones.copy(), zeros.copy(), zeros.copy())

    def then(self, after: Maps) -> Maps:
        """``self`` first, then ``after``: the map ``p -> after(self(p))``."""
        return Maps(
            xx=after.xx * self.xx + after.xy * self.yx,
            xy=after.xx * self.xy + after.xy * self.yy,
            yx=after.yx * self.xx + after.yy * self.yx,
            yy=after.yx * self.xy + after.yy * self.yy,
            x0=after.xx * self.x0 + after.xy * self.y0 + after.x0,
            y0=after.yx * self.x0 + after.yy * self.y0 + after.y0,
        )

    def where(self, chosen: np.ndarray) -> Maps:
        """This map for the ``chosen`` images (bool N), the identity for the others."""
        identity = Maps.identity(len(chosen))
        return Maps(
            *(np.where(chosen, mine, same) for mine, same in zip(self.parts, identity.parts, strict=True))
        )

    @property
    def parts(self) -> tuple[np.ndarray, ...]:
        return self.xx, self.xy, self.yx, self.yy, self.x0, self.y0

    def grid(self, size: tuple[int, int], images: slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """Where each output pixel of the ``images`` of ``size`` (H, W) samples under its image's
        map: fixed-point x and y, int64 n x H x W in 1/``ONE`` px from the top-left pixel's centre.
        Each value comes from its own image's map alone, so any slicing gives the same bytes."""
        height, width = size
        across = (np.arange(width) - (width - 1) / 2) * ONE  # exact: halves times an even ONE
        down = (np.arange(height) - (height - 1) / 2) * ONE
        moved = []
        for scale_x, scale_y, shift, side in (
            (self.xx[images], self.xy[images], self.x0[images], width),
            (self.yx[images], self.yy[images], self.y0[images], height),
        ):
            rows = scale_y[:, None] * down + (shift * ONE + (side - 1) * ONE / 2)[:, None]  # N x H
            out = scale_x[:, None, None] * across + rows[:, :, None]
            moved.append(np.rint(out, out=out).astype(np.int64))
        return moved[0], moved[1]
