"""A stand-in CUDA for the loader's tests on a machine without one: pinned allocations are plain
memory (each recorded), events remember how many batches had been copied when they were recorded
and who waited on them, and copies to the device are clones counted as they are issued."""

from __future__ import annotations

import pytest
import torch


class StandInCuda:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.pinned: list[torch.Tensor] = []  # every torch.empty(..., pin_memory=True)
        self.made: list[Event] = []
        self.waited: list[Event] = []
        self.copies = 0  # batches of images copied to the device so far
        cuda = self

        class Event:
            """``torch.cuda.Event``: how many batches were copied when it was recorded."""

            def __init__(self, blocking: bool = False) -> None:
                self.recorded_after: int | None = None
                cuda.made.append(self)

            def record(self, stream: object = None) -> None:
                self.recorded_after = cuda.copies

            def synchronize(self) -> None:
                cuda.waited.append(self)

        empty = torch.empty

        def recording_empty(*shape: object, pin_memory: bool = False, **kwargs: object) -> torch.Tensor:
            tensor = empty(*shape, **kwargs)
            if pin_memory:
                self.pinned.append(tensor)
            return tensor

        monkeypatch.setattr(torch, "empty", recording_empty)
        monkeypatch.setattr(torch.cuda, "Event", Event)

    def copy(self, host: torch.Tensor, device: torch.device, copied: object = None) -> torch.Tensor:
        """``core.device.to_device``: a batch of images (4-D) counts as a copy; ``copied`` is
        recorded after it, as on the side stream."""
        self.copies += host.dim() == 4
        if copied is not None:
            copied.record()  # type: ignore[attr-defined]
        return host.clone()
