"""Pruned RNN-T loss in plain PyTorch (after Kuang et al., 2022, "Pruned RNN-T for fast,
memory-efficient ASR training").

The full RNN-T loss evaluates the joint network on every (frame t, label position u)
pair, a (B, T, U+1, V) tensor that dominates training memory and time. The pruned loss
evaluates it on only ``s_range`` label positions per frame:

1. **Simple loss.** A "trivial" joiner whose logits are a sum ``am[b, t] + lm[b, u]``
   ((B, T, V) and (B, U+1, V)) has a log-softmax normaliser that needs no 4-D tensor:
   ``log sum_v exp(am[t, v] + lm[u, v])`` is a (T, V) x (V, U+1) matrix product of the
   max-shifted exponentials, plus the two maxima. Only the blank and next-label entries
   of the lattice are gathered, so the loss costs O(B T U) memory. Its forward-backward
   pass (:class:`_LatticeLogZ`) also yields the posterior occupation of every arc.
2. **Pruning ranges** (:func:`prune_ranges`). For each frame, the window of ``s_range``
   consecutive label positions that keeps the most alignment mass under the simple
   joiner, then adjusted so that windows are monotonic, overlap from frame to frame and
   start at (0, 0) and end at (T-1, U).
3. **Pruned loss.** The real joint (activation + ``lin_out`` of ESPnet's
   ``JointNetwork``) is evaluated on the (B, T, s_range) positions only; the exact
   RNN-T recursion runs on that sub-lattice (arcs outside it have probability 0). With
   ``s_range >= U + 1`` it is the ordinary RNN-T loss.

The objective is ``simple_loss_scale * L_simple + pruned_loss_scale * L_pruned``; the
simple term trains the trivial joiner so that the ranges stay meaningful. FastEmit
(``fastemit_lambda``, see ``losses.transducer``) scales the gradient of the emission arcs
of both lattices by (1 + lambda); values and pruning ranges are unchanged.

Two trivial joiners are supported. The model (``model_conf.rnnt_loss_type: pruned``)
uses the tied one; the separate heads are for direct callers of :func:`pruned_rnnt_loss`
(``benchmarks/rnnt_loss.py`` measures both):

* **separate heads** (:class:`SimpleJoiner`, two linear layers to V): what icefall's
  recipes (``simple_am_proj``/``simple_lm_proj``) and ESPnet's ``asr_transducer``
  (``am_proj``/``lm_proj``) use; the joint network is then trained by the pruned loss
  only, and the heads are not needed at inference.
* **tied** (``simple_joiner=None``, no extra parameters, our own option without
  published results): the joint network with its activation removed,
  ``am = lin_out(lin_enc(enc))`` and ``lm = lin_dec(dec) @ W_out^T``, so that
  ``am + lm = lin_out(lin_enc(enc) + lin_dec(dec))``. The simple loss then also trains
  ``lin_enc``, ``lin_dec`` and ``lin_out`` to work without the activation.

Costs: the alpha/beta recursions run in float64 on (B, T, U+1) tensors, on one CPU
thread (see :func:`_one_cpu_thread`); the joint network runs in float32 (float64 for
float64 inputs), with its output layer and log-softmax fused and chunked
(:class:`_PickedLogSoftmax`), so the largest tensors are (B, T, V) for the simple loss
and (B, T, s_range, J) for the pruned one. Under mixed precision the whole loss, joint
projections included, runs in float32 outside autocast (see ``losses.precision``): the
(B, T, J) projections are small, and the normalisers and lattice need the range.
"""

from __future__ import annotations

import contextlib
from typing import Dict, Iterator, Optional, Tuple

import torch
from espnet2.asr_transducer.joint_network import JointNetwork

from espnet2_dualmode.losses.precision import float32_outside_autocast
from espnet2_dualmode.losses.transducer import (
    REDUCTIONS,
    _validate,
    check_fastemit_lambda,
    fastemit_emission,
)

NEG_INF = float("-inf")
# Rows per chunk of the fused output layer: about 2**21 logits (8 MB in float32).
_CHUNK_ELEMENTS = 2**21


class SimpleJoiner(torch.nn.Module):
    """Separate linear heads of the trivial joiner: ``am = am_proj(enc)``, ``lm = lm_proj(dec)``.

    Args:
        encoder_size: encoder output size De.
        decoder_size: prediction-network output size Dd.
        vocab_size: output vocabulary V (blank included).
    """

    def __init__(self, encoder_size: int, decoder_size: int, vocab_size: int) -> None:
        super().__init__()
        self.am_proj = torch.nn.Linear(encoder_size, vocab_size)
        self.lm_proj = torch.nn.Linear(decoder_size, vocab_size)

    def forward(
        self, enc_out: torch.Tensor, dec_out: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Trivial-joiner terms.

        Args:
            enc_out: encoder output (B, T, De).
            dec_out: prediction-network output (B, U+1, Dd).

        Returns:
            am (B, T, V) and lm (B, U+1, V); the joiner's logits are ``am[:, t] + lm[:, u]``.
        """
        return self.am_proj(enc_out), self.lm_proj(dec_out)


# ----------------------------------------------------------------- lattice recursion


def _skew(x: torch.Tensor) -> torch.Tensor:
    """(B, T, N) grid -> (T+N-1, B, T) anti-diagonals: ``out[d, b, t] = x[b, t, d - t]``,
    -inf where ``d - t`` is outside [0, N)."""
    batch, frames, width = x.shape
    padded = _pad(x, (frames, frames))
    diag = torch.arange(frames + width - 1, device=x.device)
    index = diag.view(1, 1, -1) - torch.arange(frames, device=x.device).view(1, -1, 1) + frames
    return padded.gather(2, index.expand(batch, -1, -1)).permute(2, 0, 1)


def _unskew(x: torch.Tensor, width: int) -> torch.Tensor:
    """Inverse of :func:`_skew`: (T+N-1, B, T) -> (B, T, N)."""
    _, batch, frames = x.shape
    index = torch.arange(frames, device=x.device).view(-1, 1) + torch.arange(
        width, device=x.device
    )
    return x.permute(1, 2, 0).gather(2, index.unsqueeze(0).expand(batch, -1, -1))


def _pad(x: torch.Tensor, sides: Tuple[int, int]) -> torch.Tensor:
    """Pad the last dimension with -inf."""
    return torch.nn.functional.pad(x, sides, value=NEG_INF)


class _LatticeLogZ(torch.autograd.Function):
    """log P(y | x) of the RNN-T lattice, with the arc occupations as its gradient.

    Node (t, u): u labels emitted after t frames were entered. Arcs: ``emit[b, t, u]``
    (t, u) -> (t, u+1) and ``blank[b, t, u]`` (t, u) -> (t+1, u); paths start at (0, 0)
    and end with the blank out of (T_b - 1, U_b). Arcs outside an utterance's lengths are
    ignored; -inf weights mark arcs that do not exist (the pruned lattice). The alpha and
    beta passes run over anti-diagonals d = t + u in float64; diagonals are stored with
    one -inf guard column on each side of t, so that the t -> t +- 1 shifts are views.

    The derivative of log Z with respect to an arc's log-weight is the arc's posterior
    occupation, so forward computes both and backward only scales them.
    """

    @staticmethod
    def forward(
        ctx,
        emit: torch.Tensor,
        blank: torch.Tensor,
        t_lens: torch.Tensor,
        u_lens: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Args: emit, blank (B, T, U+1) log-weights; t_lens, u_lens (B,) int64.

        Returns: log Z (B,), emit and blank occupations (B, T, U+1) (not differentiable).
        """
        with _one_cpu_thread(blank.device):
            log_z, occ_emit, occ_blank = _alpha_beta(emit, blank, t_lens, u_lens)
        ctx.save_for_backward(occ_emit, occ_blank)
        ctx.mark_non_differentiable(occ_emit, occ_blank)
        return log_z, occ_emit, occ_blank

    @staticmethod
    def backward(ctx, grad_log_z, _grad_occ_emit, _grad_occ_blank):
        occ_emit, occ_blank = ctx.saved_tensors
        scale = grad_log_z.view(-1, 1, 1)
        return scale * occ_emit, scale * occ_blank, None, None


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run CPU ops single-threaded inside the block (no effect on other devices).

    For the many small ops of the recursion and of the range selection, intra-op thread
    synchronisation costs more than it saves, and ~10x more when the cores are shared
    with other processes (measured: 340 ms vs 33 ms for B=8, T=150, U=40).
    """
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _alpha_beta(
    emit: torch.Tensor, blank: torch.Tensor, t_lens: torch.Tensor, u_lens: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward and backward pass of :class:`_LatticeLogZ` (same arguments and results)."""
    batch, frames, width = blank.shape
    device = blank.device
    t_idx = torch.arange(frames, device=device).view(1, -1, 1)
    u_idx = torch.arange(width, device=device).view(1, 1, -1)
    inside = t_idx < t_lens.view(-1, 1, 1)
    # Nodes above U_b are unreachable once the emit arcs out of U_b are removed.
    emit_ok = inside & (u_idx < u_lens.view(-1, 1, 1))
    guard = (1, 1)  # column 0 is t = -1, column T+1 is t = T
    emit_d = _pad(_skew(torch.where(emit_ok, emit.double(), NEG_INF)), guard)
    blank_d = _pad(_skew(torch.where(inside, blank.double(), NEG_INF)), guard)
    diags = emit_d.size(0)
    real = slice(1, frames + 1)

    rows = torch.arange(batch, device=device)
    last_t = t_lens - 1
    last_d = last_t + u_lens
    # The final blank leaves the lattice: the beta of its end node is 0.
    end_node = torch.zeros(diags + 1, batch, frames + 2, dtype=torch.bool, device=device)
    end_node[last_d + 1, rows, last_t + 2] = True

    alpha = torch.full_like(emit_d, NEG_INF)
    alpha[0, :, 1] = 0.0
    from_blank = torch.empty_like(alpha)
    for d in range(1, diags):
        torch.add(alpha[d - 1], blank_d[d - 1], out=from_blank[d - 1])
        torch.logaddexp(
            alpha[d - 1, :, real] + emit_d[d - 1, :, real],
            from_blank[d - 1, :, :frames],
            out=alpha[d, :, real],
        )

    beta = emit_d.new_full((diags + 1, batch, frames + 2), NEG_INF)
    beta_next = torch.full_like(emit_d, NEG_INF)  # beta of each blank arc's end node
    zero = emit_d.new_zeros(())
    for d in range(diags - 1, -1, -1):
        torch.where(end_node[d + 1, :, 1:], zero, beta[d + 1, :, 1:], out=beta_next[d, :, :-1])
        torch.logaddexp(
            emit_d[d, :, real] + beta[d + 1, :, real],
            blank_d[d, :, real] + beta_next[d, :, real],
            out=beta[d, :, real],
        )

    log_z = alpha[last_d, rows, last_t + 1] + blank_d[last_d, rows, last_t + 1]
    norm = log_z.view(1, -1, 1)
    occ_emit = torch.exp(alpha + emit_d + beta[1:] - norm)[:, :, real]
    occ_blank = torch.exp(alpha + blank_d + beta_next - norm)[:, :, real]
    occ_emit = _unskew(occ_emit, width).to(emit.dtype)
    occ_blank = _unskew(occ_blank, width).to(blank.dtype)
    return log_z.to(blank.dtype), occ_emit, occ_blank


def lattice_log_likelihood(
    emit: torch.Tensor, blank: torch.Tensor, t_lens: torch.Tensor, u_lens: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log P(y | x) over the RNN-T lattice given the arc log-probabilities.

    Args:
        emit: log-prob of emitting label u+1 at node (t, u) (B, T, U+1); the last column
            and entries beyond the lengths are ignored; -inf = no arc.
        blank: log-prob of blank at node (t, u) (B, T, U+1).
        t_lens: frames per utterance (B,), each in [1, T].
        u_lens: labels per utterance (B,), each in [0, U].

    Returns:
        log-likelihood (B,) (differentiable), and the posterior occupations of the emit
        and blank arcs (B, T, U+1), which are also its gradients.
    """
    return _LatticeLogZ.apply(emit, blank, t_lens.long(), u_lens.long())


# ------------------------------------------------------------------------ simple loss


def simple_lattice(
    am: torch.Tensor,
    lm: torch.Tensor,
    targets: torch.Tensor,
    blank: int = 0,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Arc log-probs of the trivial joiner ``logits[b, t, u] = am[b, t] + lm[b, u]``.

    The log-softmax normaliser is computed without the (B, T, U+1, V) tensor:
    ``log sum_v exp(am[t, v] + lm[u, v]) = m_t + m_u + log(exp(am - m) @ exp(lm - m)^T)``
    with the row maxima m (their gradient cancels, so they are detached). Entries where
    the product underflows (am and lm peaking at different labels by ~80 nats in
    float32) are recomputed exactly from the V terms.

    Args:
        am: encoder-side term (B, T, V).
        lm: prediction-side term (B, U+1, V).
        targets: labels (B, U) with padding already replaced by valid ids.
        blank: blank id.

    Returns:
        emit (B, T, U+1) (last column -inf) and blank (B, T, U+1) log-probs.
    """
    am_max = am.detach().amax(dim=-1, keepdim=True)
    lm_max = lm.detach().amax(dim=-1, keepdim=True)
    prod = torch.matmul(torch.exp(am - am_max), torch.exp(lm - lm_max).transpose(1, 2))
    vocab, tiny = am.size(2), torch.finfo(prod.dtype).tiny
    norm = torch.log(prod.clamp_min(tiny)) + am_max + lm_max.transpose(1, 2)  # (B, T, U+1)
    # Where am and lm peak at different labels the product can underflow (terms below
    # the smallest normal float are lost): recompute those entries exactly.
    lossy = prod < tiny * vocab * 1e6  # relative error bound 1e-6
    if bool(lossy.any()):
        where = lossy.nonzero()  # (K, 3): b, t, u
        step = max(1, _CHUNK_ELEMENTS // vocab)
        exact = []
        for lo in range(0, where.size(0), step):
            b, t, u = where[lo : lo + step].unbind(1)
            exact.append(torch.logsumexp(am[b, t] + lm[b, u], dim=-1))
        norm = norm.index_put(tuple(where.unbind(1)), torch.cat(exact))

    # The emit arc at (t, u) outputs y_u = targets[u]. One gather per tensor (each
    # gather's backward writes a full-size gradient): am[t, (y_0 .. y_{U-1}, blank)] and
    # lm[u, (y_u, blank)], with y_U := blank as filler.
    n_labels = targets.size(1)
    labels = torch.nn.functional.pad(targets.long(), (0, 1), value=blank)  # (B, U+1)
    am_pick = am.gather(2, labels.unsqueeze(1).expand(-1, am.size(1), -1))  # (B, T, U+1)
    lm_pick = lm.gather(2, torch.stack([labels, torch.full_like(labels, blank)], 2))
    emit = am_pick[:, :, :n_labels] + lm_pick[:, :n_labels, 0].unsqueeze(1) - norm[:, :, :n_labels]
    blank_lp = am_pick[:, :, n_labels:] + lm_pick[:, :, 1].unsqueeze(1) - norm
    emit = _pad(emit, (0, 1))
    return emit, blank_lp


# -------------------------------------------------------------------- pruning ranges


def prune_ranges(
    occ_emit: torch.Tensor,
    occ_blank: torch.Tensor,
    t_lens: torch.Tensor,
    u_lens: torch.Tensor,
    s_range: int,
) -> torch.Tensor:
    """Per frame, the ``s_range`` label positions to keep, from the simple lattice's
    arc occupations.

    Window [s, s + R) at frame t is scored by the mass of alignments that leave frame t
    (take its blank) inside the window, minus the mass that crosses into it from
    s - 1 within frame t (those alignments would be cut off). The arg-max starts are
    then adjusted (non-decreasing; a rise of at most R - 1 per frame, so consecutive
    windows share a position; at most (R - 1) t at frame t, so (0, 0) is reachable;
    ending at U_b - R + 1), which guarantees that the pruned lattice holds a complete
    alignment. For frames past an utterance's end the last window is repeated.

    Args:
        occ_emit: emit-arc occupations (B, T, U+1).
        occ_blank: blank-arc occupations (B, T, U+1).
        t_lens: frames per utterance (B,).
        u_lens: labels per utterance (B,).
        s_range: window width R, 1 <= R <= U+1 (U+1 = ``occ_blank.size(2)``); every
            utterance needs U_b + 1 - R <= (R - 1)(T_b - 1), else ValueError.

    Returns:
        label positions (B, T, R), int64: ``start[b, t] + [0, 1, ..., R-1]``, each in
        [0, max(U_b, R - 1)].
    """
    batch, frames, width = occ_blank.shape
    if not 1 <= s_range <= width:
        raise ValueError(f"s_range must be in [1, U+1={width}], got {s_range}")
    device = occ_blank.device
    t_lens, u_lens = t_lens.long(), u_lens.long()
    infeasible = u_lens + 1 - s_range > (s_range - 1) * (t_lens - 1)
    if bool(infeasible.any()):
        b = int(infeasible.nonzero()[0])
        raise ValueError(
            f"batch index {b}: {int(u_lens[b])} labels in {int(t_lens[b])} frames cannot be "
            f"covered by windows of s_range={s_range} (at most {s_range - 1} labels per "
            "frame); use a larger s_range"
        )
    last_start = (u_lens + 1 - s_range).clamp_min(0)  # (B,)
    starts = width - s_range + 1
    csum = torch.nn.functional.pad(occ_blank.cumsum(2), (1, 0))
    kept = csum[:, :, s_range:] - csum[:, :, :starts]  # (B, T, starts)
    cut = torch.nn.functional.pad(occ_emit[:, :, : starts - 1], (1, 0))
    score = kept - cut
    candidates = torch.arange(starts, device=device)
    score = score.masked_fill(candidates > last_start.view(-1, 1, 1), NEG_INF)
    start = score.argmax(dim=2)  # (B, T)

    t_idx = torch.arange(frames, device=device)
    before_end = t_idx.unsqueeze(0) < (t_lens - 1).unsqueeze(1)
    start = torch.where(before_end, start, last_start.unsqueeze(1))
    # Non-decreasing: lower each start to the smallest one after it.
    start = start.flip(1).cummin(1).values.flip(1)
    # Rise <= R - 1 per frame: raise each start to max over t' >= t of start[t'] - (R-1)(t'-t).
    slope = (s_range - 1) * t_idx
    start = (start - slope).flip(1).cummax(1).values.flip(1) + slope
    # Reachable from (0, 0): at most R - 1 labels per frame before.
    start = torch.minimum(start, slope.unsqueeze(0))
    return start.unsqueeze(2) + torch.arange(s_range, device=device)


# ------------------------------------------------------------------------ pruned loss


class _PickedLogSoftmax(torch.autograd.Function):
    """``log_softmax(hidden @ W^T + b)`` at a few labels per row, in row chunks.

    Only the picked log-probs are kept; backward recomputes each chunk's logits. Peak
    memory is one (chunk, V) block instead of two or three (N, V) tensors (logits,
    softmax, gradient), at the cost of one more matrix product. The bias rides in the
    products as an extra input column of ones, so it costs no pass over the logits.
    """

    @staticmethod
    def forward(
        ctx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        labels: torch.Tensor,
        chunk: int,
    ) -> torch.Tensor:
        """Args: hidden (N, J); weight (V, J); bias (V,); labels (N, K) int64.

        Returns: log-probs (N, K).
        """
        hidden1 = torch.cat([hidden, hidden.new_ones(hidden.size(0), 1)], dim=1)
        weight1 = torch.cat([weight, bias.unsqueeze(1)], dim=1)  # (V, J+1)
        out = hidden.new_empty(labels.shape)
        for lo in range(0, hidden.size(0), chunk):
            rows = slice(lo, lo + chunk)
            logits = torch.mm(hidden1[rows], weight1.t())
            out[rows] = torch.log_softmax(logits, dim=1).gather(1, labels[rows])
        ctx.save_for_backward(hidden1, weight1, labels)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        hidden1, weight1, labels = ctx.saved_tensors
        need_h = ctx.needs_input_grad[0]
        need_wb = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        grad_h = hidden1.new_empty(hidden1.size(0), hidden1.size(1) - 1) if need_h else None
        grad_wb = torch.zeros_like(weight1) if need_wb else None
        for lo in range(0, hidden1.size(0), ctx.chunk):
            rows = slice(lo, lo + ctx.chunk)
            # d out[k] / d logits = onehot(labels[k]) - softmax
            grad = torch.softmax(torch.mm(hidden1[rows], weight1.t()), dim=1)
            grad.mul_(-grad_out[rows].sum(1, keepdim=True))
            grad.scatter_add_(1, labels[rows], grad_out[rows])
            if need_h:
                torch.mm(grad, weight1[:, :-1], out=grad_h[rows])
            if need_wb:
                grad_wb.addmm_(grad.t(), hidden1[rows])
        if grad_wb is None:
            return grad_h, None, None, None, None
        return grad_h, grad_wb[:, :-1], grad_wb[:, -1], None, None


def _pruned_lattice(
    joint: JointNetwork,
    enc_proj: torch.Tensor,
    dec_proj: torch.Tensor,
    ranges: torch.Tensor,
    targets: torch.Tensor,
    blank: int,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Emit/blank log-probs (B, T, U+1) of the full joint on the pruned positions only.

    The joint is ``lin_out(activation(enc_proj + dec_proj))`` (ESPnet's ``JointNetwork``
    with ``no_projection=True``), evaluated at (b, t, ranges[b, t, k]) with the output
    layer and log-softmax fused (:class:`_PickedLogSoftmax`).

    Args:
        joint: joint network.
        enc_proj: ``lin_enc(enc_out)`` (B, T, J).
        dec_proj: ``lin_dec(dec_out)`` (B, U+1, J).
        ranges: label positions (B, T, R).
        targets: labels (B, U), padding replaced by valid ids.
        blank: blank id.

    Returns:
        emit, blank (B, T, U+1), -inf outside the windows.
    """
    batch, width = dec_proj.size(0), dec_proj.size(1)
    flat = (ranges + width * torch.arange(batch, device=ranges.device).view(-1, 1, 1)).flatten()
    dec_pruned = dec_proj.reshape(batch * width, -1).index_select(0, flat)
    hidden = joint.joint_activation(enc_proj.unsqueeze(2) + dec_pruned.view(*ranges.shape, -1))
    # The label emitted at position u is targets[u]; positions >= U (never an emit arc
    # of a real utterance) read blank instead.
    labels = torch.nn.functional.pad(targets.long(), (0, width - targets.size(1)), value=blank)
    next_label = labels.gather(1, ranges.flatten(1)).view_as(ranges)
    picks = torch.stack([next_label, torch.full_like(next_label, blank)], dim=3)
    out = joint.lin_out
    chunk = max(1, _CHUNK_ELEMENTS // out.out_features)
    logp = _PickedLogSoftmax.apply(
        hidden.reshape(-1, hidden.size(-1)), out.weight, out.bias, picks.view(-1, 2), chunk
    ).view(*ranges.shape, 2)
    lattice = logp.new_full((2, batch, ranges.size(1), width), NEG_INF)
    emit = lattice[0].scatter(2, ranges, logp[..., 0])
    blank_lp = lattice[1].scatter(2, ranges, logp[..., 1])
    return emit, blank_lp


def _reduce(costs: torch.Tensor, reduction: str) -> torch.Tensor:
    """``"none"``: (B,); ``"sum"``; ``"mean"``: sum / B (ESPnet's and :func:`rnnt_loss`'s)."""
    if reduction == "none":
        return costs
    total = costs.sum()
    return total / costs.numel() if reduction == "mean" else total


@float32_outside_autocast
def pruned_rnnt_loss(
    joint: JointNetwork,
    enc_out: torch.Tensor,
    dec_out: torch.Tensor,
    targets: torch.Tensor,
    enc_lens: torch.Tensor,
    target_lens: torch.Tensor,
    blank: int = 0,
    s_range: int = 5,
    simple_loss_scale: float = 0.5,
    pruned_loss_scale: float = 1.0,
    reduction: str = "mean",
    simple_joiner: Optional[SimpleJoiner] = None,
    fastemit_lambda: float = 0.0,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """``simple_loss_scale * L_simple + pruned_loss_scale * L_pruned`` (see module doc).

    Both terms are RNN-T negative log-likelihoods -log P(y | x): L_simple under the
    trivial joiner, L_pruned under ``joint`` restricted to the pruned lattice (equal to
    the full RNN-T loss once ``s_range >= U + 1``). The ranges are chosen without
    gradient. Padding beyond the lengths may hold anything (e.g. -1 in ``targets``).
    Runs in float32 with autocast disabled; float16/bfloat16 inputs are cast.

    Args:
        joint: ESPnet ``JointNetwork``; its parts (``lin_enc``, ``lin_dec``,
            ``joint_activation``, ``lin_out``) are used as its forward would use them.
        enc_out: encoder output (B, T, De).
        dec_out: prediction-network output for [blank] + y (B, U+1, Dd).
        targets: labels (B, U) (or wider), valid ones in [0, V) and != blank.
        enc_lens: frames per utterance (B,), each in [1, T].
        target_lens: labels per utterance (B,), each at most ``dec_out.size(1) - 1``.
        blank: blank id.
        s_range: label positions kept per frame (>= 2; capped at the longest U + 1).
        simple_loss_scale: weight of L_simple.
        pruned_loss_scale: weight of L_pruned.
        reduction: ``"mean"`` (sum / B), ``"sum"`` or ``"none"`` (per utterance (B,)).
        simple_joiner: separate trivial-joiner heads; None ties them to ``joint``.
        fastemit_lambda: FastEmit weight >= 0 on both terms (gradient only; 0 = plain).

    Returns:
        The combined loss and ``{"simple": L_simple, "pruned": L_pruned}``, all reduced
        by ``reduction`` and differentiable.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose one of {REDUCTIONS}")
    if s_range < 2:
        raise ValueError(f"s_range must be >= 2 (a window of 1 cannot emit), got {s_range}")
    check_fastemit_lambda(fastemit_lambda)
    for name, x, size in (
        ("enc_out", enc_out, joint.lin_enc.in_features),
        ("dec_out", dec_out, joint.lin_dec.in_features),
    ):
        if x.dim() != 3 or x.size(0) != targets.size(0) or x.size(2) != size:
            raise ValueError(
                f"{name} must have shape ({targets.size(0)}, *, {size}), got {tuple(x.shape)}"
            )
    vocab = joint.lin_out.out_features
    # Same length/label checks as rnnt_loss, on a shape-only stand-in for the logits.
    shape_only = enc_out.new_empty(
        (enc_out.size(0), enc_out.size(1), dec_out.size(1), vocab), device="meta"
    )
    t_list, u_list = _validate(shape_only, targets, enc_lens, target_lens, blank)

    max_t, max_u = max(t_list), max(u_list)
    device = enc_out.device
    t_lens = torch.tensor(t_list, device=device)
    u_lens = torch.tensor(u_list, device=device)
    enc_out, dec_out = enc_out[:, :max_t], dec_out[:, : max_u + 1]
    targets = targets[:, :max_u].to(device)
    valid = torch.arange(max_u, device=device) < u_lens.unsqueeze(1)
    targets = torch.where(valid, targets, blank)
    s_range = min(s_range, max_u + 1)

    enc_proj = joint.lin_enc(enc_out)  # (B, T, J)
    dec_proj = joint.lin_dec(dec_out)  # (B, U+1, J)
    if simple_joiner is None:
        am = joint.lin_out(enc_proj)
        lm = torch.matmul(dec_proj, joint.lin_out.weight.t())
    else:
        am, lm = simple_joiner(enc_out, dec_out)
    emit, blank_lp = simple_lattice(am, lm, targets, blank)
    emit = fastemit_emission(emit, fastemit_lambda)
    simple_ll, occ_emit, occ_blank = lattice_log_likelihood(emit, blank_lp, t_lens, u_lens)

    with _one_cpu_thread(device):  # small tensors: see _one_cpu_thread
        ranges = prune_ranges(occ_emit, occ_blank, t_lens, u_lens, s_range)  # (B, T, R)
    emit, blank_lp = _pruned_lattice(joint, enc_proj, dec_proj, ranges, targets, blank)
    emit = fastemit_emission(emit, fastemit_lambda)
    pruned_ll, _, _ = lattice_log_likelihood(emit, blank_lp, t_lens, u_lens)

    simple = _reduce(-simple_ll, reduction)
    pruned = _reduce(-pruned_ll, reduction)
    total = simple_loss_scale * simple + pruned_loss_scale * pruned
    return total, {"simple": simple, "pruned": pruned}
