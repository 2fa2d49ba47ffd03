"""The files the tool reads and writes, handled safely: checked JSON/YAML readers, names resolved strictly inside a
folder, nothing half-written, content hashes.

- :mod:`~hf_llpf.files.textfiles`: :func:`~hf_llpf.files.textfiles.read_json` / ``read_yaml``, one error per damage;
- :mod:`~hf_llpf.files.safe_paths`: names read from a run directory or a repo, resolved inside it;
- :mod:`~hf_llpf.files.partial`: what a failed write leaves behind is removed again;
- :mod:`~hf_llpf.files.hashing`: hashes of a file, a model folder's weights, a model's weights.
"""
