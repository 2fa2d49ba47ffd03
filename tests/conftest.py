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
