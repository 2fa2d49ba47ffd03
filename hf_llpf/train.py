"""Kept for one release: endpoint training moved to :mod:`hf_llpf.training.endpoint` (the README's
``from hf_llpf.train import train_endpoint`` still works); the repair trainer is :mod:`hf_llpf.algorithms.repair`."""

from hf_llpf.training.endpoint import train_endpoint, train_or_reuse

__all__ = ["train_endpoint", "train_or_reuse"]
