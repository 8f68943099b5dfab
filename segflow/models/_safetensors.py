"""Byte-reproducible safetensors files: the same tensors and metadata always give the same bytes.

``safetensors`` writes its JSON header from a hash map, so the order of the ``__metadata__``
keys (and of the tensor entries) changes from one write to the next; the tensor data block does
not (tensors are laid out by dtype alignment, then name). :func:`safetensors_bytes` rewrites the
header with its keys sorted (``separators=(",", ":")``, padded with spaces to a multiple of 8
bytes as the format asks) and keeps the data block as written, so the weights' SHA-256 is
reproducible. The result is a valid safetensors file (the data offsets are relative to the end
of the header), read back by ``safetensors.torch.load_file`` like any other.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import torch
from safetensors.torch import save

__all__ = ["safetensors_bytes"]


def safetensors_bytes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """The safetensors serialisation of ``tensors`` (CPU, contiguous) with a deterministic header."""
    raw = save(dict(tensors), metadata=dict(metadata) if metadata is not None else None)
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + raw[8 + size :]
