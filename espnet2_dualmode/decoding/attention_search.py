"""Joint CTC/attention beam search: ESPnet's ``BatchBeamSearch`` over our heads.

The scorers and weights are ESPnet's own (``espnet2/bin/asr_inference.py``): score =
(1 - ctc_weight) * decoder + ctc_weight * CTC prefix score + penalty * length. The search
runs one utterance at a time (ESPnet's batch dimension is the beam).

:func:`attention_greedy` is the batched greedy search of the validation error rate: the
whole batch in one label-synchronous loop (ESPnet's search is one utterance at a time).
"""

from __future__ import annotations

import logging
from typing import List, Optional, Sequence

import torch
from espnet.nets.batch_beam_search import BatchBeamSearch
from espnet.nets.pytorch_backend.transformer.mask import subsequent_mask
from espnet.nets.scorer_interface import BatchScorerInterface
from espnet.nets.scorers.ctc import CTCPrefixScorer
from espnet.nets.scorers.length_bonus import LengthBonus

from espnet2_dualmode.decoding.hypothesis import Hypothesis

logger = logging.getLogger(__name__)


class AttentionBeamSearch:
    """Label-synchronous beam search with an attention decoder and optional CTC.

    Args:
        decoder: attention decoder implementing ESPnet's batch scorer interface
            (e.g. ``TransformerDecoder``).
        ctc: ESPnet ``CTC`` module; required when ``ctc_weight > 0``.
        vocab_size: number of tokens V (decoder output size).
        sos: start-of-sentence id (ESPnet: V - 1).
        eos: end-of-sentence id (ESPnet: V - 1).
        beam_size: hypotheses kept per output position.
        ctc_weight: weight of the CTC prefix score in [0, 1]; the decoder gets
            1 - ctc_weight.
        penalty: length bonus per token.
        maxlenratio: ESPnet's maximum output length (0: up to T with end detection,
            < 0: the absolute value is the length, > 0: ratio to T).
        minlenratio: ESPnet's minimum output length, same convention.
        nbest: hypotheses returned per utterance.
        normalize_length: rank ended hypotheses by score per token.
        token_list: tokens, only for ESPnet's debug logging.
    """

    def __init__(
        self,
        decoder: BatchScorerInterface,
        ctc: Optional[torch.nn.Module],
        vocab_size: int,
        sos: int,
        eos: int,
        beam_size: int = 10,
        ctc_weight: float = 0.3,
        penalty: float = 0.0,
        maxlenratio: float = 0.0,
        minlenratio: float = 0.0,
        nbest: int = 1,
        normalize_length: bool = False,
        token_list: Optional[Sequence[str]] = None,
    ) -> None:
        if not 0.0 <= ctc_weight <= 1.0:
            raise ValueError(f"ctc_weight must be in [0, 1], got {ctc_weight}")
        if ctc_weight > 0 and ctc is None:
            raise ValueError(f"ctc_weight={ctc_weight} needs a CTC module")
        if not 1 <= nbest <= beam_size:
            raise ValueError(f"nbest must be in [1, beam_size={beam_size}], got {nbest}")
        scorers = {"decoder": decoder, "length_bonus": LengthBonus(vocab_size)}
        if ctc is not None:
            scorers["ctc"] = CTCPrefixScorer(ctc=ctc, eos=eos)
        weights = {"decoder": 1.0 - ctc_weight, "ctc": ctc_weight, "length_bonus": penalty}
        self.search = BatchBeamSearch(
            scorers=scorers,
            weights=weights,
            beam_size=beam_size,
            vocab_size=vocab_size,
            sos=sos,
            eos=eos,
            token_list=None if token_list is None else list(token_list),
            pre_beam_score_key=None if ctc_weight == 1.0 else "full",
            normalize_length=normalize_length,
        )
        self.sos, self.eos = sos, eos
        self.maxlenratio, self.minlenratio = maxlenratio, minlenratio
        self.nbest = nbest

    @torch.no_grad()
    def __call__(
        self, enc_out: torch.Tensor, enc_lens: Optional[torch.Tensor] = None
    ) -> List[List[Hypothesis]]:
        """Decode each utterance of the batch.

        Args:
            enc_out: encoder output (B, T, D).
            enc_lens: valid frames per utterance (B,); None means all T.

        Returns:
            Per utterance, up to ``nbest`` hypotheses (best first) without sos/eos;
            ``score`` is ESPnet's weighted total. An utterance for which ESPnet ends no
            hypothesis gets an empty list (ESPnet logs a warning).
        """
        if enc_out.dim() != 3:
            raise ValueError(f"enc_out must have shape (B, T, D), got {tuple(enc_out.shape)}")
        batch, frames, _ = enc_out.shape
        lens = [frames] * batch if enc_lens is None else [int(n) for n in enc_lens.tolist()]
        if len(lens) != batch or any(not 1 <= n <= frames for n in lens):
            raise ValueError(f"enc_lens {lens} must hold {batch} lengths in [1, {frames}]")
        results = []
        for b, n in enumerate(lens):
            ended = self.search(
                x=enc_out[b, :n], maxlenratio=self.maxlenratio, minlenratio=self.minlenratio
            )
            if not ended:
                logger.warning("utterance %d: the attention beam search ended no hypothesis", b)
            results.append([self._to_hypothesis(h.yseq, h.score) for h in ended[: self.nbest]])
        return results

    def _to_hypothesis(self, yseq: torch.Tensor, score: torch.Tensor) -> Hypothesis:
        """Strip the leading sos and the final eos of an ESPnet ``yseq``.

        A hypothesis that chose eos exactly at the maximum length gets a second eos
        from ESPnet; both go.
        """
        tokens = yseq.tolist()[1:]
        while tokens and tokens[-1] == self.eos:
            tokens.pop()
        return Hypothesis(tokens, float(score))


@torch.no_grad()
def attention_greedy(decoder: torch.nn.Module, enc_out: torch.Tensor, enc_lens: torch.Tensor,
                     sos: int, eos: int) -> List[Hypothesis]:
    """Greedy attention decoding of a padded batch, as a beam of 1 without CTC.

    Each utterance takes the most likely next token until it picks ``eos`` or has as many
    tokens as encoder frames (ESPnet's ``maxlenratio=0`` limit); the padded frames are
    masked out of the source attention.

    Args:
        decoder: attention decoder with ESPnet's ``forward_one_step`` (e.g. ``TransformerDecoder``).
        enc_out: encoder output (B, T, D).
        enc_lens: valid frames per utterance (B,).
        sos, eos: start- and end-of-sentence ids.

    Returns:
        Per utterance, its tokens without sos/eos and the sum of their log-probabilities.
    """
    batch, frames, _ = enc_out.shape
    memory_mask = (torch.arange(frames, device=enc_out.device) < enc_lens.unsqueeze(1)).unsqueeze(1)
    ys = torch.full((batch, 1), sos, dtype=torch.long, device=enc_out.device)
    scores = enc_out.new_zeros(batch)
    running = torch.ones(batch, dtype=torch.bool, device=enc_out.device)
    cache = None
    for step in range(int(enc_lens.max())):
        tgt_mask = subsequent_mask(step + 1, device=enc_out.device).unsqueeze(0)
        logp, cache = decoder.forward_one_step(ys, tgt_mask, enc_out, memory_mask, cache=cache)
        best, token = logp.max(dim=-1)
        scores = scores + torch.where(running, best, best.new_zeros(()))
        token = torch.where(running, token, token.new_full((), eos))
        ys = torch.cat([ys, token.unsqueeze(1)], dim=1)
        running = running & (token != eos) & (enc_lens > step + 1)
        if not bool(running.any()):
            break
    results = []
    for row, score in zip(ys[:, 1:].tolist(), scores.tolist()):
        tokens = row[: row.index(eos)] if eos in row else row
        results.append(Hypothesis(tokens, score))
    return results
