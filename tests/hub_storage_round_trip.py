"""The Hub round trip of ``test_hub_storage.py``, run as its own program: ``python hub_storage_round_trip.py CFG``.

A subprocess for the reason ``hub_round_trip.py`` gives (huggingface_hub reads ``HF_ENDPOINT`` at import). It
pushes a bf16 run directory to the stand-in, loads it back through olah, and writes what it read to
``cfg["results"]``: each published point's tensor dtypes (from the safetensors headers), the card and the summary.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import safetensors
import torch


def main(cfg_file: str) -> None:
    torch.set_num_threads(1)
    cfg = json.loads(Path(cfg_file).read_text())
    token = os.environ.pop("LLPF_TEST_TOKEN")
    from huggingface_hub import hf_hub_download

    import hf_llpf.hub as hub
    from hf_llpf.models.endpoints import load_endpoint
    from hf_llpf.models.weights import weight_files

    pushed = hub.push_path(cfg["run"], repo_id=cfg["repo"], token=token, endpoint=cfg["standin"])
    path = hub.load_path(cfg["repo"])
    dtypes = []
    for i in range(len(path)):
        found = set()
        for f in weight_files(path.point_dir(i)):
            with safetensors.safe_open(str(f), framework="pt") as handle:
                found |= {handle.get_slice(k).get_dtype() for k in handle.keys()}  # noqa: SIM118
        dtypes.append(sorted(found))
    middle = path.model_at(len(path) // 2)
    # The repo root is a sharded timm-format point: load_endpoint downloads its index and the shards it names.
    root = load_endpoint(cfg["repo"]).model.state_dict()
    root_is = [i for i in range(len(path)) if all(torch.equal(v, root[k]) for k, v in path.state_dict_at(i).items())]
    card = Path(hf_hub_download(cfg["repo"], "README.md", revision=path.commit)).read_text()
    out = {
        "tag": pushed.get("tag"),
        "points": len(path),
        "dtypes": dtypes,
        "shards": [len(weight_files(path.point_dir(i))) for i in range(len(path))],
        "middle_dtype": str(next(middle.parameters()).dtype),
        "root_is": root_is,
        "root_dtype": str(root["conv1.weight"].dtype),
        "middle_state": {k: v.tolist() for k, v in list(middle.state_dict().items())[:2]},
        "summary": path.summary,
        "card": card,
    }
    Path(cfg["results"]).write_text(json.dumps(out, default=str))


if __name__ == "__main__":
    main(sys.argv[1])
