"""The sequential route reads the examples it draws on demand: none of the training set is held, the decisions are
those made on the examples in memory, and text of several lengths can be drawn too (docs/algorithm.md §10.1)."""

import sys
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator
from text_fixtures import reviews, word_tokenizer

import hf_llpf.algorithms.certify as certify
from hf_llpf.config import ConnectConfig, DataConfig
from hf_llpf.data.text import text_bundle
from hf_llpf.evaluation.decisions import BundleExamples, Decider, TrainingExamples
from hf_llpf.evaluation.probe import build_probe
from hf_llpf.models.endpoints import create_model

torch.set_num_threads(1)
CPU = torch.device("cpu")


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("small_cnn", num_classes=10, in_chans=1).eval()


def test_decisions_read_on_demand_are_those_made_on_the_examples_in_memory(digits):
    n = digits.split_size("train")
    in_memory = build_probe(None, None, digits, size=sys.maxsize, device=CPU).batches
    deciders = [
        Decider(examples, n, loss_fn=None, delta=0.05, exact_max=300, seed=3)
        for examples in (in_memory, BundleExamples(digits, CPU))
    ]
    model, outcomes = _model(0), []
    mean = build_probe(None, None, digits, size=sys.maxsize, device=CPU).loss(model)
    for bar in (3 * mean, 0.5 * mean, 1.01 * mean, 1.5 * mean):  # far above, under, just above, above the mean
        held, read = (d.decide(model, bar, clip=4 * mean) for d in deciders)
        assert read == held  # the same draws, the same losses bit for bit, the same outcome
        outcomes.append((held.accepted, held.exact, held.examples))
    assert {accepted for accepted, _, _ in outcomes} == {True, False} and outcomes[0][2] == 32  # both outcomes
    assert [d.log for d in deciders][0] == deciders[1].log and deciders[1].examples_run == deciders[0].examples_run
    assert {d.decide(model, 1.01 * mean, clip=4 * mean).accepted for d in deciders} == {False}  # capped at 300


def test_a_large_training_set_is_never_held_whole(digits, monkeypatch):
    config = ConnectConfig(certify_exact_max=400, probe_size=200)

    def whole_probe(*args, **kwargs):
        raise AssertionError("the sequential route on a loaded data set must not hold every training example")

    monkeypatch.setattr(certify, "build_probe", whole_probe)
    accelerator = Accelerator(cpu=True)
    endpoints = [SimpleNamespace(model=_model(s)) for s in (0, 1)]
    certifier = certify.run_certifier(endpoints, None, None, digits, config, None, accelerator)
    assert certifier.examples.route == "sequential" and certifier.examples.num_examples == 1437
    assert isinstance(certifier.decider.source, BundleExamples)
    assert certifier.probe.num_examples == 200  # the endpoints' measure: the first probe_size examples
    first = build_probe(None, None, digits, size=sys.maxsize, device=CPU).batches
    with torch.no_grad():
        expected = [
            float(
                torch.nn.functional.cross_entropy(
                    e.model(torch.cat([b[0] for b in first])[:200]), torch.cat([b[1] for b in first])[:200]
                )
            )  # fmt: skip
            for e in endpoints
        ]
    assert certifier.endpoint_losses == pytest.approx(expected, rel=1e-5)


def test_text_of_several_lengths_is_drawn_one_example_at_a_time():
    tokenizer = word_tokenizer()
    train, test = reviews(300, seed=0), reviews(40, seed=1)
    bundle = text_bundle(DataConfig(source="<reviews>", task="text-classification", max_length=16), train, test,
                         tokenizer=tokenizer)  # fmt: skip
    lengths = {len(ids) for ids in bundle._features("train")["input_ids"]}
    assert len(lengths) > 3  # batches of these cannot be joined: the in-memory route could not draw them
    config = ConnectConfig(certify_exact_max=100, probe_size=64)
    examples = TrainingExamples.read_on_demand(bundle, config, device=CPU)
    assert examples.route == "sequential" and examples.decider.drawable
    batch = examples.decider.source.take(torch.tensor([5, 0, 17]))
    single = [examples.decider.source.take(torch.tensor([i])) for i in (5, 0, 17)]
    for row, one in enumerate(single):  # each example as it is alone, padded to the drawn batch's length
        width = int(one["attention_mask"].sum())
        assert torch.equal(batch["input_ids"][row, :width], one["input_ids"][0, :width])
        assert int(batch["attention_mask"][row].sum()) == width
    assert torch.equal(batch["labels"], torch.tensor([train[i]["label"] for i in (5, 0, 17)]))
