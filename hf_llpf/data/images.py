"""Image columns as uint8 tensors ``N, C, H, W``: decoded once into memory, or per batch (:class:`LazyImages`).

Every image is decoded the same way on both paths: converted to one mode for the whole set (the model's channel
count when known: ``L`` for 1, ``RGB`` for 3; else RGB as soon as one image has colour), then resized on its
own to ``image_size`` (bilinear), so images of mixed sizes and modes can be batched. Small sets are decoded
once (fast batches); above :data:`IN_MEMORY_LIMIT` bytes of pixels (``decode="auto"``), or with
``decode="on_access"``, only the batch being drawn is decoded, so memory holds batches, not the data set.
Both paths give the same tensors, bit for bit.
"""

from __future__ import annotations

import io
from typing import Any

import datasets
import numpy as np
import torch
import torch.nn.functional as F

from hf_llpf.data.sources import feature_type
from hf_llpf.errors import DataMismatchError

IN_MEMORY_LIMIT = 1 << 27  # 128 MiB of uint8 pixels: CIFAR-10's test split, MNIST, digits stay in memory
_GREYS = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F")


class LazyImages:
    """The images of one column, decoded when indexed: ``images[idx]`` → uint8 ``B, C, H, W``.

    Args:
        ds: the split (its other columns are not read).
        name: the image column.
        mode: ``"L"`` or ``"RGB"``, every image converted to it.
        size: ``(H, W)`` every image is resized to (when it differs).
        indices: the examples of ``ds`` this view holds (``None``: all).
    """

    def __init__(self, ds: datasets.Dataset, name: str, *, mode: str, size: tuple[int, int], indices: Any = None):
        self.ds, self.name, self.mode, self.size = ds.select_columns([name]), name, mode, size
        self.indices = None if indices is None else torch.as_tensor(indices, dtype=torch.long)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        n = len(self.ds) if self.indices is None else len(self.indices)
        return (n, 3 if self.mode == "RGB" else 1, *self.size)

    def __len__(self) -> int:
        return self.shape[0]

    def numel(self) -> int:
        """Pixels of the whole view, decoded."""
        return int(np.prod(self.shape))

    def subset(self, idx: torch.Tensor) -> LazyImages:
        """A view of the examples ``idx`` of this view (nothing decoded)."""
        rows = idx if self.indices is None else self.indices[idx]
        return LazyImages(self.ds, self.name, mode=self.mode, size=self.size, indices=rows)

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        rows = idx if self.indices is None else self.indices[idx]
        images = self.ds[[int(i) for i in rows]][self.name]
        return decode_all(images, mode=self.mode, size=self.size)


def decode_all(images: list, *, mode: str, size: tuple[int, int]) -> torch.Tensor:
    """PIL images → uint8 ``N, C, H, W``, each converted to ``mode`` and resized to ``size`` on its own."""
    out = torch.empty((len(images), 3 if mode == "RGB" else 1, *size), dtype=torch.uint8)
    for i, im in enumerate(images):
        a = np.asarray(im if im.mode == mode else im.convert(mode))
        t = torch.from_numpy(np.array(a[None] if a.ndim == 2 else a.transpose(2, 0, 1), copy=True))  # writable
        out[i] = t if tuple(t.shape[-2:]) == size else resize(t[None].float(), size)[0]
    return out


def image_tensors(
    ds: datasets.Dataset, name: str, *, image_size: int | None, channels: int | None = None, decode: str = "auto"
) -> torch.Tensor | LazyImages:
    """The images of column ``name``: a uint8 tensor in memory, or :class:`LazyImages` (see the module doc).

    Args:
        ds: the split.
        name: the image column (``datasets.Image``, or arrays of pixels).
        image_size: resize every image to ``image_size`` squared (needed when their sizes differ).
        channels: the model's input channels (1: grey, 3: RGB), when known.
        decode: ``"auto"``, ``"memory"`` or ``"on_access"`` (only ``datasets.Image`` columns decode on access).

    Raises:
        DataMismatchError: not images (strings, token ids, values outside 0..255), or sizes differ without
            ``image_size``.
    """
    feature = ds.features[name]
    if not isinstance(feature, datasets.Image):
        return _array_tensors(ds, name, feature, image_size=image_size, channels=channels)
    modes, sizes = _headers(ds, name)
    mode = "L" if channels == 1 else "RGB" if channels == 3 or modes - set(_GREYS) else "L"
    if len(sizes) > 1 and image_size is None:
        raise DataMismatchError(
            f"image_column {name!r} holds images of {len(sizes)} sizes (e.g. {sorted(sizes)[:3]} as W x H); pass "
            "data.image_size=N to resize each one to N x N"
        )
    w, h = next(iter(sizes))
    size = (image_size, image_size) if image_size else (h, w)
    images = LazyImages(ds, name, mode=mode, size=size)
    if decode == "on_access" or (decode == "auto" and images.numel() > IN_MEMORY_LIMIT):
        return images
    return images[torch.arange(len(ds))]


def _headers(ds: datasets.Dataset, name: str) -> tuple[set[str], set[tuple[int, int]]]:
    """The modes and ``(W, H)`` sizes of every image, read from the file headers (nothing decoded)."""
    from PIL import Image

    raw = ds.select_columns([name]).cast_column(name, datasets.Image(decode=False))
    modes, sizes = set(), set()
    for batch in raw.iter(batch_size=1000):  # in chunks: the encoded bytes of a large set never all in memory
        for item in batch[name]:
            with Image.open(io.BytesIO(item["bytes"]) if item.get("bytes") else item["path"]) as im:
                modes.add(im.mode)
                sizes.add(im.size)
    return modes, sizes


def _array_tensors(
    ds: datasets.Dataset, name: str, feature: Any, *, image_size: int | None, channels: int | None
) -> torch.Tensor:
    _check_pixel_column(ds, name, feature)
    arrays = [np.asarray(a) for a in ds[name]]
    if {a.ndim for a in arrays} == {2, 3} or (channels == 3 and {a.ndim for a in arrays} == {2}):
        arrays = [np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a for a in arrays]  # greys → 3 channels
    arrays = [a[None] if a.ndim == 2 else a for a in arrays]  # 1, H, W for greys; H, W, C or C, H, W otherwise
    return _stack(arrays, name, image_size)


def _check_pixel_column(ds: datasets.Dataset, name: str, feature: Any) -> None:
    """An image column that is not ``datasets.Image`` must hold arrays of pixels: 0..255 or floats 0..1."""
    kind = feature_type(feature)
    expected = "images (an Image column, or arrays of H x W [x C] pixels: integers 0..255 or floats 0..1)"
    if isinstance(feature, datasets.Value):
        example = f"{ds[0][name]!r:.60}"
        raise DataMismatchError(f"image_column {name!r} holds {kind} values (e.g. {example}); expected {expected}")
    try:
        shape = np.asarray(ds[0][name]).shape
    except ValueError:  # ragged nested lists
        shape = None
    if shape is None or len(shape) < 2:
        raise DataMismatchError(
            f"image_column {name!r} holds {kind} values (shape {shape or 'ragged'}: token ids or other sequences, "
            f"not pixel grids); expected {expected}"
        )


def _stack(arrays: list[np.ndarray], name: str, image_size: int | None) -> torch.Tensor:
    """``N, C, H, W`` uint8 images, resized to ``image_size`` (each on its own when their sizes differ)."""
    channels_last = all(a.shape[-1] in (1, 3, 4) and a.shape[0] not in (1, 3, 4) for a in arrays)
    arrays = [a.transpose(2, 0, 1) if channels_last else a for a in arrays]  # C, H, W views
    top, low = max(float(a.max()) for a in arrays), min(float(a.min()) for a in arrays)
    if low < 0 or top > 255:  # never clamped: token ids (2023 → 255) or normalised features are not pixels
        raise DataMismatchError(
            f"image_column {name!r} holds values from {low:g} to {top:g}; expected pixel values 0..255 or floats "
            "0..1 (token ids or normalised features are not images)"
        )
    scale = 255.0 if arrays[0].dtype.kind == "f" and top <= 1.0 else 1.0
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1 and image_size is None:
        raise DataMismatchError(
            f"image_column {name!r} holds images of {len(shapes)} sizes (e.g. {sorted(shapes)[:3]}); pass "
            "data.image_size=N to resize each one to N x N"
        )
    if len({s[0] for s in shapes}) > 1:
        raise DataMismatchError(f"image_column {name!r} mixes channel counts: {sorted(shapes)[:3]}")
    size = (image_size, image_size) if image_size else None
    if len(shapes) > 1:  # each image on its own, before stacking
        return torch.cat([resize(torch.from_numpy(a[None].astype(np.float32)) * scale, size) for a in arrays])
    images = torch.from_numpy(np.ascontiguousarray(np.stack(arrays)))
    if images.dtype != torch.uint8:
        images = (images.float() * scale).round().clamp(0, 255).to(torch.uint8)
    if size is not None and tuple(images.shape[-2:]) != size:
        images = resize(images.float(), size)
    return images


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of float ``B, C, H, W`` pixel values 0..255 to uint8 ``B, C, *size``."""
    resized = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8)


def model_channels(model: Any) -> int | None:
    """The input channels of a model's first convolution (``None``: it has none)."""
    conv = next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)
    return conv.in_channels if conv is not None else None


__all__ = ["IN_MEMORY_LIMIT", "LazyImages", "decode_all", "image_tensors", "model_channels", "resize"]
