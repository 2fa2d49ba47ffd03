"""Tensor maths of an LLPF tick on tensors spread over processes (FSDP2's ``fully_shard``), and reading shards.

Under ``torch.distributed.fsdp.fully_shard`` every process holds a dim-0 chunk of each parameter (a DTensor
placed ``Shard(0)``). The functions here take those tensors (or plain tensors, held whole) and give what the
functions of :mod:`hf_llpf.geometry` give on the whole tensors, exchanging only a few float64 scalars per tensor:

- :mod:`~hf_llpf.sharding.layout`: which rows a process holds (:func:`row_range`), its local parts, rows laid out
  as the model's (:func:`shards_like`);
- :mod:`~hf_llpf.sharding.collectives`: the scalars gathered from every process, combined in rank order;
- :mod:`~hf_llpf.sharding.distance`: distances (sums of squares) and the move toward θ_B;
- :mod:`~hf_llpf.sharding.variance`: variances (count, mean and squared deviations merged by Chan's formula)
  and the variance correction;
- :mod:`~hf_llpf.sharding.slices`: this process's rows of θ_A and θ_B read from safetensors files;
- :mod:`~hf_llpf.sharding.points`: a point written from the shards one tensor at a time, the unsharded writer's
  bytes;
- :mod:`~hf_llpf.sharding.rows`: a model built on the meta device, sharded by ``fully_shard`` and loaded by rows
  (the endpoints of a sharded connect, the points of a sharded evaluation).

With one process (no tensor sharded) each function is the unsharded one itself. M2M's and M2O's ticks run through
these functions, sharded under ``sharding: fsdp`` (:mod:`hf_llpf.algorithms.sharded`,
:mod:`hf_llpf.algorithms.sharded_m2o`; docs/distributed.md, "Models larger than one device").
"""

from hf_llpf.sharding.distance import cosine_similarity, distance_to_origin, distances, move_toward_, total_distance
from hf_llpf.sharding.layout import ShardGroup, local_parts, local_state, row_range, shards_like
from hf_llpf.sharding.points import write_weights_from_shards
from hf_llpf.sharding.slices import read_local_slices, stored_names, tensor_files
from hf_llpf.sharding.variance import merge_moments, moments, project_to_variance_, variances

__all__ = [
    "ShardGroup",
    "cosine_similarity",
    "distance_to_origin",
    "distances",
    "local_parts",
    "local_state",
    "merge_moments",
    "moments",
    "move_toward_",
    "project_to_variance_",
    "read_local_slices",
    "stored_names",
    "row_range",
    "shards_like",
    "tensor_files",
    "total_distance",
    "variances",
    "write_weights_from_shards",
]
