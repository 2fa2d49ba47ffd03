"""How a run stores its points: their floating dtype (``point_dtype``) and the shard size (``max_shard_size``).

A 100M-parameter float32 model makes a point of 400 MB, and a path has hundreds of points; stored in bfloat16 or
float16 a point is half that. A path is judged as it is stored: the evaluation reads the files, and the working
model is rounded to the storage dtype (:func:`round_to_storage`) before the certifier probes a point and before a
point is written, so the probed point, the stored point and the next tick's start are the same numbers. The
endpoints are rounded once when the run starts (:meth:`PointStorage.endpoint`): the path's ends are then exact in
the storage dtype, not in the endpoints' own.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from hf_llpf.models.endpoints import Endpoint
from hf_llpf.models.weights import DEFAULT_MAX_SHARD_SIZE, STORAGE_DTYPES, cast_floating


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` → ``"bfloat16"`` (the names safetensors headers and transformers configs use)."""
    return str(dtype).removeprefix("torch.")


def model_dtype(model: nn.Module) -> torch.dtype | None:
    """The dtype of the model's first floating tensor (``None``: none)."""
    return next((t.dtype for t in model.state_dict().values() if t.is_floating_point()), None)


@torch.no_grad()
def round_to_storage(model: nn.Module, dtype: torch.dtype | None) -> None:
    """Round the model's floating tensors in place to ``dtype`` and back to their own dtype (``None``: nothing).

    Afterwards the model holds exactly the numbers a point stored in ``dtype`` holds; rounding twice changes
    nothing, so rounding before every probe and every write costs one cast and never drifts.

    Raises:
        ConfigError: ``dtype`` cannot hold a value of the model (float16 above 65504), naming the tensor.
    """
    if dtype is None:
        return
    state = model.state_dict()
    rounded = cast_floating(state, dtype)
    for name, tensor in state.items():
        if rounded[name] is not tensor:  # tied tensors are copied twice into the same storage: harmless
            tensor.copy_(rounded[name])


@dataclass(frozen=True)
class PointStorage:
    """The storage settings of a run's points.

    Attributes:
        dtype: the floating dtype points are stored in (``None``: the endpoints' own, ``point_dtype: auto``).
        max_shard_size: weights larger than this are written as shards and an index (``"5GB"`` or bytes).
        keep_auto_map: keep the endpoints' pointers to code in other repos in the points' ``config.json``
            (:mod:`hf_llpf.models.remote_code`); by default they are removed.
    """

    dtype: torch.dtype | None = None
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE
    keep_auto_map: bool = False

    @classmethod
    def from_config(cls, config: Any) -> PointStorage:
        """The storage of a :class:`~hf_llpf.config.ConnectConfig` (``point_dtype``, ``max_shard_size``,
        ``keep_auto_map``)."""
        return cls(
            STORAGE_DTYPES.get(config.point_dtype),
            config.max_shard_size,
            bool(getattr(config, "keep_auto_map", False)),
        )

    def rounds(self, model: nn.Module) -> bool:
        """Whether storing ``model`` changes its numbers (the storage dtype is not the model's own)."""
        return self.dtype is not None and model_dtype(model) not in (None, self.dtype)

    def endpoint(self, endpoint: Endpoint, *, owned: bool) -> Endpoint:
        """``endpoint`` rounded to the storage dtype (itself when nothing changes).

        ``endpoints.json`` keeps naming the endpoint as given: its content hash is taken before the rounding.
        A module the caller passed (``owned=False``) is copied, never changed.
        """
        if not self.rounds(endpoint.model):
            return endpoint
        endpoint.describe()  # the hash of the weights as given, kept by the copy
        model = endpoint.model if owned else copy.deepcopy(endpoint.model)
        round_to_storage(model, self.dtype)
        return replace(endpoint, model=model)

    def summary(self, endpoint_model: nn.Module) -> dict[str, Any]:
        """What ``summary.run`` records: the stored dtype, the endpoints' dtype and the shard size."""
        own = model_dtype(endpoint_model)
        stored = self.dtype or own
        return {
            "point_dtype": dtype_name(stored) if stored is not None else None,
            "endpoint_dtype": dtype_name(own) if own is not None else None,
            "max_shard_size": self.max_shard_size,
        }


# Above this estimated size a run warns before it writes its first point, naming the settings that shrink it.
LARGE_RUN_BYTES = 5 * 1024**3


def point_bytes(model: nn.Module, dtype: torch.dtype | None) -> int:
    """Bytes of one point's tensors when stored in ``dtype`` (``None``: as they are); tied tensors once."""
    seen: set[int] = set()
    total = 0
    for tensor in model.state_dict(keep_vars=True).values():
        key = id(tensor) if tensor.is_meta else tensor.data_ptr()  # parameters on meta (read by rows): no storage
        if key in seen:
            continue
        seen.add(key)
        stored = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
        total += tensor.numel() * stored.itemsize
    return total


def disk_estimate(
    model: nn.Module, storage: PointStorage, *, method: str, stages: int, config: Any
) -> tuple[str, bool]:
    """The run's disk cost stated before it starts, and whether it may be large (above :data:`LARGE_RUN_BYTES`).

    The number of ticks is not known in advance: with ``step_r > 0`` a stage moves for about ``ceil(1/step_r)``
    ticks, and repair training and the arrival test often take a few times more (docs/algorithm.md §3), so the
    range stated is ``stages × ceil(1/step_r)`` to three times that, in points kept (one per ``save_every`` ticks,
    plus stage boundaries); ``max_ticks`` caps it. M2O walks are stated per point only.
    """
    each = point_bytes(model, storage.dtype)
    line = f"each point takes {_size(each)} on disk"
    if method != "m2m" or config.step_r <= 0:
        return line, False
    per_stage = math.ceil(1 / config.step_r)

    def kept(ticks: int) -> int:
        ticks = min(ticks, config.max_ticks)
        return min(ticks + 1, ticks // config.save_every + stages + 2)

    low, high = kept(stages * per_stage), kept(3 * stages * per_stage)
    line += (
        f"; {stages} stages at step_r={config.step_r:g} and a point every {config.save_every} tick(s) make roughly "
        f"{low}–{high} points: {_size(low * each)}–{_size(high * each)}"
    )
    large = high * each > LARGE_RUN_BYTES
    if large:
        line += "; point_dtype=bf16 halves that, save_every=N keeps a point every N ticks"
    return line, large


def _size(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def storage_sentence(summary: dict) -> str | None:
    """One sentence for the card and the report: the dtype the points are stored in, and that the figures judge
    the points as stored (``None`` when the run records no storage dtype, or it is the endpoints' own)."""
    run, evaluation = summary.get("run") or {}, summary.get("evaluation") or {}
    stored = evaluation.get("point_dtype") or run.get("point_dtype")
    own = run.get("endpoint_dtype")
    if not stored or stored == own or own is None:
        return None
    certified = ((run.get("certification") or {}).get("ceiling")) is not None
    text = (
        f"Points are stored in {stored} (the endpoints are {own}; the first and last points are the endpoints "
        f"rounded to {stored}" + (", and the certification probed every point as stored)" if certified else ")")
    )
    top = (summary.get("llpf") or {}).get("max_train_loss")
    if isinstance(top, float) and math.isfinite(top):
        text += f"; the evaluation read the stored {stored} points: max train loss {top:.4g}"
    return text + "."


__all__ = [
    "LARGE_RUN_BYTES",
    "PointStorage",
    "disk_estimate",
    "dtype_name",
    "model_dtype",
    "point_bytes",
    "round_to_storage",
    "storage_sentence",
]
