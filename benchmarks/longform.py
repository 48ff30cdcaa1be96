"""Long-form streaming with endpointing: time and memory per second of audio stay flat.

One recording of ``--minutes`` minutes is decoded by ``LongFormRecognizer`` in
``--chunk_ms`` chunks on one thread. For the minutes ending at 1, 5 and 10 (or the
requested length), it prints the processing time per second of audio over that minute and
the resident memory (RSS) at its end; last, the ratio of the last minute's time per
second to the first's (flat: about 1) and the RSS growth from minute 1 to the end.

Models:

* default: the paper-size joint+sp-ED model (conf/paper/joint_sp_ed.yaml: 12-layer
  contextual-block Conformer, d=256, block 40/16/16, V=3262) with random weights, on
  speech-like noise bursts (1-4 s) separated by 0.3-2 s pauses. Its flat joint outputs
  make the search expand the most symbols on every frame (about 1 s per audio second
  here, the worst case of ``streaming_rtf.py --search random``); ``--blank_bias 6`` adds
  to the blank logit for a cheaper, trained-like search. It emits a few tokens at the
  start of each stream and then mostly blank, so with the default rules its segments end
  by trailing silence after about 1.2 s; with the silence rules off
  (``--trailing_silence_after_token 1000 --trailing_silence_no_token 1000``) every segment
  runs to ``--max_segment``, the longest history a segment can have.
* ``--asr_train_config/--asr_model_file``: a trained model, on ``--wav_scp`` utterances
  separated by ``--pause`` seconds of silence, repeated to the length asked for. With
  ``--speech_segments`` (``<utt> <start_s> <end_s>``, the demo corpus writes one) it also
  counts the utterances whose speech falls inside one segment. With ``--text`` (the data
  dir's transcripts) it prints, after the timed run, the CER of the recording: the
  segments' streaming texts, and their ``--two_pass_head`` re-decodes, against the
  transcripts of the utterances in order; and, as references of the same run, the CER of
  the same utterances decoded one by one, by the streaming path and by that head, as they
  are and with ``--pause`` s of the recording's faint noise before and after each.

``--reference`` also decodes the recording as one stream without endpointing (positions,
search history and the hypotheses' token prefixes then grow with the audio) and prints the
same figures and the long-form / reference time ratio at the last minute.

    python benchmarks/longform.py --minutes 10 --blank_bias 6 \\
        --trailing_silence_after_token 1000 --trailing_silence_no_token 1000 [--reference]
    cd egs2/demo_ja/asr1 && python ../../../benchmarks/longform.py \\
        --asr_train_config exp/asr_train_joint_sp_ed_small_raw_char/config.yaml \\
        --asr_model_file exp/asr_train_joint_sp_ed_small_raw_char/valid.loss.ave.pth \\
        --wav_scp dump/raw/test/wav.scp --speech_segments data/test/speech_segments \\
        --text data/test/text
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import editdistance
import numpy as np
import soundfile
import torch

from common import paper_streaming

from espnet2_dualmode.inference.endpoint import (
    EndpointRules,
    FinishedSegment,
    LongFormRecognizer,
    Segment,
    add_two_pass_margin_argument,
)
from espnet2_dualmode.inference.latency import read_speech_segments
from espnet2_dualmode.inference.offline import Speech2Text, shared_offline_head
from espnet2_dualmode.inference.streaming import Speech2TextStreaming

from dualmode_recipe.kaldi_dir import read_kaldi_map

FS = 16000


def rss_mib() -> float:
    """Current resident memory of this process (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def noise_bursts(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Amplitude-modulated noise bursts of 1-4 s with 0.3-2 s of quiet between them."""
    pieces, total = [], 0
    while total < seconds * FS:
        n = int(rng.uniform(1, 4) * FS)
        envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * np.arange(n) / FS)  # 4 Hz "syllables"
        pieces.append(0.1 * envelope * rng.standard_normal(n))
        pieces.append(0.003 * rng.standard_normal(int(rng.uniform(0.3, 2) * FS)))
        total += pieces[-2].size + pieces[-1].size
    return np.concatenate(pieces)[: int(seconds * FS)].astype(np.float32)


def utterance_recording(wav_scp: str, seconds: float, pause: float,
                        rng: np.random.Generator) -> Tuple[np.ndarray, List[Tuple[str, int]]]:
    """``wav_scp``'s utterances in order, each followed by ``pause`` s of faint noise,
    repeated until ``seconds``; returns the audio and (utterance, start sample) of each."""
    wavs = []
    for line in Path(wav_scp).read_text().splitlines():
        key, path = line.split(maxsplit=1)
        wav, rate = soundfile.read(path, dtype="float32")
        if rate != FS:
            raise ValueError(f"{wav_scp}: {key} is {rate} Hz, not {FS}")
        wavs.append((key, wav))
    pieces, placed, total = [], [], 0
    while total < seconds * FS:
        for key, wav in wavs:
            placed.append((key, total))
            gap = (0.001 * rng.standard_normal(int(pause * FS))).astype(np.float32)
            pieces += [wav, gap]
            total += wav.size + gap.size
            if total >= seconds * FS:
                break
    return np.concatenate(pieces)[: int(seconds * FS)], placed


def marks(minutes: float) -> List[float]:
    """The minutes at which figures are taken: 1, 5, 10 within the length, and the end."""
    return sorted({m for m in (1.0, 5.0, 10.0) if m <= minutes} | {minutes})


class WithoutEndpoints:
    """The reference: the same recognizer fed the whole recording as one stream."""

    def __init__(self, s2t: Speech2TextStreaming) -> None:
        self.s2t = s2t

    def reset(self) -> None:
        self.s2t.reset()

    def __call__(self, chunk: np.ndarray, is_final: bool) -> List[Segment]:
        self.s2t(chunk, is_final)
        return []


def decode(lf: LongFormRecognizer | WithoutEndpoints, wav: np.ndarray, chunk: int, minutes: float
           ) -> Tuple[List[Segment], Dict[float, Tuple[float, float]]]:
    """Decode in chunks; returns the segments and {minute: (processing s per audio s over
    the minute before it, RSS MiB at it)}."""
    wanted = marks(minutes)
    points = sorted({max(0.0, m - 1) for m in wanted} | set(wanted))
    reached: Dict[float, Tuple[int, float, float]] = {0.0: (0, 0.0, rss_mib())}
    elapsed, segments = 0.0, []
    lf.reset()
    for start in range(0, wav.size, chunk):
        end = min(start + chunk, wav.size)
        tic = time.perf_counter()
        segments += lf(wav[start:end], is_final=end == wav.size)
        elapsed += time.perf_counter() - tic
        while points and end >= min(points[0] * 60 * FS, wav.size):
            reached[points.pop(0)] = (end, elapsed, rss_mib())
    figures = {}
    for m in wanted:
        (a, t_a, _), (b, t_b, rss) = reached[max(0.0, m - 1)], reached[m]
        figures[m] = ((t_b - t_a) / ((b - a) / FS), rss)
    return segments, figures


def utterances_in_one_segment(segments: List[Segment], placed: List[Tuple[str, int]],
                              spans: Dict[str, Tuple[float, float]]) -> Tuple[int, int]:
    """(utterances whose speech lies inside one segment, utterances with a span)."""
    bounds = [(s.start, s.end) for s in segments]
    inside = counted = 0
    for key, start in placed:
        if key not in spans:
            continue
        counted += 1
        a, b = start / FS + spans[key][0], start / FS + spans[key][1]
        inside += any(s <= a and b <= e for s, e in bounds)
    return inside, counted


def cer(hyp: str, ref: str) -> float:
    """Character error rate in % (spaces ignored)."""
    ref = ref.replace(" ", "")
    return 100.0 * editdistance.eval(hyp.replace(" ", ""), ref) / max(1, len(ref))


def recording_cer(segments: List[Segment], wav: np.ndarray, placed: List[Tuple[str, int]],
                  pause: float, texts: Dict[str, str], s2t: Speech2TextStreaming,
                  second: Speech2Text, head: str, margin: float) -> None:
    """Print the CER of the recording's segments (streaming text, and ``second``'s
    re-decode of each segment's speech, ``margin`` s around its tokens, as the long-form
    recognizer's second pass) and of its utterances decoded one by one (streaming,
    ``second``), as they are and with ``pause`` s of the recording's faint noise before and
    after each. Scored: the utterances before the last one placed (the recording may end
    inside it) against the segments that start before it."""
    whole = placed[:-1]
    if not whole:
        raise SystemExit("the recording holds no whole utterance: make it longer")
    missing = sorted({key for key, _ in whole} - set(texts))
    if missing:
        raise SystemExit(f"--text has no transcript of {missing[:3]}")
    ref = "".join(texts[key] for key, _ in whole)
    gap = int(pause * FS)  # utterance_recording's pause after each utterance
    alone = [wav[start:following - gap] for (_, start), (_, following) in zip(whole, placed[1:])]
    rng = np.random.default_rng(1)
    padded = [np.concatenate([0.001 * rng.standard_normal(gap), x, 0.001 * rng.standard_normal(gap)])
              .astype(np.float32) for x in alone]
    scored = [seg for seg in segments if seg.start * FS < placed[-1][1]]
    rows = [(f"long-form: the {len(scored)} segments that start before it (second pass: "
             f"{margin:g} s around the tokens)",
             [seg.text for seg in scored],
             [second([FinishedSegment(seg, wav[round(seg.start * FS):round(seg.end * FS)])
                      .speech(FS, margin)])[0][0].text for seg in scored])]
    for title, audio in (("each utterance alone", alone),
                         (f"each alone, {pause:g} s of that noise before and after", padded)):
        streaming = []
        for x in audio:
            s2t.reset()
            streaming.append(s2t(x, is_final=True)[0].text)
        rows.append((title, streaming, [second([x])[0][0].text for x in audio]))
    print(f"CER (%) of the {len(whole)} utterances before the last one placed, "
          f"{len(ref)} characters:")
    print(f"| decoding | streaming | {head} |")
    print("|---|---|---|")
    for title, streaming, full in rows:
        print(f"| {title} | {cer(''.join(streaming), ref):.1f} | {cer(''.join(full), ref):.1f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--chunk_ms", type=float, default=160.0)
    p.add_argument("--beam", type=int, default=10)
    p.add_argument("--max_segment", type=float, default=EndpointRules.max_segment)
    p.add_argument("--trailing_silence_after_token", type=float,
                   default=EndpointRules.trailing_silence_after_token)
    p.add_argument("--trailing_silence_no_token", type=float,
                   default=EndpointRules.trailing_silence_no_token)
    p.add_argument("--blank_bias", type=float, default=0.0,
                   help="added to the random model's blank logit (fewer tokens, cheaper search)")
    p.add_argument("--asr_train_config", default=None)
    p.add_argument("--asr_model_file", default=None)
    p.add_argument("--wav_scp", default=None, help="utterances for a trained model")
    p.add_argument("--speech_segments", default=None, help="<utt> <start_s> <end_s> per line")
    p.add_argument("--pause", type=float, default=1.5, help="silence between utterances (s)")
    p.add_argument("--text", default=None,
                   help="transcripts of --wav_scp's utterances (Kaldi text): print CERs")
    p.add_argument("--two_pass_head", default="attention",
                   help="the full-context head of the CERs' second column")
    add_two_pass_margin_argument(p)
    p.add_argument("--reference", action="store_true",
                   help="also decode without endpointing, as one stream")
    a = p.parse_args()
    if a.text and not (a.asr_train_config and a.wav_scp):
        p.error("--text needs a trained model (--asr_train_config) and --wav_scp")
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    placed: Optional[List[Tuple[str, int]]] = None
    with tempfile.TemporaryDirectory() as tmp:
        if a.asr_train_config:
            if not a.wav_scp:
                p.error("a trained model needs --wav_scp")
            s2t = Speech2TextStreaming(a.asr_train_config, a.asr_model_file, beam_size=a.beam)
            wav, placed = utterance_recording(a.wav_scp, a.minutes * 60, a.pause, rng)
            name = f"trained model {a.asr_train_config}"
        else:
            s2t = paper_streaming(a.beam, Path(tmp), blank_bias=a.blank_bias)
            wav = noise_bursts(a.minutes * 60, rng)
            name = "paper-size joint_sp_ed, random weights"
        rules = EndpointRules(a.trailing_silence_after_token, a.trailing_silence_no_token,
                              a.max_segment)
        lf = LongFormRecognizer(s2t, rules)
        chunk = int(a.chunk_ms * FS / 1000)
        print(f"{name}; beam {a.beam}; {a.minutes:g} min in {a.chunk_ms:g}-ms chunks; "
              f"RSS before decoding {rss_mib():.0f} MiB; load average {os.getloadavg()[0]:.2f}")
        segments, figures = decode(lf, wav, chunk, a.minutes)
        reference = decode(WithoutEndpoints(s2t), wav, chunk, a.minutes)[1] if a.reference else {}
    print(f"load average after decoding {os.getloadavg()[0]:.2f}")
    spoken = [s for s in segments if s.tokens]
    ended = {r: sum(s.endpoint == r for s in segments)
             for r in sorted({s.endpoint for s in segments})}
    print(f"segments: {len(segments)} ({len(spoken)} with tokens); ended by {ended}; "
          f"longest {max(s.end - s.start for s in segments):.2f} s")
    if placed is not None:
        print(f"utterances in the recording: {len(placed)}")
        if a.speech_segments:
            inside, counted = utterances_in_one_segment(
                segments, placed, read_speech_segments(a.speech_segments))
            print(f"utterances whose speech lies inside one segment: {inside} / {counted}")
    for title, table in (("long-form", figures), ("reference, no endpointing", reference)):
        if table:
            print(f"{title}:\n| minute | processing s per audio s (the minute before) | RSS MiB |")
            print("|---|---|---|")
            for minute, (per_second, rss) in table.items():
                print(f"| {minute:g} | {per_second:.4f} | {rss:.0f} |")
    first, last = figures[min(figures)], figures[max(figures)]
    if reference:
        ref_first, ref_last = reference[min(reference)], reference[max(reference)]
        print(f"reference: time per audio second, minute {max(figures):g} / minute "
              f"{min(figures):g}: {ref_last[0] / ref_first[0]:.3f}")
        print(f"time per audio second at minute {max(figures):g}, long-form / reference: "
              f"{last[0] / ref_last[0]:.3f}")
    print(f"time per audio second, minute {max(figures):g} / minute {min(figures):g}: "
          f"{last[0] / first[0]:.3f}")
    print(f"RSS growth, minute {min(figures):g} -> {max(figures):g}: {last[1] - first[1]:+.1f} MiB")
    if a.text:
        second = shared_offline_head(s2t.model, a.asr_train_config, a.two_pass_head,
                                     beam_size=a.beam)
        recording_cer(segments, wav, placed, a.pause, read_kaldi_map(a.text), s2t, second,
                      a.two_pass_head, a.two_pass_margin)


if __name__ == "__main__":
    main()
