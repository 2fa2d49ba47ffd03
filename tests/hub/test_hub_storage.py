"""A path stored in bf16, published and read back (``-m hub``: olah serves reads, the stand-in takes writes).

Checked: the published points are bf16 (every floating tensor, per safetensors header; sharded points are
published whole), they load back as float32 models holding the stored numbers, and the card and the metrics name
the dtype and the judged max loss.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_hub import TOKEN, olah  # noqa: F401 - the olah server fixture

import hf_llpf
from tests.algorithms.test_certify import QUICK

torch.set_num_threads(1)
pytestmark = pytest.mark.hub

SCRIPT = Path(__file__).parents[1] / "hub_storage_round_trip.py"


@pytest.fixture(scope="module")
def published(olah, small_cnn_pair, digits, tmp_path_factory):  # noqa: F811
    from hub_standin import HubStandin

    url, mirrors, _ = olah
    base = tmp_path_factory.mktemp("hub_storage")
    run_dir = base / "run"
    config = {**QUICK, "point_dtype": "bf16", "max_shard_size": "20KB"}
    path = hf_llpf.connect(*small_cnn_pair, digits, config=config, run_dir=run_dir, progress=False)
    judged = hf_llpf.evaluate_run(path, train_subset=256, linear_points=3, continuity_k=0)["summary"]
    cfg = {"run": str(run_dir), "repo": "llpf/bf16-path", "results": str(base / "results.json")}
    with HubStandin(mirrors, token=TOKEN) as standin:
        cfg["standin"] = standin.url
        (base / "cfg.json").write_text(json.dumps(cfg))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE", "TRANSFORMERS_"))}
        env.update(LLPF_TEST_TOKEN=TOKEN, HF_ENDPOINT=url, HF_HOME=str(base / "hf_home"), HF_HUB_DISABLE_XET="1")
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[2]), env.get("PYTHONPATH", "")])
        proc = subprocess.run([sys.executable, str(SCRIPT), str(base / "cfg.json")], env=env, capture_output=True,
                              text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((base / "results.json").read_text()), judged, path


def test_the_published_points_are_bf16(published):
    results, _, path = published
    assert results["points"] == len(path) >= 3
    for i, found in enumerate(results["dtypes"]):
        assert set(found) <= {"BF16", "I64"} and "BF16" in found, f"point {i}: {found}"
    assert max(results["shards"]) > 1  # 20KB shards: the index and its shards were published and read back
    assert results["middle_dtype"] == "torch.float32"  # built in the working dtype, holding the bf16 numbers
    # The sharded root model, loaded by its Hub id, is one of the points, in the working dtype.
    assert len(results["root_is"]) == 1 and results["root_dtype"] == "torch.float32"
    mid = path.state_dict_at(len(path) // 2)
    for name, values in results["middle_state"].items():
        assert torch.equal(torch.tensor(values, dtype=torch.float32), mid[name])


def test_the_card_and_metrics_name_the_dtype_and_the_judged_max_loss(published):
    results, judged, _ = published
    summary = results["summary"]
    assert summary["run"]["point_dtype"] == "bfloat16" and summary["run"]["endpoint_dtype"] == "float32"
    assert summary["evaluation"]["point_dtype"] == "bfloat16"
    top = judged["llpf"]["max_train_loss"]
    assert summary["llpf"]["max_train_loss"] == top
    assert "Points are stored in bfloat16 (the endpoints are float32" in results["card"]
    assert f"the evaluation read the stored bfloat16 points: max train loss {top:.4g}" in results["card"]
