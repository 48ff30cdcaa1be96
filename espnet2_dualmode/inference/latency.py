"""Emission timing of the streaming path, measured as a real-time feed on one thread.

Audio arrives in chunks of ``chunk`` samples at real-time pace: chunk i is complete at
``a_i = (i + 1) * chunk / fs``. Its processing starts when it has arrived and the previous
chunk is done (queueing), ``s_i = max(a_i, f_{i-1})``, and ends at ``f_i = s_i + d_i`` with
``d_i`` the measured compute time. Every encoder frame produced by call i, and every token
emitted on it, is emitted at ``f_i``.

Per-token emission delay = emission time - the token's end time in a reference alignment:
CTC forced alignment (torchaudio) of the recognised tokens with the model's full-context
CTC head; a token ends at the end of the last encoder frame of its span.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import List

import numpy as np
import torch
import torchaudio

from espnet2_dualmode.inference.streaming import Speech2TextStreaming

SUBSAMPLING = 4


@dataclass
class UtteranceTiming:
    """Timing of one utterance; times in seconds from the start of the audio."""

    duration: float
    compute: float
    token_ids: List[int]
    emission_times: List[float]
    arrival_times: List[float]  # when the audio that produced each token had arrived
    delays: List[float] = field(default_factory=list)


def frame_end_seconds(s2t: Speech2TextStreaming, frame: int) -> float:
    """End time of encoder frame ``frame`` (its stride of 4 feature frames)."""
    hop = s2t.features.hop
    return SUBSAMPLING * (frame + 1) * hop / s2t.sample_rate


def samples_needed(s2t: Speech2TextStreaming, frame: int) -> int:
    """Samples the streaming path must have received before it can emit ``frame``."""
    enc = s2t.model.stream_encoder
    block = int(enc.block_of(torch.tensor(frame)))  # host: integer arithmetic, read by int()
    block_end = block * enc.hop_size + enc.block_size
    last_feature = SUBSAMPLING * (block_end - 1) + 6
    return last_feature * s2t.features.hop + s2t.features.half


def timed_recognition(s2t: Speech2TextStreaming, wav: np.ndarray, chunk: int) -> UtteranceTiming:
    """Feed ``wav`` in real time; returns the final tokens and when each was emitted.

    Each call returns Python token lists read back from the model's device, so on CUDA
    the measured compute time includes the device work (the read-back synchronises).
    """
    fs = s2t.sample_rate
    s2t.reset()
    frame_emitted_at: List[float] = []
    finish, compute, result = 0.0, 0.0, []
    starts = list(range(0, wav.size, chunk))
    for i, start in enumerate(starts):
        arrival = min(start + chunk, wav.size) / fs
        begin = max(arrival, finish)
        before = s2t.n_encoder_frames
        tic = time.perf_counter()
        out = s2t(wav[start:start + chunk], is_final=i == len(starts) - 1)
        spent = time.perf_counter() - tic
        compute += spent
        finish = begin + spent
        if out:
            result = out
        frame_emitted_at += [finish] * (s2t.n_encoder_frames - before)
    best = result[0]
    emission = [frame_emitted_at[t] for t in best.timestamps]
    arrival = [min(samples_needed(s2t, t), wav.size) / fs for t in best.timestamps]
    return UtteranceTiming(wav.size / fs, compute, best.token_ids, emission, arrival)


def reference_end_times(s2t: Speech2TextStreaming, wav: np.ndarray, token_ids: List[int]) -> List[float]:
    """End time of each token in a CTC forced alignment with the full-context CTC head."""
    model = s2t.model
    if model.ctc is None or model.full_encoder is None:
        raise ValueError("the reference alignment needs the full-context CTC head")
    if not token_ids:
        return []
    device = s2t.device
    with torch.no_grad():
        speech = torch.as_tensor(wav, dtype=torch.float32, device=device).unsqueeze(0)
        _, full, lengths = model.encode(speech, torch.tensor([speech.size(1)], device=device))
        log_probs = model.ctc.log_softmax(full)[:, : lengths[0]]
    targets = torch.tensor([token_ids], dtype=torch.int32, device=device)
    labels, _ = torchaudio.functional.forced_align(log_probs.float(), targets, blank=model.blank_id)
    labels = labels[0].tolist()
    ends: List[float] = []
    prev = model.blank_id
    for t, lab in enumerate(labels):
        if lab != model.blank_id:
            if lab == prev:  # the same token continues (no blank in between)
                ends[-1] = frame_end_seconds(s2t, t)
            else:
                ends.append(frame_end_seconds(s2t, t))
        prev = lab
    if len(ends) != len(token_ids):
        raise ValueError(f"forced alignment gave {len(ends)} spans for {len(token_ids)} tokens")
    return ends
