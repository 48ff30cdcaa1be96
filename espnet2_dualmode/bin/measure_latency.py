"""Streaming latency on one CPU thread: RTF, algorithmic latency, emission delay P50/P90.

Usage (one model, or several to make a table like the paper's Table 3):
    python -m espnet2_dualmode.bin.measure_latency \
        --asr_train_config exp/b40/config.yaml --asr_model_file exp/b40/valid.loss.ave.pth \
        [--asr_train_config exp/b20/config.yaml --asr_model_file exp/b20/valid.loss.ave.pth] \
        --data_path_and_name_and_type dump/raw/test/wav.scp,speech,sound \
        --output_dir exp/latency [--chunk_length 640] [--max_utts 100] [--ngpu 1] \
        [--block_size 20 [--hop_size 8 --look_ahead 8]]

The paper's figures are on one CPU thread (the default, --ngpu 0); --ngpu 1 runs the
model on a CUDA device (the host side still uses one thread). --block_size/--hop_size/
--look_ahead decode every model at that geometry (default: each one's training geometry);
the algorithmic latency and the emission delays follow it.

Writes <output_dir>/latency.json (one object per model: rtf, algorithmic_latency_ms,
emission_delay_p50_ms, emission_delay_p90_ms, ...) and latency.md (the table). See
espnet2_dualmode.inference.latency for the definitions.

--speech_segments FILE (lines ``<utt_id> <speech_start_s> <speech_end_s>``, e.g. the demo
corpus's data/<split>/speech_segments) adds the Dual-mode ASR paper's utterance-level
latency against that model-independent reference: latency_at50_ms / latency_at90_ms
(last-token emission minus end of speech), first_token_delay_p50_ms / _p90_ms (first-token
emission minus start of speech), and the counts latency_utterances, latency_no_segment,
latency_empty_hypothesis. The emission_delay_* keys keep their meaning: per-token delay
against a CTC forced alignment by the measured model's own full-context CTC head.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from espnet2_dualmode.inference.cli import (
    add_device_argument,
    add_geometry_arguments,
    device_of,
    geometry_of,
)
from espnet2_dualmode.inference.decode_list import DecodeList, Failures
from espnet2_dualmode.inference.latency import (
    SUBSAMPLING,
    SpeechSegmentLatency,
    has_reference_alignment,
    read_speech_segments,
    reference_end_times,
    timed_recognition,
)
from espnet2_dualmode.inference.streaming import Speech2TextStreaming
from espnet2_dualmode.tasks.dualmode_asr import min_speech_samples

logger = logging.getLogger(__name__)


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--asr_train_config", action="append", required=True)
    p.add_argument("--asr_model_file", action="append", required=True)
    p.add_argument("--data_path_and_name_and_type", required=True, help="wav.scp,speech,sound")
    p.add_argument("--output_dir", required=True, type=Path)
    p.add_argument("--chunk_length", type=int, default=640, help="samples per real-time chunk")
    p.add_argument("--beam_size", type=int, default=10)
    p.add_argument("--max_utts", type=int, default=0, help="0: every utterance")
    p.add_argument("--speech_segments", type=Path, default=None,
                   help="'<utt_id> <speech_start_s> <speech_end_s>' per line: adds "
                        "Latency@50/@90 and the first-token delay against these times")
    add_device_argument(p)
    add_geometry_arguments(p)
    p.add_argument("--log_level", default="INFO")
    return p


def measure_model(config: str, model_file: str, data: DecodeList, chunk: int, beam: int,
                  max_utts: int, device: str = "cpu",
                  geometry: Optional[Dict[str, Optional[int]]] = None,
                  segments: Optional[SpeechSegmentLatency] = None) -> Dict[str, float]:
    """Timing of one model over the list, at ``geometry`` (keyword arguments of
    :class:`Speech2TextStreaming`; None: the training geometry); delays of all tokens pooled.
    With ``segments`` (fresh for each model), its utterance-level latency is added."""
    s2t = Speech2TextStreaming(config, model_file, beam_size=beam, device=device, **(geometry or {}))
    enc = s2t.model.stream_encoder
    frame_ms = 1000.0 * SUBSAMPLING * s2t.features.hop / s2t.sample_rate
    failures = Failures()
    keys = data.keys[:max_utts] if max_utts else data.keys
    delays: List[float] = []
    audio = compute = 0.0
    n_min = min_speech_samples(s2t.train_args.frontend_conf)
    aligned = has_reference_alignment(s2t.model)
    if not aligned:  # e.g. the shared-weights Dual-mode model without a CTC head
        logger.warning(f"{config}: no full-context CTC head to align with: the per-token "
                       f"emission delay is not measured (NaN); RTF and, with "
                       f"--speech_segments, Latency@50/@90 are")
    for key in keys:
        try:
            wav = data.load(key, s2t.sample_rate, n_min)
            timing = timed_recognition(s2t, wav, chunk)
            ends = reference_end_times(s2t, wav, timing.token_ids) if aligned else []
            if segments is not None:
                segments.add(key, timing)
        except Exception as e:
            failures.add(key, str(e))
            continue
        audio += timing.duration
        compute += timing.compute
        delays += [1000.0 * (emit - end) for emit, end in zip(timing.emission_times, ends)]
    if not audio:
        raise RuntimeError(f"no utterance of {data.path} could be measured: {failures.items[:3]}")
    return {
        "model": model_file, "device": str(s2t.device),
        "block_size": enc.block_size, "hop_size": enc.hop_size, "look_ahead": enc.look_ahead,
        "block_ms": enc.block_size * frame_ms,
        "algorithmic_latency_ms": (enc.block_size + enc.look_ahead) * frame_ms,
        "rtf": compute / audio,
        "emission_delay_p50_ms": float(np.percentile(delays, 50)) if delays else float("nan"),
        "emission_delay_p90_ms": float(np.percentile(delays, 90)) if delays else float("nan"),
        "utterances": len(keys) - len(failures.items), "failed": len(failures.items),
        "tokens": len(delays),
        **(segments.summary() if segments is not None else {}),
    }


SEGMENT_COLUMNS = (("Latency@50 (ms)", "latency_at50_ms"), ("Latency@90 (ms)", "latency_at90_ms"),
                   ("first token P50 (ms)", "first_token_delay_p50_ms"),
                   ("first token P90 (ms)", "first_token_delay_p90_ms"))


def table(rows: List[Dict[str, float]]) -> str:
    """Markdown table; the emission delay columns are per token against the model's own CTC
    alignment, the Latency@/first-token columns (with --speech_segments) against the file."""
    extra = SEGMENT_COLUMNS if all(SEGMENT_COLUMNS[0][1] in r for r in rows) else ()
    lines = ["|block|block (ms)|algorithmic latency (ms)|RTF|emission delay P50 (ms)|P90 (ms)|"
             + "".join(f"{title}|" for title, _ in extra) + "utts|",
             "|---|---|---|---|---|---|" + "---|" * len(extra) + "---|"]
    for r in rows:
        lines.append(f"|{r['block_size']}|{r['block_ms']:.0f}|{r['algorithmic_latency_ms']:.0f}|"
                     f"{r['rtf']:.3f}|{r['emission_delay_p50_ms']:.0f}|"
                     f"{r['emission_delay_p90_ms']:.0f}|"
                     + "".join(f"{r[key]:.0f}|" for _, key in extra) + f"{r['utterances']}|")
    return "\n".join(lines)


def main(cmd: Optional[List[str]] = None) -> None:
    args = get_parser().parse_args(cmd)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s: %(message)s")
    if len(args.asr_train_config) != len(args.asr_model_file):
        raise SystemExit("give one --asr_model_file per --asr_train_config")
    device = device_of(args)
    torch.set_num_threads(1)  # the paper measures on one CPU thread
    data = DecodeList.from_triple(args.data_path_and_name_and_type)
    segments = (read_speech_segments(args.speech_segments)
                if args.speech_segments is not None else None)
    rows = [measure_model(c, m, data, args.chunk_length, args.beam_size, args.max_utts, device,
                          geometry_of(args),
                          None if segments is None
                          else SpeechSegmentLatency(segments, str(args.speech_segments)))
            for c, m in zip(args.asr_train_config, args.asr_model_file)]
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "latency.json").write_text(json.dumps(rows[0] if len(rows) == 1 else rows, indent=1))
    (args.output_dir / "latency.md").write_text(table(rows) + "\n")
    for r in rows:
        print(f"RTF {r['rtf']:.3f}  emission delay P50 {r['emission_delay_p50_ms']:.0f} ms  "
              f"P90 {r['emission_delay_p90_ms']:.0f} ms  (block {r['block_size']}, "
              f"algorithmic latency {r['algorithmic_latency_ms']:.0f} ms)")
    print(table(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
