"""The connect's final check runs with the walk's dead state freed and without a model of its own."""

from __future__ import annotations

import gc
import warnings

import pytest
import torch
from test_certify import QUICK

import hf_llpf
from hf_llpf.algorithms import final_check as final_check_module
from hf_llpf.models.endpoints import load_endpoint

torch.set_num_threads(1)


def _copies_alive(shape: torch.Size) -> int:
    """How many distinct CPU storages of tensors of ``shape`` are alive (one per copy of that model tensor)."""
    gc.collect()
    seen = set()
    with warnings.catch_warnings():  # isinstance() touches deprecated torch objects, which warn
        warnings.simplefilter("ignore")
        tensors = [obj for obj in gc.get_objects() if isinstance(obj, torch.Tensor)]
    for t in tensors:
        if t.device.type == "cpu" and t.shape == shape:
            seen.add(t.untyped_storage().data_ptr())
    return len(seen)


@pytest.mark.slow
def test_the_final_check_holds_the_endpoints_the_working_model_and_two_points(
    small_cnn_pair, digits, tmp_path, monkeypatch
):
    # Counted at the final check's first loss: θ_A and θ_B as loaded, the walk's working model (the check evaluates
    # in it) and its channels-last evaluation view, the point read back. No longer alive then: the gradients, the
    # SGD momentum, the guard's snapshot of the model and of the momentum, the check's own copy of θ_A and that
    # copy's view (ten copies before). Copies left by other tests (fixtures) are counted first and taken off.
    model = load_endpoint(small_cnn_pair[0]).model
    largest = max(model.parameters(), key=lambda p: p.numel())
    shape = largest.shape
    assert sum(p.shape == shape for p in model.parameters()) == 1  # one tensor of that shape in each copy
    del model, largest
    elsewhere = _copies_alive(shape)
    real, counted = final_check_module._loss, []

    def count_then_measure(certifier, model):
        if not counted:
            counted.append(_copies_alive(shape) - elsewhere)
        return real(certifier, model)

    monkeypatch.setattr(final_check_module, "_loss", count_then_measure)
    config = {**QUICK, "max_ticks": 2}
    path = hf_llpf.connect(*small_cnn_pair, digits, config=config, run_dir=tmp_path / "r", progress=False)
    assert path.summary["run"]["certification"]["final_check"]["points"] == len(path)
    assert counted == [5]
