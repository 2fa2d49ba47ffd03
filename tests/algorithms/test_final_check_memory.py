"""The connect's final check runs with the walk's dead state freed and without a model of its own."""

from __future__ import annotations

import gc
import warnings
from types import SimpleNamespace

import pytest
import torch
from test_certify import QUICK

import hf_llpf
from hf_llpf.algorithms import final_check as final_check_module
from hf_llpf.algorithms.guard import DivergenceGuard
from hf_llpf.models.endpoints import load_endpoint
from hf_llpf.run import state as run_state

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


def _held_copies(shape: torch.Size) -> list[torch.Tensor]:
    """The CPU tensors of ``shape`` alive now, to be held by the caller while it counts: a copy another test left
    behind and the run then freed would otherwise be taken off a count it is no longer part of."""
    gc.collect()
    with warnings.catch_warnings():  # as in _copies_alive
        warnings.simplefilter("ignore")
        tensors = [t for t in gc.get_objects() if isinstance(t, torch.Tensor)]
    return [t for t in tensors if t.device.type == "cpu" and t.shape == shape]


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
    held = _held_copies(shape)  # copies left by earlier tests: one freed during the run would make the count short
    elsewhere = _copies_alive(shape)
    real, counted = final_check_module._loss, []

    def count_then_measure(certifier, model, device):
        if not counted:
            counted.append(_copies_alive(shape) - elsewhere)
        return real(certifier, model, device)

    monkeypatch.setattr(final_check_module, "_loss", count_then_measure)
    config = {**QUICK, "max_ticks": 2}
    path = hf_llpf.connect(*small_cnn_pair, digits, config=config, run_dir=tmp_path / "r", progress=False)
    assert path.summary["run"]["certification"]["final_check"]["points"] == len(path)
    assert counted == [5]
    del held


@pytest.mark.slow
def test_a_checkpoint_is_written_beside_the_walks_live_copies_only(small_cnn_pair, digits, tmp_path, monkeypatch):
    # Counted as above (distinct live copies of one model tensor) while each checkpoint's tensors are in hand, the
    # walk's worst moment besides its SGD steps (whose gradients live in C++, out of gc's sight): θ_A, θ_B, the
    # working model and its channels-last evaluation view (tick 0); the guard's snapshot of the model and the SGD
    # momentum (tick 1); the guard's snapshot of the momentum (tick 2); the last segment's start (the last
    # checkpoint). Before: each checkpoint also copied the model and the momentum for the file, and the gradients
    # of the last repair were held until the next one ([5, 9, 10, 11]).
    model = load_endpoint(small_cnn_pair[0]).model
    shape = max(model.parameters(), key=lambda p: p.numel()).shape
    del model
    held = _held_copies(shape)  # copies left by earlier tests: one freed during the run would make the count short
    elsewhere = _copies_alive(shape)
    checkpoints, real_encode = [], run_state.encode

    def counted_encode(state):
        encoded = real_encode(state)
        checkpoints.append(_copies_alive(shape) - elsewhere)
        return encoded

    monkeypatch.setattr(run_state, "encode", counted_encode)
    config = {**QUICK, "max_ticks": 2, "checkpoint_every": 1}
    hf_llpf.connect(*small_cnn_pair, digits, config=config, run_dir=tmp_path / "r", progress=False)
    assert checkpoints == [4, 6, 7, 8]
    del held


class _Tied(torch.nn.Module):
    """An embedding and an output layer sharing one weight (as GPT-2's ``wte`` and ``lm_head``)."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(10, 4)
        self.head = torch.nn.Linear(4, 10, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        return self.head(self.emb(ids))


def test_the_guard_copies_a_tied_weight_once_and_restores_it_and_the_momentum():
    torch.manual_seed(0)
    model = _Tied()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    guard = DivergenceGuard(model, SimpleNamespace(optimizer=optimizer))

    def step():
        optimizer.zero_grad()
        model(torch.arange(10)).square().mean().backward()
        optimizer.step()

    step()  # the momentum exists before the snapshot
    guard.snapshot()
    saved = guard.saved_model_state()
    assert list(model.state_dict()) == ["emb.weight", "head.weight"]
    assert saved[0] is saved[1]  # one copy for the two names (two before)
    weight, momentum = model.emb.weight.detach().clone(), optimizer.state[model.emb.weight]["momentum_buffer"].clone()
    step()
    assert not torch.equal(model.emb.weight, weight)
    guard.restore()
    assert torch.equal(model.emb.weight, weight) and model.head.weight is model.emb.weight
    assert torch.equal(optimizer.state[model.emb.weight]["momentum_buffer"], momentum)
