"""hf_llpf: low-loss paths between trained checkpoints (LLPF, arXiv 2505.02604) for the Hugging Face ecosystem.

The package root is a lazy facade: ``import hf_llpf`` loads no engine (no timm, datasets or accelerate), and
``hf_llpf.connect`` etc. import their module on first use. The built-in architectures are registered with timm
by ``import hf_llpf.zoo`` (every engine module imports it); when timm is already imported, ``import hf_llpf``
registers them too, so ``import timm, hf_llpf`` followed by ``timm.create_model("local-dir:...")`` works.
"""

import sys

__version__ = "0.1.0"

# Public name -> the module that defines it (imported on first use).
_LAZY = {
    "connect": "hf_llpf.api",
    "walk_to_origin": "hf_llpf.api",
    "RunPath": "hf_llpf.run",
    "Path": "hf_llpf.run",  # RunPath's old name, kept for one release
    "evaluate_path": "hf_llpf.evaluation",
    "evaluate_run": "hf_llpf.api",
    "push_path": "hf_llpf.hub",
    "load_path": "hf_llpf.hub",
    "export_point": "hf_llpf.hub",
    "compare": "hf_llpf.comparison",
    "build_baseline": "hf_llpf.baselines",
}

if "timm" in sys.modules:
    import hf_llpf.zoo  # noqa: F401  (registers the built-in architectures with the timm already loaded)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hf_llpf' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "Path",
    "RunPath",
    "__version__",
    "build_baseline",
    "compare",
    "connect",
    "evaluate_path",
    "evaluate_run",
    "export_point",
    "load_path",
    "push_path",
    "walk_to_origin",
]
