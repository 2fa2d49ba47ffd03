"""hf_llpf: low-loss paths between trained checkpoints (LLPF, arXiv 2505.02604) for the Hugging Face ecosystem."""

__version__ = "0.1.0"

from hf_llpf import zoo  # noqa: E402,F401  (registers the built-in architectures with timm)
from hf_llpf.connect import connect  # noqa: E402
from hf_llpf.path import Path  # noqa: E402

# Imported on first use: evaluation pulls in matplotlib, the Hub functions huggingface_hub's upload stack.
_LAZY = {
    "evaluate_path": "hf_llpf.evaluate",
    "push_path": "hf_llpf.hub",
    "load_path": "hf_llpf.hub",
    "export_point": "hf_llpf.hub",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hf_llpf' has no attribute {name!r}")


__all__ = ["Path", "__version__", "connect", "evaluate_path", "export_point", "load_path", "push_path"]
