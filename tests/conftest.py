"""Test set-up: offline Hugging Face libraries, a private HF cache, one torch thread (2-core machines)."""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# The HF libraries read these when they are imported: set them before anything imports them.
os.environ["HF_HUB_OFFLINE"] = "1"
if "HF_HOME" not in os.environ:  # a private cache, removed when the session ends (it is the session's own)
    os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="hf_llpf_test_home_")
    atexit.register(shutil.rmtree, os.environ["HF_HOME"], ignore_errors=True)
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits():
    """The built-in digits data, loaded once per test session."""
    from hf_llpf.data.bundle import load_data

    return load_data("digits")


@pytest.fixture(scope="session")
def trained_endpoint(tmp_path_factory, digits):
    """``trained_endpoint(seed, epochs=8, **recipe)`` → the folder of a small_cnn endpoint trained on digits.

    The one endpoint-training fixture of the suite: each recipe is trained once per session and its folder
    (timm format) is shared, so tests must treat it as read-only (copy it to change it).
    """
    from hf_llpf.config import TrainRecipe
    from hf_llpf.training.endpoint import train_endpoint

    root = tmp_path_factory.mktemp("endpoints")
    cache: dict[tuple, object] = {}

    def get(seed: int, epochs: int = 8, **recipe):
        key = (seed, epochs, *sorted(recipe.items()))
        if key not in cache:
            out = root / "_".join(str(k) for k in key)
            train_endpoint(TrainRecipe(seed=seed, epochs=epochs, **recipe), out_dir=out, data=digits, progress=False)
            cache[key] = out
        return cache[key]

    return get


@pytest.fixture(scope="session")
def small_cnn_pair(trained_endpoint):
    """Two small_cnn endpoints on digits (seeds 0 and 1, 8 epochs), saved as timm folders; read-only in tests."""
    return trained_endpoint(0), trained_endpoint(1)


@pytest.fixture(scope="session")
def quick_certified_run(small_cnn_pair, tmp_path_factory):
    """``(Path, run_dir)``: the small_cnn pair connected from the CLI on digits with ``test_certify.QUICK`` under the
    automatic ceiling (exact route, final check). Shared by the certificate tests: read-only (copy it to change it)."""
    import hf_llpf
    from hf_llpf.cli import main
    from tests.algorithms.test_certify import QUICK

    run_dir = tmp_path_factory.mktemp("quick_certified") / "run"
    overrides = [f"{k}={v}" for k, v in QUICK.items()]
    assert main(["connect", str(small_cnn_pair[0]), str(small_cnn_pair[1]), "--data", "digits", "--out",
                 str(run_dir), "--no-progress", *overrides]) == 0  # fmt: skip
    return hf_llpf.RunPath(run_dir), run_dir


def state_equal(a: dict, b: dict) -> bool:
    """Two state dicts hold the same names and bit-identical tensors."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def image_batches(channels=3, batches=3, size=32, seed=0):
    """Seeded (images, labels) batches of 8x8 images and 10 classes, for the eval-view tests."""
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(size, channels, 8, 8, generator=g), torch.randint(0, 10, (size,), generator=g))
        for _ in range(batches)
    ]


@torch.no_grad()
def plain_eval_loss(model, data):
    """The model's own eval-mode cross-entropy over ``data`` (NCHW, unfolded), computed without hf_llpf."""
    total = sum(float(F.cross_entropy(model(x), y)) * len(y) for x, y in data)
    return total / sum(len(y) for _, y in data)


def linear_m2m(settings: dict):
    """An M2M method built by hand between two seeded ``nn.Linear(4, 3)`` endpoints, for tests of its internals.

    Returns ``(method, model, b)``: the method, its working model (starting at θ_A) and the θ_B module.
    """
    import copy

    from hf_llpf.algorithms.base import Context
    from hf_llpf.algorithms.m2m import M2M
    from hf_llpf.algorithms.repair import RepairTrainer
    from hf_llpf.config import ConnectConfig, build
    from hf_llpf.models.endpoints import Endpoint
    from hf_llpf.stages import build_stages

    torch.manual_seed(0)
    a, b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    model = copy.deepcopy(a)
    trainer = RepairTrainer(model, [(torch.randn(8, 4), torch.randint(0, 3, (8,)))], lr=0.1, momentum=0.0,
                            weight_decay=0.0, min_iters=1, max_iters=1, loss_threshold=0.0)  # fmt: skip
    context = Context(model, trainer, build_stages(model, torch.randn(2, 4)), build(ConnectConfig, settings),
                      progress=False)  # fmt: skip
    return M2M(context, Endpoint(model=b, kind="module", source="b")), model, b


class Killed(BaseException):
    """Stands for a kill right after a checkpoint write: what is on disk is exactly what a kill leaves."""


def connect_killed_after(n_saves: int, monkeypatch, *args, **kwargs) -> int:
    """``hf_llpf.connect(*args, **kwargs)``, stopped right after its ``n_saves``-th checkpoint (never, when the
    run has fewer); returns how many checkpoints were written. The lock is released as by a dead process's."""
    import hf_llpf
    import hf_llpf.run.state as resume_state

    real, count = resume_state.save, {"n": 0}

    def save(*a, **k):
        real(*a, **k)
        count["n"] += 1
        if count["n"] == n_saves:
            raise Killed

    monkeypatch.setattr(resume_state, "save", save)
    try:
        hf_llpf.connect(*args, **kwargs)
    except Killed:
        pass
    finally:
        monkeypatch.setattr(resume_state, "save", real)
    return count["n"]


def fsdp_pairs(root, small_cnn_pair):
    """``root`` filled with the sharding tests' two pairs: a tiny GPT-2 pair (tied lm_head/wte) with ``corpus.txt``,
    and links ``cnn_0``/``cnn_1`` to the small_cnn pair (BatchNorm) on digits. Returns ``root``."""
    from text_fixtures import gpt2_endpoints, write_text_file

    gpt2_endpoints(root, steps=20)
    write_text_file(root / "corpus.txt")
    for k, folder in enumerate(small_cnn_pair):
        (root / f"cnn_{k}").symlink_to(folder, target_is_directory=True)
    return root


REPO_ROOT = Path(__file__).resolve().parents[1]


def run_python(args: list[str], *, timeout: int, processes: int | None = None) -> subprocess.CompletedProcess:
    """``python ARGS`` in a process of its own, from the repository root, with the repository and ``tests/`` on its
    import path and one OpenMP thread; under ``torchrun --standalone`` with ``processes`` processes when given (the
    sharding tests' launches, a test file as the script). Fails the test, with the end of stderr, unless it exits 0.

    Returns:
        The completed process (``stdout``, ``stderr`` as text).
    """
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)] if processes else []
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests")]),
    }
    done = subprocess.run([sys.executable, *launcher, *args], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=REPO_ROOT)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return done
