"""Test set-up: offline Hugging Face libraries, a private HF cache, one torch thread (2-core machines)."""

import os
import tempfile

# The HF libraries read these when they are imported: set them before anything imports them.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="hf_llpf_test_home_"))
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits():
    """The built-in digits data, loaded once per test session."""
    from hf_llpf.data import load_data

    return load_data("digits")


@pytest.fixture(scope="session")
def small_cnn_pair(tmp_path_factory, digits):
    """Two small_cnn endpoints on digits (seeds 0 and 1, 8 epochs), saved as timm folders; read-only in tests."""
    from hf_llpf.config import TrainRecipe
    from hf_llpf.train import train_endpoint

    root = tmp_path_factory.mktemp("small_cnn_pair")
    for seed in (0, 1):
        train_endpoint(TrainRecipe(seed=seed, epochs=8), out_dir=root / f"s{seed}", data=digits, progress=False)
    return root / "s0", root / "s1"


def state_equal(a: dict, b: dict) -> bool:
    """Two state dicts hold the same names and bit-identical tensors."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
