"""Pre-flight memory check before the first epoch (``--preflight_batches K``).

Like icefall's ``scan_pessimistic_batches_for_oom``: forward + backward (under ESPnet's
autocast when ``--use_amp true``) on the K largest training batches, largest first, so that a
batch size that does not fit fails in the first minutes, naming the batch and what to
change, instead of hours into training. "Largest" counts what costs memory: the padded audio
(B x longest input) and the RNN-T joint (B x longest input x (longest target + 1)); the K
batches alternate between the two rankings. Peak memory per batch goes to the log
(``torch.cuda.max_memory_allocated`` on CUDA, the process's peak RSS on CPU).

The check leaves no trace: parameters, buffers (BatchNorm statistics, the CTC warm-up
counter), gradients, the training flag and every RNG state are restored, and the optimizers
and schedulers are not touched, so training is bit-identical with or without it. While the
CTC warm-up lasts the model would run only its CTC losses; the check runs the full objective.

Under DDP each rank checks its own share of the batches on the unwrapped module (no DDP
collective inside), then every rank takes part in one all_reduce of a failure flag per
batch: a failure on any rank stops every rank, the failing one with its own error, the
others with :class:`PreflightError`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import random
import resource
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from espnet2.fileio.read_text import load_num_sequence_text
from espnet2.iterators.sequence_iter_factory import SequenceIterFactory
from espnet2.torch_utils.device_funcs import to_device
from espnet2.train.distributed_utils import DistributedOption
from espnet2.train.trainer import Trainer, TrainerOptions, autocast, autocast_args
from espnet2.utils.build_dataclass import build_dataclass

BIN_BATCH_TYPES = ("numel", "length")  # batch types sized by --batch_bins (others: --batch_size)
MAX_LISTED_UTTS = 50


class PreflightError(RuntimeError):
    """The pre-flight check failed (on this rank or, under DDP, on another one)."""


class PreflightOutOfMemoryError(PreflightError):
    """A pre-flight batch ran out of memory; the message names it and what to change."""


@dataclasses.dataclass(frozen=True)
class BatchCost:
    """What one training batch costs, from the shape files (speech first, text second)."""

    utt_ids: Tuple[str, ...]
    longest_input: int  # samples (raw audio) or frames (features)
    longest_target: Optional[int]  # tokens; None without a text shape file
    bins: int  # as ESPnet's samplers count them: B x sum of (longest length x dim)

    @property
    def padded_input(self) -> int:
        return len(self.utt_ids) * self.longest_input

    @property
    def joint(self) -> int:
        """B x longest input x (longest target + 1): proportional to an RNN-T joint's size."""
        return self.padded_input * ((self.longest_target or 0) + 1)

    def describe(self) -> str:
        ids = list(self.utt_ids[:MAX_LISTED_UTTS])
        more = len(self.utt_ids) - len(ids)
        target = ("unknown (no text shape file)" if self.longest_target is None
                  else f"{self.longest_target} tokens")
        return (f"utterances {' '.join(ids)}{f' (+{more} more)' if more else ''}; "
                f"B={len(self.utt_ids)}, longest input {self.longest_input}, longest target "
                f"{target}, {self.bins} batch bins")


def batch_costs(batches: Sequence[Sequence[str]], shape_files: Sequence[str]) -> List[BatchCost]:
    """The cost of each batch; the first shape file is the input's, the second the target's."""
    shapes = [load_num_sequence_text(path, loader_type="csv_int") for path in shape_files]
    costs = []
    for batch in batches:
        longest = []
        for shape, path in zip(shapes, shape_files):
            missing = [uid for uid in batch if uid not in shape]
            if missing:
                raise PreflightError(f"pre-flight: utterances {missing[:5]} are not in {path}")
            longest.append(max(shape[uid] for uid in batch))  # (length, dims...) compare by length
        bins = sum(len(batch) * s[0] * int(np.prod(s[1:])) for s in longest)
        target = longest[1][0] if len(longest) > 1 else None
        costs.append(BatchCost(tuple(batch), longest[0][0], target, bins))
    return costs


def largest_batches(costs: Sequence[BatchCost], k: int) -> List[BatchCost]:
    """K distinct batches, alternately the next largest by padded input and by joint size."""
    rankings = [sorted(costs, key=lambda c: (c.padded_input, c.joint), reverse=True),
                sorted(costs, key=lambda c: (c.joint, c.padded_input), reverse=True)]
    chosen: List[BatchCost] = []
    cursors = [0, 0]
    while len(chosen) < min(k, len(costs)):
        which = len(chosen) % 2
        ranking = rankings[which]
        while ranking[cursors[which]] in chosen:
            cursors[which] += 1
        chosen.append(ranking[cursors[which]])
    return chosen


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or a RuntimeError saying that an allocation failed."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("out of memory" in text
                                                or "can't allocate memory" in text)


def advice(options: DualModeTrainerOptions, rnnt_loss_type: Optional[str]) -> str:
    """What to change so that a batch fits: a smaller batch first, the rest as alternatives."""
    if options.batch_type in BIN_BATCH_TYPES:
        size = f"lower batch_bins from {options.batch_bins} to about {options.batch_bins // 2}"
    else:
        size = f"lower batch_size from {options.batch_size} to about {max(1, options.batch_size // 2)}"
    hints = [f"{size} and raise accum_grad from {options.accum_grad} to "
             f"{2 * options.accum_grad} (the same effective batch)"]
    if rnnt_loss_type == "full":
        hints.append("set model_conf.rnnt_loss_type: pruned (the full RNN-T joints are "
                     "B x T' x (U+1) x V each)")
    if not options.use_amp:
        hints.append("train with --use_amp true")
    return "; or ".join(hints)


@contextlib.contextmanager
def preserved_training_state(model: torch.nn.Module) -> Iterator[None]:
    """Restore parameters, buffers, gradients, the training flag and every RNG state."""
    rng = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
           torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None)
    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    grads = {name: None if p.grad is None else p.grad.detach().to("cpu", copy=True)
             for name, p in model.named_parameters()}
    training = model.training
    try:
        yield
    finally:
        model.load_state_dict(state)
        for name, p in model.named_parameters():
            p.grad = None if grads[name] is None else grads[name].to(p.device)
        model.train(training)
        random.setstate(rng[0])
        np.random.set_state(rng[1])
        torch.set_rng_state(rng[2])
        if rng[3] is not None:
            torch.cuda.set_rng_state_all(rng[3])


def peak_memory_report(device: torch.device) -> str:
    """The peak memory of the last batch (CUDA) or of the process so far (CPU: RSS)."""
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        peak = torch.cuda.max_memory_allocated(device)
        return f"peak GPU memory {peak / 2**30:.2f} GiB of {total / 2**30:.1f} GiB (max_memory_allocated)"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB
    return f"peak RSS of the process so far {peak:.2f} GiB (CPU)"


def run_batch(model: torch.nn.Module, factory: SequenceIterFactory, collate, cost: BatchCost,
              device: torch.device, use_amp: bool) -> None:
    """Load, collate, forward (under ESPnet's autocast with --use_amp) and backward one batch."""
    utt_ids, batch = collate([factory.dataset[uid] for uid in cost.utt_ids])
    batch["utt_id"] = utt_ids
    batch = to_device(batch, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with autocast(use_amp, **autocast_args):
        loss, _, _ = model(**batch)
    loss.backward()
    del loss, batch
    for p in model.parameters():
        p.grad = None


def preflight(model: torch.nn.Module, factory, options: DualModeTrainerOptions,
              distributed: bool) -> None:
    """Run the K largest training batches; raise a PreflightError naming the batch on failure."""
    if not isinstance(factory, SequenceIterFactory):
        raise PreflightError(f"--preflight_batches needs ESPnet's sequence iterator "
                             f"(--iterator_type sequence), not {type(factory).__name__}")
    device = torch.device("cuda" if options.ngpu > 0 else "cpu")
    rnnt_loss_type = getattr(model, "rnnt_loss_type", None)
    with preserved_training_state(model):
        chosen = largest_batches(batch_costs(factory.sampler.generate(factory.seed + 1),
                                             options.train_shape_file),
                                 options.preflight_batches)
        collate = copy.deepcopy(factory.collate_fn)  # its skip counters stay untouched
        model.train()
        warmup = getattr(model, "ctc_warmup_iters", 0)
        if warmup:
            model.train_iters.fill_(warmup)  # the full objective, not the CTC warm-up
        logging.info(f"pre-flight: forward + backward on the {len(chosen)} largest training "
                     f"batches (use_amp {options.use_amp})")
        for i, cost in enumerate(chosen, 1):
            error: Optional[BaseException] = None
            try:
                run_batch(model, factory, collate, cost, device, options.use_amp)
            except Exception as e:  # noqa: BLE001 -- reported below, after the other ranks hear of it
                error = e
            if distributed:
                flag = torch.tensor([int(error is not None)], device=device)
                torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
                if error is None and int(flag.item()):
                    raise PreflightError(f"pre-flight: batch {i} failed on another rank "
                                         f"(see that rank's log); this rank's was {cost.describe()}")
            if error is not None and is_out_of_memory(error):
                first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
                raise PreflightOutOfMemoryError(
                    f"pre-flight: out of memory on training batch {i} of the {len(chosen)} "
                    f"largest ({cost.describe()}): {type(error).__name__}: {first_line}. "
                    f"To fit: {advice(options, rnnt_loss_type)}.") from error
            if error is not None:
                raise error
            logging.info(f"pre-flight batch {i}/{len(chosen)} ({cost.describe()}): "
                         f"{peak_memory_report(device)}")
        if device.type == "cuda":
            torch.cuda.empty_cache()


@dataclasses.dataclass
class DualModeTrainerOptions(TrainerOptions):
    """ESPnet's trainer options plus what the pre-flight check reads."""

    preflight_batches: int
    train_shape_file: List[str]
    batch_type: str
    batch_bins: int
    batch_size: int


class DualModeTrainer(Trainer):
    """ESPnet's Trainer with the pre-flight memory check before the first epoch."""

    @classmethod
    def build_options(cls, args) -> DualModeTrainerOptions:
        return build_dataclass(DualModeTrainerOptions, args)

    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument_group(description="Pre-flight memory check").add_argument(
            "--preflight_batches", type=int, default=0,
            help="before the first epoch, run forward+backward on the K largest training "
                 "batches and fail at once, naming the batch, if one runs out of memory (0: off)")

    @classmethod
    def run(cls, model, optimizers, schedulers, train_iter_factory, valid_iter_factory,
            plot_attention_iter_factory, trainer_options, distributed_option: DistributedOption
            ) -> None:
        if trainer_options.preflight_batches > 0:
            preflight(model, train_iter_factory, trainer_options, distributed_option.distributed)
        super().run(model=model, optimizers=optimizers, schedulers=schedulers,
                    train_iter_factory=train_iter_factory, valid_iter_factory=valid_iter_factory,
                    plot_attention_iter_factory=plot_attention_iter_factory,
                    trainer_options=trainer_options, distributed_option=distributed_option)

