"""hf_llpf: low-loss paths between trained checkpoints (LLPF, arXiv 2505.02604) for the Hugging Face ecosystem."""

__version__ = "0.1.0"

from hf_llpf import zoo  # noqa: E402,F401  (registers the built-in architectures with timm)
from hf_llpf.connect import connect  # noqa: E402
from hf_llpf.path import Path  # noqa: E402

__all__ = ["Path", "__version__", "connect"]
