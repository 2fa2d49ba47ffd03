"""Content hashes: of a file (read in blocks), of a local model folder's weights files, and of a model's weights
(names, dtypes, shapes and bytes)."""

from __future__ import annotations

import hashlib
import os

import torch
from torch import nn


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def local_revision(*files: str | os.PathLike) -> str:
    """The revision of a local endpoint: ``local:`` and a hash of its weights file (of each shard's hash, in order,
    for sharded weights)."""
    if len(files) == 1:
        return "local:" + file_sha256(files[0])[:16]
    return "local:" + hashlib.sha256("".join(file_sha256(f) for f in files).encode()).hexdigest()[:16]


def state_hash(model: nn.Module) -> str:
    """sha256 over a model's tensor names, dtypes, shapes and bytes (parameters and buffers)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()
