"""An error on one DDP rank, raised on every rank at the same step.

Under DistributedDataParallel an exception on one rank (bad data, an utterance the loss
cannot align, out of memory) leaves the other ranks waiting forever in the next collective.
:func:`raise_on_every_rank` runs a block (the model's forward); when it runs inside a DDP
forward with more than one rank, every rank then takes part in one small all_reduce of an
error flag. Only when a rank failed are the messages gathered, and every rank raises the
same :class:`RankError` naming the failing ranks and their utterances.

Outside a DDP forward (one process, ESPnet's rank-0-only attention plots, a pre-flight on
the unwrapped module) the block runs unchanged and its errors propagate as they are: no
collective is made there, since the other ranks are not in step.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Sequence

import torch
from torch.nn.parallel import DistributedDataParallel


class RankError(RuntimeError):
    """Raised on every rank when the block failed on at least one of them."""


def in_ddp_forward(module: torch.nn.Module) -> bool:
    """True while ``module`` runs as the module of a DDP forward (all ranks in step).

    DDP records its active instance for TorchDynamo (``_get_active_ddp_module``); that is
    the only place that tells a DDP forward from a direct call of the same module. (DDP's
    python-reducer mode, used only by torch.compile with optimize_ddp="python_reducer",
    does not record it: there the block runs unguarded, as without this module.)
    """
    active = DistributedDataParallel._get_active_ddp_module()
    return (active is not None and active.module is module
            and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1)


def describe(error: BaseException, utt_ids: Optional[Sequence[str]]) -> str:
    """'rank r/n, utterances [...]: Type: message' for this rank's failure."""
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    where = f"rank {rank}/{world}, utterances {list(utt_ids) if utt_ids is not None else 'unknown'}"
    return f"{where}: {type(error).__name__}: {error}"


@contextlib.contextmanager
def raise_on_every_rank(module: torch.nn.Module, device: torch.device,
                        utt_ids: Optional[Sequence[str]]) -> Iterator[None]:
    """Run the block; inside a DDP forward, a failure on any rank raises on every rank.

    ``device`` holds the flag tensor (the backend's device: CUDA for NCCL, CPU for gloo).
    Cost when nothing fails: one all_reduce of one element per call.
    """
    if not in_ddp_forward(module):
        yield
        return
    error: Optional[Exception] = None
    try:
        yield
    except Exception as e:  # noqa: BLE001 -- any failure must reach the other ranks
        error = e
    flag = torch.tensor([0 if error is None else 1], dtype=torch.int32, device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    if int(flag.item()) == 0:
        return
    messages = [None] * torch.distributed.get_world_size()
    mine = None if error is None else describe(error, utt_ids)
    torch.distributed.all_gather_object(messages, mine)
    failed = [m for m in messages if m is not None]
    raise RankError("batch failed, stopping every rank; " + "; ".join(failed)) from error
