"""Data: specs, sources, the task, image and text bundles, the seeded loader and the tokenizer check.

- :mod:`~hf_llpf.data.bundle`: :func:`load_data`, the one entry point (a spec → train/test splits and loaders);
- :mod:`~hf_llpf.data.sources`: reading a spec (``"digits"``, a Hub id, a local file or folder);
- :mod:`~hf_llpf.data.task`: which task a run is (image, text classification, causal LM);
- :mod:`~hf_llpf.data.images`, :mod:`~hf_llpf.data.text`: the image and text bundles;
- :mod:`~hf_llpf.data.loader`: the seeded, resumable batch loader;
- :mod:`~hf_llpf.data.tokenizer`: the endpoints' tokenizer, checked alike.

``hf_llpf.data.load_data`` and the other names of :mod:`~hf_llpf.data.bundle` stay reachable here (imported on
first use, so ``import hf_llpf.data.loader`` loads no ``datasets``).
"""

import importlib

__all__ = [
    "BUILTIN_DATASETS",
    "DataBundle",
    "ImageData",
    "SeededLoader",
    "TextBundle",
    "check_labels_fit",
    "cifar_augment",
    "load_data",
]


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    bundle = importlib.import_module("hf_llpf.data.bundle")
    try:
        return getattr(bundle, name)
    except AttributeError:
        raise AttributeError(f"module 'hf_llpf.data' has no attribute {name!r}") from None
