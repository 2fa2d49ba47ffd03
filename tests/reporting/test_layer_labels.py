"""layers.png's tick labels: one per tensor while they fit, one per stage on deep models (none dropped)."""

from hf_llpf.reporting.layer_plots import LEGIBLE_LABELS, tensor_labels


def test_a_shallow_model_names_every_tensor():
    names = ["conv1.weight", "conv1.bias", "fc.weight"]
    assert tensor_labels(names, [0, 0, 1]) == ([0.5, 1.5, 2.5], ["s0 conv1.weight", "s0 conv1.bias", "s1 fc.weight"])


def test_a_deep_model_names_every_stage_by_what_its_tensors_share():
    parts = ("query", "key", "value", "output", "ff1", "ff2", "ln1", "ln2")
    names = ["embeddings.word.weight", "embeddings.position.weight"]
    names += [f"encoder.layer.{layer}.{part}.weight" for layer in range(12) for part in parts]
    names += ["classifier.weight"]
    stages = [0, 0] + [1 + i // len(parts) for i in range(12 * len(parts))] + [13]
    assert len(names) == 99 > LEGIBLE_LABELS
    ticks, labels = tensor_labels(names, stages)
    assert labels == ["s0 embeddings (2 tensors)"] + [f"s{k + 1} encoder.layer.{k} (8 tensors)" for k in range(12)] + [
        "s13 classifier.weight"
    ]
    assert ticks[:2] == [1.0, 6.0] and ticks[-1] == 98.5  # the middle of each stage's rows
