"""Endpoints and the files of a model folder.

- :mod:`~hf_llpf.models.endpoints`: :func:`load_endpoint` (a local folder, a Hub id or a timm name), saving a model,
  the checks two endpoints must pass;
- :mod:`~hf_llpf.models.weights`: the safetensors weights of one folder (dtype, shards);
- :mod:`~hf_llpf.models.timm_config`: the ``config.json`` of a timm point, with the data it was trained on;
- :mod:`~hf_llpf.models.remote_code`: pointers to code in other repos, removed from every file written.

``hf_llpf.models.load_endpoint`` and the other names of :mod:`~hf_llpf.models.endpoints` stay reachable here
(imported on first use).
"""

import importlib


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    endpoints = importlib.import_module("hf_llpf.models.endpoints")
    try:
        return getattr(endpoints, name)
    except AttributeError:
        raise AttributeError(f"module 'hf_llpf.models' has no attribute {name!r}") from None
