"""Certified paths on pairs of one's own: a user-set ceiling on LeNet5/28 px, and the cost of a deep pair.

Run: ``.venv/bin/python -m benchmarks.certified_pairs [lenet28] [lenet28_probe_all] [deep_bert]
[deep_bert_finetunes]`` (default: all).
Prints one line per pair and writes nothing to the repository; the figures are quoted in ``docs/benchmarks.md``.

- ``lenet28``: two LeNet5 endpoints trained on the built-in digits upscaled to 28 px (SGD lr 0.01, momentum
  0.9, batch 64, constant rate, seeds 0 and 1: no seed shared; 150 epochs = 3,450 iterations, because digits
  holds 1,437 training images where MNIST holds 60,000: 20 epochs are 460 iterations and leave the endpoints at a
  probe loss of 0.117, above the ceiling asked for), connected with the engine's
  defaults and ``loss_ceiling: 0.025``; judged on every training image at every saved point and at the
  midpoint of every segment; ``lenet28_probe_all`` probes all 1,437 training
  images instead of the default 512.
- ``deep_bert``: two 12-layer tiny BERTs (hidden 32) trained from seeds 0 and 1 on the generated token task
  of the families benchmark (AdamW, one-cycle rate peaking at 1e-3, 40 epochs), connected with the defaults
  (auto ceiling); prints the ticks each stage took and the SGD iterations ÷ one endpoint's.
- ``deep_bert_finetunes``: two fine-tunes of one 12-layer tiny BERT base (:func:`deep_bert_finetunes`), with the
  defaults (at most 400 ticks) and with the repair's lr at 0.005; the same figures.
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import torch

import hf_llpf
from benchmarks.families import _batches, _train_hf, token_task
from hf_llpf.api import evaluate_run
from hf_llpf.config import DataConfig, TrainRecipe
from hf_llpf.data import load_data
from hf_llpf.seeding import seed_everything
from hf_llpf.train import train_or_reuse

SCRATCH = Path(".bench_cache/certified_pairs")


def lenet28(probe_all: bool = False) -> None:
    """A user ceiling of 0.025 on a LeNet5 pair at 28 px (``probe_all``: every training image is a probe example)."""
    bundle = load_data("digits", image_size=28)
    ends, iters = [], 0
    for seed in (0, 1):
        recipe = TrainRecipe(model="lenet5", data=DataConfig(source="digits", image_size=28), seed=seed, epochs=150,
                             batch_size=64, lr=0.01, momentum=0.9, schedule="constant", weight_decay=0.0)  # fmt: skip
        iters = train_or_reuse(SCRATCH / f"lenet28_seed{seed}", recipe, bundle, progress=False)["iterations"]
        ends.append(SCRATCH / f"lenet28_seed{seed}")
    start = time.perf_counter()
    config = {"loss_ceiling": 0.025} | ({"probe_size": bundle.split_size("train")} if probe_all else {})
    path = hf_llpf.connect(*ends, bundle, config=config, run_dir=SCRATCH / "lenet28", exist="overwrite",
                           progress=False)  # fmt: skip
    wall = time.perf_counter() - start
    n = bundle.split_size("train")
    summary = evaluate_run(path, data=bundle, continuity_k=1, continuity_subset=n, report=False)["summary"]
    run = path.summary["run"]
    cert = run["certification"]
    print(
        f"lenet28 | probe {cert['probe_examples']} | endpoint probe losses "
        f"{[round(x, 4) for x in cert['endpoint_probe_losses']]} | ceiling "
        f"{cert['ceiling']} | certified {cert['certified']} | max train loss (all {n}) "
        f"{summary['llpf']['max_train_loss']:.4f} | worst midpoint (all {n}) "
        f"{summary['llpf']['worst_continuity_loss']:.4f} | linear {summary['linear']['max_train_loss']:.4f} | "
        f"points {len(path)} | ticks {run['ticks']} | SGD "
        f"{run['sgd_iters']} (one endpoint {iters}) | backtracks {run['backtracks']} | wall {wall:.0f} s",
        flush=True,
    )


def _bert(seed: int, layers: int) -> torch.nn.Module:
    import transformers as tf

    seed_everything(seed)
    cfg = tf.BertConfig(vocab_size=16, max_position_embeddings=16, type_vocab_size=1, num_labels=4, hidden_size=32,
                        num_hidden_layers=layers, num_attention_heads=2, intermediate_size=64)  # fmt: skip
    return tf.BertForSequenceClassification(cfg)


def deep_bert(layers: int = 12) -> None:
    """Ticks per stage on a deep pair: a stage its first move keeps under the ceiling should take one tick."""
    train_cols, test_cols = token_task("bert", n=1024, seed=10), token_task("bert", n=256, seed=11)
    models = [_bert(s, layers) for s in (0, 1)]
    # A one-cycle rate peaking at 1e-3: the families' constant 3e-3 leaves a 12-layer BERT at chance.
    iters = [_train_hf(m, train_cols, epochs=40, seed=s, lr=1e-3, one_cycle=True) for s, m in enumerate(models)][0]
    _connect_deep([m.eval() for m in models], train_cols, test_cols, iters, f"deep_bert ({layers} layers)")


def deep_bert_finetunes(layers: int = 12) -> None:
    """Ticks per stage on two fine-tunes of one deep base: every stage's first move should keep it under.

    The base is a ``layers``-layer tiny BERT trained on a related task (label = token 2 mod 4, 40 epochs); each
    fine-tune starts from it with its own classifier head (seed 0 or 1) and its own data order, and learns the
    families' task (label = token 1 mod 4, 40 epochs; both AdamW with a one-cycle rate peaking at 1e-3).
    ``method: m2m`` forces LLPF (the straight line between two fine-tunes is usually certified already, and
    would otherwise be the path). Two runs: the defaults (at most 400 ticks, as the families benchmark), and the
    repair at lr 0.005 from the start.
    """
    train_cols, test_cols = token_task("bert", n=1024, seed=10), token_task("bert", n=256, seed=11)
    models, iters = _finetunes(train_cols, layers)
    tag = f"deep_bert_finetunes ({layers} layers)"
    _connect_deep(models, train_cols, test_cols, iters, f"{tag}, defaults", {"max_ticks": 400})
    _connect_deep(models, train_cols, test_cols, iters, f"{tag}, lr 0.005", {"lr": 0.005})


def _finetunes(train_cols: dict, layers: int) -> tuple[list, int]:
    """The two fine-tunes (trained once, then read from ``SCRATCH``) and one fine-tune's iterations."""
    import transformers as tf

    folder = SCRATCH / f"finetunes_{layers}"
    iters = 40 * len(_batches(train_cols, 64))
    if not (folder / "1" / "config.json").exists():
        base = _bert(10, layers)
        related = dict(train_cols, labels=train_cols["input_ids"][:, 2] % 4)
        _train_hf(base, related, epochs=40, seed=10, lr=1e-3, one_cycle=True)
        for seed in (0, 1):
            model = copy.deepcopy(base)
            seed_everything(seed)
            model.classifier.reset_parameters()
            iters = _train_hf(model, train_cols, epochs=40, seed=seed, lr=1e-3, one_cycle=True)
            model.save_pretrained(folder / str(seed))
    models = [tf.BertForSequenceClassification.from_pretrained(folder / str(s)).eval() for s in (0, 1)]
    return models, iters


def _connect_deep(models: list, train_cols: dict, test_cols: dict, iters: int, tag: str, config=None) -> None:
    """Connect a deep pair with the defaults and ``config`` (``method: m2m``); print ticks per stage and the cost."""
    evaluation = {"train": _batches(train_cols, 256)[:2], "test": _batches(test_cols, 256)}
    start = time.perf_counter()
    path = hf_llpf.connect(models[0], models[1], _batches(train_cols, 64, seed=0),
                           config={"method": "m2m", **(config or {})}, run_dir=SCRATCH / "deep_bert",
                           exist="overwrite", progress=False, probe_data=evaluation["train"])  # fmt: skip
    wall = time.perf_counter() - start
    run = path.summary["run"]
    summary = evaluate_run(path, data=evaluation, train_subset=512, continuity_k=0, report=False)["summary"]
    starts = run["stage_starts"] + [run["ticks"]]
    per_stage = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    cert = run["certification"]
    ends = [round(x, 4) for x in cert["endpoint_probe_losses"]]
    print(
        f"{tag}, {sum(p.numel() for p in models[0].parameters()):,} params | stages {run['num_stages']} (reached "
        f"{len(run['stage_starts'])}) | ticks {run['ticks']} | ticks per stage {per_stage} | stages of one tick "
        f"{per_stage.count(1)}/{len(per_stage)} | SGD {run['sgd_iters']} = {run['sgd_iters'] / iters:.2f}x one "
        f"endpoint ({iters}) | ceiling {cert['ceiling']:.4f} (endpoint probe losses {ends}) | certified "
        f"{cert['certified']} ({len(cert['uncertified'])} listed) | max train loss "
        f"{summary['llpf']['max_train_loss']:.4f} | linear {summary['linear']['max_train_loss']:.4f} | "
        f"backtracks {run['backtracks']} | wall {wall:.0f} s",
        flush=True,
    )


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    runs = {"lenet28": lenet28, "lenet28_probe_all": lambda: lenet28(probe_all=True), "deep_bert": deep_bert,
            "deep_bert_finetunes": deep_bert_finetunes}  # fmt: skip
    for name in argv or list(runs):
        runs[name]()


if __name__ == "__main__":
    main(sys.argv[1:])
