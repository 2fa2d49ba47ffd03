"""The path-finding algorithms: LLPF_M2M (model to model)."""

from hf_llpf.algorithms.m2m import M2M

__all__ = ["M2M"]
