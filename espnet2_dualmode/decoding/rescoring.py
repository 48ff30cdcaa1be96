"""N-best rescoring with every head, for 4D-style "joint" decoding.

Each ``*_sequence_scores`` function returns log-likelihoods (N,) float64, on the CPU, of N
candidate token sequences of one utterance (encoded on any device) under one head:

* CTC: log P_ctc(y | x), all alignments (``torch.nn.functional.ctc_loss``);
* RNN-T: log P_rnnt(y | x), all alignments, no limit of symbols per frame
  (:func:`espnet2_dualmode.losses.transducer.rnnt_loss`);
* attention: teacher-forced sum of log p(y_i | y_<i, x), including the final eos;
* MLM: pseudo-log-likelihood (Salazar et al., ACL 2020) sum_i log p(y_i | y without
  y_i, x), each position masked alone. The MLM is trained to fill masks given the other
  tokens, so one mask per pass asks it exactly that question; a one-pass score with all
  positions masked would ignore the candidate's own tokens. Cost: sum of |y| MLM rows.

:func:`rescore` combines them with weights and ranks the candidates.
"""

from __future__ import annotations

from typing import List, Mapping, Sequence

import torch
import torch.nn.functional as F
from espnet2.asr.decoder.transducer_decoder import TransducerDecoder
from espnet2.asr_transducer.joint_network import JointNetwork

from espnet2_dualmode.decoding.hypothesis import Hypothesis
from espnet2_dualmode.losses.transducer import rnnt_loss

Candidates = Sequence[Sequence[int]]


def _check_candidates(
    candidates: Candidates, vocab_size: int, forbidden: Mapping[int, str]
) -> List[List[int]]:
    """Candidates as lists of ints; raise on an id outside [0, V) or a forbidden id."""
    checked = []
    for n, cand in enumerate(candidates):
        tokens = [int(k) for k in cand]
        for k in tokens:
            if not 0 <= k < vocab_size:
                raise ValueError(f"candidate {n}: token {k} is outside [0, {vocab_size})")
            if k in forbidden:
                raise ValueError(f"candidate {n}: token {k} is {forbidden[k]}")
        checked.append(tokens)
    return checked


def _check_encoder(enc_out: torch.Tensor) -> None:
    """Raise unless ``enc_out`` is one utterance's (T, D) encoder output with T >= 1."""
    if enc_out.dim() != 2 or enc_out.size(0) == 0:
        raise ValueError(f"enc_out must have shape (T, D) with T >= 1, got {tuple(enc_out.shape)}")


def _pad(seqs: Sequence[Sequence[int]], value: int, device: torch.device) -> torch.Tensor:
    """Right-pad token lists into a (N, max(1, longest)) long tensor on ``device``."""
    longest = max([1] + [len(s) for s in seqs])
    rows = [list(s) + [value] * (longest - len(s)) for s in seqs]
    return torch.tensor(rows, dtype=torch.long, device=device).view(len(seqs), longest)


@torch.no_grad()
def ctc_sequence_scores(
    ctc: torch.nn.Module, enc_out: torch.Tensor, candidates: Candidates, blank: int = 0
) -> torch.Tensor:
    """log P_ctc(y | x) of each candidate (N,); -inf where x is too short for y.

    Args:
        ctc: ESPnet ``CTC`` module.
        enc_out: encoder output of one utterance (T, D).
        candidates: N token sequences (no blank).
        blank: blank id.
    """
    _check_encoder(enc_out)
    cands = _check_candidates(candidates, ctc.ctc_lo.out_features, {blank: "the blank"})
    if not cands:
        return torch.zeros(0, dtype=torch.float64)  # host: scores are returned on the CPU
    logp = ctc.log_softmax(enc_out.unsqueeze(0)).double()  # (1, T, V)
    frames = logp.size(1)
    targets = _pad(cands, blank, logp.device)
    nll = F.ctc_loss(
        logp.transpose(0, 1).expand(-1, len(cands), -1),
        targets,
        torch.full((len(cands),), frames, dtype=torch.long, device=logp.device),
        torch.tensor([len(c) for c in cands], dtype=torch.long, device=logp.device),
        blank=blank,
        reduction="none",
        zero_infinity=False,
    )
    return -nll.cpu()


@torch.no_grad()
def transducer_sequence_scores(
    decoder: TransducerDecoder,
    joint: JointNetwork,
    enc_out: torch.Tensor,
    candidates: Candidates,
    batch_size: int = 4,
) -> torch.Tensor:
    """log P_rnnt(y | x) of each candidate (N,), summed over all alignments.

    Args:
        decoder: RNN-T prediction network (its ``blank_id`` is the blank).
        joint: joint network.
        enc_out: encoder output of one utterance (T, D).
        candidates: N token sequences (no blank).
        batch_size: candidates per joint call; the joint tensor is
            (batch_size, T, U + 1, V).
    """
    _check_encoder(enc_out)
    blank = decoder.blank_id
    cands = _check_candidates(candidates, decoder.odim, {blank: "the blank"})
    device = enc_out.device
    decoder.set_device(device)  # ESPnet allocates RNN states on decoder.device
    scores = []
    for start in range(0, len(cands), batch_size):
        chunk = cands[start : start + batch_size]
        dec_in = _pad([[blank] + c for c in chunk], blank, device)  # (n, U + 1)
        dec_out = decoder(dec_in)  # (n, U + 1, H)
        enc = enc_out.unsqueeze(0).expand(len(chunk), -1, -1)
        logits = joint(enc.unsqueeze(2), dec_out.unsqueeze(1))  # (n, T, U + 1, V)
        nll = rnnt_loss(
            logits,
            _pad(chunk, blank, device),
            torch.full((len(chunk),), enc_out.size(0), dtype=torch.long, device=device),
            torch.tensor([len(c) for c in chunk], dtype=torch.long, device=device),
            blank=blank,
            reduction="none",
        )
        scores.append(-nll.double().cpu())
    return torch.cat(scores) if scores else torch.zeros(0, dtype=torch.float64)  # host: CPU scores


@torch.no_grad()
def attention_sequence_scores(
    decoder: torch.nn.Module,
    enc_out: torch.Tensor,
    candidates: Candidates,
    sos: int,
    eos: int,
) -> torch.Tensor:
    """Teacher-forced log p(y + [eos] | x) of each candidate (N,).

    Args:
        decoder: attention decoder called as ``decoder(hs_pad, hlens, ys_in_pad,
            ys_in_lens) -> (logits (N, L, V), olens)`` (ESPnet ``TransformerDecoder``).
        enc_out: encoder output of one utterance (T, D).
        candidates: N token sequences (no sos/eos).
        sos: start-of-sentence id.
        eos: end-of-sentence id.
    """
    _check_encoder(enc_out)
    vocab = decoder.output_layer.out_features
    cands = _check_candidates(candidates, vocab, {sos: "sos", eos: "eos"})
    if not cands:
        return torch.zeros(0, dtype=torch.float64)  # host: scores are returned on the CPU
    device = enc_out.device
    ys_in = _pad([[sos] + c for c in cands], eos, device)
    ys_out = _pad([c + [eos] for c in cands], eos, device)
    lens = torch.tensor([len(c) + 1 for c in cands], dtype=torch.long, device=device)
    enc = enc_out.unsqueeze(0).expand(len(cands), -1, -1)
    hlens = torch.full((len(cands),), enc_out.size(0), dtype=torch.long, device=device)
    logits, _ = decoder(enc, hlens, ys_in, lens)
    token_lp = torch.log_softmax(logits.double(), dim=-1).gather(2, ys_out.unsqueeze(2))[..., 0]
    valid = torch.arange(ys_out.size(1), device=device).unsqueeze(0) < lens.unsqueeze(1)
    return (token_lp * valid).sum(dim=1).cpu()


@torch.no_grad()
def mlm_sequence_scores(
    mlm_decoder: torch.nn.Module,
    enc_out: torch.Tensor,
    candidates: Candidates,
    mask_token: int,
    batch_size: int = 64,
) -> torch.Tensor:
    """MLM pseudo-log-likelihood of each candidate (N,); 0 for an empty candidate.

    The probability of each token is taken over the real tokens (``<mask>`` excluded),
    as in :class:`espnet2_dualmode.decoding.mask_ctc.MaskCTCSearch`.

    Args:
        mlm_decoder: ``MLMDecoder`` (or any module with its call signature) with
            ``mask_token + 1`` outputs.
        enc_out: encoder output of one utterance (T, D).
        candidates: N token sequences.
        mask_token: the ``<mask>`` id (ESPnet: V).
        batch_size: masked copies per MLM call.
    """
    _check_encoder(enc_out)
    cands = _check_candidates(candidates, mask_token, {})
    device = enc_out.device
    # one row per (candidate, position): the candidate with that position masked
    rows = [(n, i) for n, c in enumerate(cands) for i in range(len(c))]
    scores = torch.zeros(len(cands), dtype=torch.float64)  # host: scores are returned on the CPU
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        ys = _pad([cands[n] for n, _ in chunk], mask_token, device)
        pos = torch.tensor([i for _, i in chunk], dtype=torch.long, device=device)
        target = ys[torch.arange(len(chunk), device=device), pos]
        ys[torch.arange(len(chunk), device=device), pos] = mask_token
        lens = torch.tensor([len(cands[n]) for n, _ in chunk], dtype=torch.long, device=device)
        enc = enc_out.unsqueeze(0).expand(len(chunk), -1, -1)
        hlens = torch.full((len(chunk),), enc_out.size(0), dtype=torch.long, device=device)
        logits, _ = mlm_decoder(enc, hlens, ys, lens)
        at_pos = logits[torch.arange(len(chunk), device=device), pos, :mask_token]
        lp = torch.log_softmax(at_pos.double(), dim=-1).gather(1, target.unsqueeze(1))[:, 0]
        owner = torch.tensor([n for n, _ in chunk])  # host: indexes the CPU scores
        scores.index_add_(0, owner, lp.cpu())
    return scores


def rescore(
    candidates: Candidates,
    scores: Mapping[str, torch.Tensor],
    weights: Mapping[str, float],
) -> List[Hypothesis]:
    """Rank candidates by sum_k weights[k] * scores[k].

    Heads with weight 0 are ignored (so their -inf scores cannot turn into NaN).

    Args:
        candidates: N token sequences.
        scores: per head name, log-likelihoods (N,) (e.g. from the functions above).
        weights: per head name, its weight; every weighted head must be in ``scores``.

    Returns:
        The candidates as hypotheses with their combined score, best first.
    """
    total = torch.zeros(len(candidates), dtype=torch.float64)  # host: sum of the CPU scores
    for name, weight in weights.items():
        if weight == 0:
            continue
        if name not in scores:
            raise ValueError(
                f"weight given for head {name!r} but no scores; have {sorted(scores)}"
            )
        head = scores[name]
        if tuple(head.shape) != (len(candidates),):
            raise ValueError(
                f"scores[{name!r}] has shape {tuple(head.shape)}, expected ({len(candidates)},)"
            )
        total += weight * head.double().cpu()
    order = sorted(range(len(candidates)), key=lambda n: -float(total[n]))
    return [Hypothesis([int(k) for k in candidates[n]], float(total[n])) for n in order]
