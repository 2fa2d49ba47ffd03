"""Endpoint training (``hf-llpf train``): :func:`~hf_llpf.training.endpoint.train_endpoint` and the model and data
a recipe names (:mod:`~hf_llpf.training.recipe_model`).

The engine's repair training of each tick is not here: it is :mod:`hf_llpf.algorithms.repair`.
"""
