"""A training state (weights, optimizer, schedule, progress, random generators) as bytes without
pickle: its tensors in safetensors, everything else as JSON in the safetensors header.

A checkpoint may come back from a bucket, and nothing read from a remote is unpickled (not even
through ``torch.load(weights_only=True)``, whose unpickler has had holes). The tree keeps what
JSON would lose and a resumed run needs bit for bit: tuples (a generator's state), dicts with
int keys (an optimizer's per-parameter state), non-finite floats, and each tensor's dtype.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

TREE_KEY = "mlpipeline.state"  # the header metadata entry holding the tree
_TENSOR, _TUPLE, _DICT, _FLOAT = "__tensor__", "__tuple__", "__dict__", "__float__"


class StateFormatError(ValueError):
    """The bytes are not a state this module wrote."""


def encode(state: Any) -> bytes:
    """``state`` as safetensors bytes (tensors copied to the host: the save's one sync)."""
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state, tensors, set())
    metadata = {TREE_KEY: json.dumps(tree, allow_nan=False, separators=(",", ":"))}
    return save_tensors(tensors, metadata=metadata)


def decode(data: bytes | memoryview) -> Any:
    """The state ``encode`` wrote, its tensors on the CPU."""
    data = bytes(data)
    try:
        (header_size,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + header_size])
        tree = json.loads(header["__metadata__"][TREE_KEY])
        tensors = load_tensors(data)
    except Exception as exc:  # struct, JSON, a missing key, or safetensors' own error type
        raise StateFormatError(f"not a training state ({exc})") from None
    return _decode(tree, tensors)


def _encode(value: Any, tensors: dict[str, torch.Tensor], storages: set[int]) -> Any:
    if isinstance(value, torch.Tensor):
        host = value.detach().cpu().contiguous()
        if host.numel() and host.untyped_storage().data_ptr() in storages:  # safetensors refuses shared
            host = host.clone()
        if host.numel():
            storages.add(host.untyped_storage().data_ptr())
        name = str(len(tensors))
        tensors[name] = host
        return {_TENSOR: name}
    if isinstance(value, dict):
        if all(isinstance(key, str) and not key.startswith("__") for key in value):
            return {key: _encode(item, tensors, storages) for key, item in value.items()}
        return {
            _DICT: [
                [_encode(key, tensors, storages), _encode(item, tensors, storages)]
                for key, item in value.items()
            ]
        }
    if isinstance(value, tuple):
        return {_TUPLE: [_encode(item, tensors, storages) for item in value]}
    if isinstance(value, list):
        return [_encode(item, tensors, storages) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return {_FLOAT: repr(value)}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"a training state holds only tensors and plain values, not {type(value).__name__}")


def _decode(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(tree, list):
        return [_decode(item, tensors) for item in tree]
    if not isinstance(tree, dict):
        return tree
    if _TENSOR in tree:
        return tensors[tree[_TENSOR]]
    if _TUPLE in tree:
        return tuple(_decode(item, tensors) for item in tree[_TUPLE])
    if _DICT in tree:
        return {_decode(key, tensors): _decode(item, tensors) for key, item in tree[_DICT]}
    if _FLOAT in tree:
        return float(tree[_FLOAT])
    return {key: _decode(item, tensors) for key, item in tree.items()}
