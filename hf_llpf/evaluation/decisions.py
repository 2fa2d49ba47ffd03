"""Sequential decisions on the whole training set: is this point's mean training loss under a bar?
(docs/algorithm.md §10.5)

Each decision draws the training examples in a fresh uniformly random order (its own seeded generator, whose
state travels in the resume checkpoint), evaluates them in eval mode in growing batches (32, 32, 32, 32, 32, 40,
50, …: each a quarter of all seen so far) and stops as soon as it can:

- **accept**: a test that stays valid after any number of draws (:func:`~hf_llpf.evaluation.sequential.shows_below`,
  a betting test without replacement) shows the mean of ``min(loss, B)`` under the bar, at error probability
  ``α_k / 2`` for the k-th decision of the run (``α_k = δ / (k (k + 1))``); the fraction of examples above ``B``
  gets its own upper bound at ``α_k / 2``, which is recorded. A point far under the bar is accepted after a small
  batch;
- **above**, exactly: the examples seen already put the mean over the bar (losses are never negative);
- **above**, estimated (``estimate``: for decisions whose mistake costs only work): the mean seen is above the bar
  by two standard errors;
- **exact**: all examples seen: the decision is the exact mean's. With at most ``exact_max`` training examples a
  decision may run to the end; with more it stops undecided at ``exact_max`` examples (not accepted).

A decision's value is ``<= bar`` exactly when it accepts (the sample mean, at most the bar, or the exact mean; else
the estimate above the bar, or the confidence bound when undecided), except a ``first`` decision: the mean of its
examples, an estimate whose caller only reads whether it is above a coarse bar.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hf_llpf.batches import LossFn, batch_size_of, default_loss, move_batch
from hf_llpf.evaluation.layout import channels_last_batch, eval_view
from hf_llpf.evaluation.probe import ProbeSet, _join, _slice
from hf_llpf.evaluation.sequential import betting_upper_bound, shows_below, spent, upper_bound

PROBE_BATCH = 64  # the batches of the exact passes (build_probe's), which the endpoints' measure keeps
FIRST = 32  # the smallest batch of a decision
# Each later batch is 1/GROWTH of all seen so far (32, 32, 32, 32, 32, 40, 50, ...): a decision evaluates at most
# that share more examples than it needed, where batches as large as all seen so far could double them.
GROWTH = 4


@dataclass
class Decision:
    """One decision's outcome."""

    value: float  # <= bar exactly when accepted (see the module's docstring)
    accepted: bool
    examples: int  # examples evaluated
    exact: bool = False  # every training example was evaluated: value is the exact mean
    tail: float | None = None  # upper bound on the fraction of examples above the clip (accepted decisions)


class Decider:
    """Draws and judges: sequential decisions over a fixed set of training examples.

    Args:
        examples: every training example, as batches on the training device (the exact pass's batches, joined into
            :class:`JoinedExamples`), or a source that reads the drawn examples on demand (:class:`BundleExamples`).
        num_examples: their number, N.
        loss_fn: the path's loss (``None``: cross-entropy / the model's own ``outputs.loss``).
        delta: the run's error budget δ, spent over its accept decisions.
        exact_max: decisions may evaluate every example when N is at most this; else at most this many.
        seed: the seed of the draws' generator.
    """

    def __init__(self, examples: list | BundleExamples, num_examples: int, *, loss_fn: LossFn | None, delta: float,
                 exact_max: int, seed: int) -> None:  # fmt: skip
        # None: examples that cannot be drawn one by one (batches of text of several lengths)
        self.source = examples if isinstance(examples, BundleExamples) else JoinedExamples.of(examples)
        self.n, self.loss_fn, self.delta = num_examples, loss_fn, delta
        self.cap = num_examples if num_examples <= exact_max else exact_max
        self.generator = torch.Generator().manual_seed(seed)
        self.k = 0  # accept decisions so far
        self.log: list[int] = []  # examples used per decision
        self.tail = 0.0  # the largest tail bound of an accepted decision
        self.examples_run = 0

    @property
    def drawable(self) -> bool:
        """Whether examples can be drawn one by one (else every decision is a full pass)."""
        return self.source is not None

    def state_dict(self) -> dict[str, Any]:
        """The draws' position: the generator, the decision count, the per-decision log."""
        return {"generator": self.generator.get_state(), "k": self.k, "log": list(self.log), "tail": self.tail,
                "examples_run": self.examples_run}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (a resume draws exactly what the uninterrupted run drew)."""
        if not state:
            return
        self.generator.set_state(state["generator"])
        self.k, self.log, self.tail = int(state["k"]), list(state["log"]), float(state["tail"])
        self.examples_run = int(state.get("examples_run", 0))

    @torch.no_grad()
    def decide(self, model: nn.Module, bar: float, *, clip: float, estimate: bool = False,
               first: int | None = None) -> Decision:  # fmt: skip
        """Whether ``model``'s mean eval-mode loss over the training examples is at most ``bar``.

        Args:
            model: the point (as stored); its mode is restored after.
            bar: the bar.
            clip: B, the value losses are clipped at for the confidence bound.
            estimate: a mean two standard errors above the bar may decide "above".
            first: decide on at most this many examples (an estimate for a coarse bar; never accepts on less than
                a confidence bound).
        """
        self.k += 1
        alpha = spent(self.delta, self.k) / 2
        order = torch.randperm(self.n, generator=self.generator)
        was_training = model.training
        model.eval()
        parts: list[torch.Tensor] = []
        try:
            seen, size = 0, FIRST
            while seen < self.cap:
                take = order[seen : min(seen + size, self.cap)]
                parts.append(self._losses(model, take))
                seen += len(take)
                self.examples_run += len(take)
                size = max(seen // GROWTH, FIRST)
                outcome = self._judge(torch.cat(parts), bar, clip, alpha, estimate, first)
                if outcome is not None:
                    self.log.append(seen)
                    return outcome
        finally:
            model.train(was_training)
        raise AssertionError("unreachable: a decision that saw every example it may see has an outcome")

    def _judge(self, losses: torch.Tensor, bar: float, clip: float, alpha: float, estimate: bool,
               first: int | None) -> Decision | None:  # fmt: skip
        """The outcome after ``losses`` (all draws so far), or ``None`` to draw more."""
        seen, total = len(losses), float(losses.sum())
        mean = total / seen
        if seen == self.n:  # every example: the exact mean decides
            return Decision(mean, mean <= bar, seen, exact=True)
        if total > bar * self.n and self.loss_fn is None:  # already above, whatever the rest holds
            return Decision(total / self.n, False, seen)
        clipped = losses.clamp(max=clip) / clip
        if shows_below(clipped, bar=bar / clip, alpha=alpha, population=self.n):
            tail = betting_upper_bound((losses > clip).to(torch.float64), alpha=alpha, population=self.n)
            self.tail = max(self.tail, tail)
            return Decision(min(mean, bar), True, seen, tail=tail)
        if estimate and seen >= 2 * FIRST:
            error = float(losses.std()) / math.sqrt(seen) * math.sqrt(1 - seen / self.n)
            if mean - 2 * error > bar:
                return Decision(mean, False, seen)
        if first is not None and seen >= first:  # an estimate for a coarse bar: the caller reads only "above"
            return Decision(mean, False, seen)
        if seen >= self.cap:  # undecided at the cap: not accepted (its value the confidence bound, above the bar)
            ucb = clip * upper_bound(clipped, alpha=alpha, population=self.n)
            return Decision(max(ucb, math.nextafter(bar, math.inf)), False, seen)
        return None

    def _losses(self, model: nn.Module, index: torch.Tensor) -> torch.Tensor:
        """Per-example eval-mode losses of the examples ``index`` (float64, on the CPU)."""
        batch = self.source.take(index)
        runner, fast = eval_view(model, batch, self.loss_fn)
        batch = channels_last_batch(batch) if fast else batch
        return example_losses(runner, batch, self.loss_fn).to(torch.float64).cpu()


class JoinedExamples:
    """Every training example in memory, joined into columns: a draw is an index into them."""

    def __init__(self, joined: Any) -> None:
        self.joined = joined

    @classmethod
    def of(cls, batches: list) -> JoinedExamples | None:
        """The joined examples of ``batches``, or ``None`` when they do not join (text of several lengths)."""
        joined = _join(batches)
        return None if joined is None else cls(joined)

    def take(self, index: torch.Tensor) -> Any:
        """The examples ``index``, as one batch."""
        return _gather(self.joined, index)


class BundleExamples:
    """The training split of a loaded data set, read on demand: only the examples a decision draws are decoded,
    batched (text padded as the evaluation pads it) and moved to the device, so the training set need not fit in
    memory (images decoded on access, text held by Arrow on disk).

    Args:
        bundle: a :class:`~hf_llpf.data.DataBundle` or :class:`~hf_llpf.text.TextBundle`.
        device: the training device.
    """

    def __init__(self, bundle: Any, device: torch.device) -> None:
        self.bundle, self.device = bundle, device
        self.num_examples = bundle.split_size("train")

    def take(self, index: torch.Tensor) -> Any:
        """The examples ``index`` of the training split, in that order, as one batch on the device."""
        loader = self.bundle.eval_loader("train", indices=index, batch_size=len(index))
        return move_batch(next(iter(loader)), self.device)


def _gather(joined: Any, index: torch.Tensor) -> Any:
    """The examples ``index`` of the joined columns, as one batch."""
    if isinstance(joined, dict):
        return {k: v[index.to(v.device)] for k, v in joined.items()}
    out = [v[index.to(v.device)] for v in joined]
    return type(joined)(*out) if hasattr(joined, "_fields") else type(joined)(out)


def example_losses(model: nn.Module, batch: Any, loss_fn: LossFn | None) -> torch.Tensor:
    """Each example's loss in ``batch``: their mean is the batch's loss (the path's loss on the batch).

    Cross-entropy per example for ``(inputs, labels)`` batches and for a ``transformers`` classifier's dict batches;
    a causal LM's token cross-entropy averaged per sequence (the batch's own loss when every sequence has the same
    number of labelled tokens); any other loss is computed one example at a time.
    """
    if loss_fn is None and not isinstance(batch, dict):
        inputs, labels = batch
        return F.cross_entropy(model(inputs), labels, reduction="none")
    if loss_fn is None and isinstance(batch.get("labels"), torch.Tensor):
        labels = batch["labels"]
        logits = getattr(model(**batch), "logits", None)
        if logits is not None and logits.ndim == 2 and labels.ndim == 1 and not labels.is_floating_point():
            return F.cross_entropy(logits.float(), labels, reduction="none")
        if logits is not None and logits.ndim == 3 and labels.ndim == 2:  # a causal LM: tokens predict the next
            shifted = labels[:, 1:]
            token = F.cross_entropy(
                logits[:, :-1].float().transpose(1, 2), shifted, reduction="none", ignore_index=-100
            )
            counted = (shifted != -100).sum(1).clamp(min=1)
            return token.sum(1) / counted
    fn = loss_fn or default_loss
    return torch.stack(
        [fn(model, _slice(batch, i, i + 1)).detach().float().reshape(()) for i in range(batch_size_of(batch))]
    )


class TrainingExamples:
    """The examples a run certifies on, and how: the route (docs/algorithm.md §10.1).

    ``exact`` (at most ``certify_exact_max`` examples, or examples that cannot be drawn one by one): every decision
    is a pass over all of them, stopped early only to say "above"; the certificate is exact. ``sequential`` (more):
    decisions draw examples at random (:class:`Decider`); the endpoints' losses, which set the auto ceiling, are
    measured on the first ``probe_size`` examples.

    Args:
        whole: every training example as a probe set (its exact passes).
        config: ``certify_exact_max``, ``certify_delta``, ``probe_size``, ``seed``.
        loss_fn: the path's loss.
        accelerator: for the cross-process average of exact passes.
        exact: force the exact route (fixed probe batches).
        given: the examples are a caller's ``probe_data``, not the training set (what the certificate names).
    """

    def __init__(self, whole: Any, config: Any, *, loss_fn: LossFn | None = None, accelerator: Any = None,
                 exact: bool = False, given: bool = False, drawn: BundleExamples | None = None) -> None:  # fmt: skip
        self.given = given
        self.probe = whole
        self.num_examples = drawn.num_examples if drawn is not None else getattr(whole, "num_examples", 0)
        self.decider: Decider | None = None
        if not exact and self.num_examples > config.certify_exact_max:
            examples = drawn if drawn is not None else whole.batches
            decider = Decider(examples, self.num_examples, loss_fn=loss_fn, delta=config.certify_delta,
                              exact_max=config.certify_exact_max, seed=config.seed)  # fmt: skip
            self.decider = decider if decider.drawable else None
        self.exact = self.decider is None
        self.endpoints = whole
        if not self.exact and drawn is None:
            first = _first(whole.batches, min(config.probe_size, self.num_examples))
            self.endpoints = type(whole)(first, loss_fn=loss_fn, accelerator=accelerator)

    @classmethod
    def read_on_demand(cls, bundle: Any, config: Any, *, device: torch.device, loss_fn: LossFn | None = None,
                       accelerator: Any = None) -> TrainingExamples:  # fmt: skip
        """The sequential route over a loaded data set of more than ``certify_exact_max`` training examples, none
        of them held: each decision reads the examples it draws (:class:`BundleExamples`), and the endpoints are
        measured on the first ``probe_size`` examples, as on the route whose examples are all in memory."""
        drawn = BundleExamples(bundle, device)
        first = torch.arange(min(config.probe_size, drawn.num_examples))
        loader = bundle.eval_loader("train", indices=first, batch_size=PROBE_BATCH)
        endpoints = ProbeSet([move_batch(b, device) for b in loader], loss_fn=loss_fn, accelerator=accelerator)
        return cls(endpoints, config, loss_fn=loss_fn, accelerator=accelerator, drawn=drawn)

    @property
    def route(self) -> str:
        """``"exact"`` or ``"sequential"``."""
        return "exact" if self.exact else "sequential"

    def route_line(self) -> str:
        """What the run prints about its route."""
        if self.exact:
            return f"decisions and the final check on all {self.num_examples} training examples (exact)"
        cap = self.decider.cap
        return (f"sequential decisions on random draws from {self.num_examples} training examples (at most {cap} "
                f"each, confidence 1-{self.decider.delta:g} over the run)")  # fmt: skip


def _first(batches: list, size: int) -> list:
    """The first ``size`` examples of ``batches``."""
    out, seen = [], 0
    for b in batches:
        n = batch_size_of(b)
        out.append(b if seen + n <= size else _slice(b, 0, size - seen))
        seen += min(n, size - seen)
        if seen >= size:
            break
    return out


__all__ = ["Decider", "Decision", "TrainingExamples", "example_losses"]
