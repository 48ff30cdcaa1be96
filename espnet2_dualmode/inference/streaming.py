"""Streaming recognition from audio that arrives in chunks of any number of samples.

Pipeline per call: exact incremental log-mel features -> global normalisation -> the
contextual-block encoder's incremental path (block by block, state carried) -> the
time-synchronous RNN-T beam search, continued from the previous block's hypotheses and
prediction-net states. Every stage reproduces its offline counterpart exactly, so the
final result does not depend on the chunking and equals
``Speech2Text(decode_head="streaming_rnnt")`` at the same beam.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
from espnet2.asr.frontend.default import DefaultFrontend
from espnet2.layers.utterance_mvn import UtteranceMVN

from espnet2_dualmode.decoding import TransducerSearch
from espnet2_dualmode.inference.model_io import (
    Result,
    TokenText,
    load_model,
    module_device,
    sample_rate,
)


class StreamingFeatures:
    """Log-mel frames of a growing waveform, equal to ESPnet's DefaultFrontend output.

    The offline STFT is centred: frame k covers samples [k*hop - n_fft/2, k*hop + n_fft/2)
    of the waveform reflected at both ends. A frame is emitted once its window has
    arrived; the right reflection is applied when the stream ends. Samples are buffered
    and transformed on the frontend's device.
    """

    def __init__(self, frontend: DefaultFrontend):
        stft = frontend.stft
        enhancement = frontend.frontend is not None and (
            frontend.frontend.use_wpe or frontend.frontend.use_beamformer)
        if stft is None or not stft.center or enhancement:
            raise ValueError("streaming needs a centred STFT frontend without enhancement")
        self.stft, self.logmel = stft, frontend.logmel
        self.n_fft, self.hop = stft.n_fft, stft.hop_length
        self.half = self.n_fft // 2
        self.device = module_device(frontend)
        self.reset()

    def reset(self) -> None:
        # first samples, until the left reflection can be built
        self.head = torch.zeros(0, device=self.device)
        self.buffer: Optional[torch.Tensor] = None  # padded signal from frame `done` on
        # last half+1 samples, for the right reflection
        self.tail = torch.zeros(0, device=self.device)
        self.done = 0  # frames emitted

    def _frames(self, signal: torch.Tensor) -> torch.Tensor:
        window = getattr(torch, f"{self.stft.window}_window")(self.stft.win_length,
                                                              device=signal.device)
        spec = torch.stft(signal, n_fft=self.n_fft, hop_length=self.hop,
                          win_length=self.stft.win_length, window=window, center=False,
                          normalized=self.stft.normalized, onesided=self.stft.onesided,
                          return_complex=True)
        power = (spec.real ** 2 + spec.imag ** 2).transpose(0, 1).unsqueeze(0)
        feats, _ = self.logmel(power)
        return feats  # (1, k, F)

    def _no_frames(self) -> torch.Tensor:
        return torch.zeros(1, 0, self.logmel.mel_options["n_mels"], device=self.device)

    def __call__(self, chunk: torch.Tensor, is_final: bool) -> torch.Tensor:
        """Feed samples (n,) on any device; returns the newly complete frames (1, k, F)."""
        chunk = chunk.to(device=self.device, dtype=torch.float32).reshape(-1)
        self.tail = torch.cat([self.tail, chunk])[-(self.half + 1):]
        if self.buffer is None:
            self.head = torch.cat([self.head, chunk])
            if self.head.numel() > self.half:
                left = self.head[1:self.half + 1].flip(0)
                self.buffer = torch.cat([left, self.head])
            elif is_final:
                raise ValueError(f"audio of {self.head.numel()} samples is too short for a "
                                 f"{self.n_fft}-point STFT (needs more than {self.half})")
        else:
            self.buffer = torch.cat([self.buffer, chunk])
        if self.buffer is None:
            return self._no_frames()
        signal = self.buffer
        if is_final:
            signal = torch.cat([signal, self.tail[:-1].flip(0)[: self.half]])
        n_ready = (signal.numel() - self.n_fft) // self.hop + 1 if signal.numel() >= self.n_fft else 0
        if n_ready <= 0:
            return self._no_frames()
        feats = self._frames(signal[: (n_ready - 1) * self.hop + self.n_fft])
        self.buffer = self.buffer[n_ready * self.hop:]
        self.done += n_ready
        return feats


class Speech2TextStreaming:
    """Streaming RNN-T recognizer of a dual-mode model (one stream at a time).

    Usage::

        s2t = Speech2TextStreaming("exp/x/config.yaml", "exp/x/valid.loss.ave.pth", beam_size=10)
        for chunk in chunks:                 # any number of samples each
            partial = s2t(chunk, is_final=False)
        final = s2t(last_chunk, is_final=True)
        s2t.reset()                          # before the next utterance

    Args:
        asr_train_config, asr_model_file: the training run's config.yaml and weights.
        beam_size, nbest, max_sym_per_frame: RNN-T search settings.
        device: torch device.
        block_size, hop_size, look_ahead: the streaming encoder's geometry, as for
            :class:`espnet2_dualmode.inference.offline.Speech2Text` (none: the training one).
    """

    def __init__(self, asr_train_config: str | Path, asr_model_file: Optional[str | Path],
                 beam_size: int = 10, nbest: int = 1, max_sym_per_frame: int = 10,
                 device: str = "cpu", block_size: Optional[int] = None,
                 hop_size: Optional[int] = None, look_ahead: Optional[int] = None):
        self.model, self.train_args = load_model(asr_train_config, asr_model_file, device,
                                                 block_size, hop_size, look_ahead)
        m = self.model
        if m.stream_encoder is None or m.stream_decoder is None:
            raise ValueError(f"{asr_train_config}: this model has no streaming path")
        if not isinstance(m.frontend, DefaultFrontend):
            raise ValueError("streaming needs the default (STFT + log-mel) frontend")
        if isinstance(m.normalize, UtteranceMVN):
            raise ValueError("utterance_mvn needs the whole utterance; train with global_mvn")
        self.features = StreamingFeatures(m.frontend)
        self.search = TransducerSearch(m.stream_decoder, m.stream_joint, beam_size,
                                       max_sym_per_frame, nbest=nbest)
        self.text = TokenText(self.train_args)
        self.sample_rate = sample_rate(self.train_args)
        self.device = torch.device(device)
        self.reset()

    def reset(self) -> None:
        """Forget the current utterance."""
        self.features.reset()
        self.encoder_state = self.model.stream_encoder.init_state(1, device=self.device)
        self.search_state = self.search.init(1)
        self.n_encoder_frames = 0

    @torch.inference_mode()
    def __call__(self, speech_chunk: np.ndarray | torch.Tensor, is_final: bool) -> List[Result]:
        """Feed the next samples; returns the n-best so far (partial unless ``is_final``).

        A partial result only contains tokens emitted on encoder frames whose block has
        been fully received (block + look-ahead), never tokens from audio not yet fed.
        """
        feats = self.encoder_input(self.features, speech_chunk, is_final)
        enc, self.encoder_state = self.model.stream_encoder.forward_incremental(
            feats, self.encoder_state, is_final=is_final)
        self.search.advance(self.search_state, enc)
        self.n_encoder_frames += enc.size(1)
        if is_final:
            best = self.search.finalize(self.search_state)[0]
        else:
            best = [self.search.partial(self.search_state)[0]]
        return self.text.results(best)

    def encoder_input(self, features: StreamingFeatures, speech_chunk: np.ndarray | torch.Tensor,
                      is_final: bool) -> torch.Tensor:
        """The chunk's newly complete feature frames (1, k, F) of one stream's ``features``,
        normalised as in training: the streaming encoder's input."""
        feats = features(torch.as_tensor(speech_chunk, device=self.device), is_final)
        if self.model.normalize is not None and feats.size(1):
            feats, _ = self.model.normalize(feats, torch.tensor([feats.size(1)], device=self.device))
        return feats
