"""Tune the joint-rescoring weights on a development set (never on a test set).

Usage:
    python -m espnet2_dualmode.bin.dualmode_asr_tune_joint \
        --asr_train_config exp/asr/config.yaml --asr_model_file exp/asr/valid.loss.ave.pth \
        --data_path_and_name_and_type dump/raw/dev/wav.scp,speech,sound \
        --text dump/raw/dev/text --config conf/decode_asr.yaml \
        --joint_nbest_head rnnt+attention --output_dir exp/asr/decode/joint_tuning

Decodes the development set once (the pooled n-best lists of ``--joint_nbest_head``, every
candidate scored by every head of ``--heads``), then picks the weights of
:func:`espnet2_dualmode.inference.joint_tuning.tune_weights` with the fewest token
errors. Writes ``<output_dir>/joint_decode.yaml`` (the ``--config`` options plus
``joint_nbest_head`` and ``joint_weights``: the joint head's decoding config for the test
sets) and ``<output_dir>/tuning.md`` (the dev error rate of every weight vector tried).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import List, Optional

import torch
import yaml
from espnet2.fileio.read_text import read_2columns_text

from espnet2_dualmode.inference.cli import (common_parser, device_of, geometry_of, min_samples,
                                           parse)
from espnet2_dualmode.inference.decode_list import DecodeList, Failures
from espnet2_dualmode.inference.joint_tuning import (GRID, DevCandidates, candidate_errors,
                                                     tune_weights)
from espnet2_dualmode.inference.offline import Speech2Text

SCORED_HEADS = ("rnnt", "ctc", "attention", "mlm")


def get_parser():
    p = common_parser(__doc__.splitlines()[0])
    p.add_argument("--text", required=True, help="reference transcripts (Kaldi text) of the set")
    p.add_argument("--ctc_weight", type=float, default=0.3, help="CTC weight of attention search")
    p.add_argument("--joint_nbest_head", default="rnnt+attention",
                   help="head(s) whose n-best lists are pooled: rnnt, ctc, attention, joined by +")
    p.add_argument("--heads", nargs="+", default=list(SCORED_HEADS), choices=SCORED_HEADS,
                   help="heads whose weights are tuned")
    p.add_argument("--grid", nargs="+", type=float, default=list(GRID),
                   help="values each weight takes")
    # decoding-config keys of the other heads, accepted so that one --config serves all
    p.add_argument("--maskctc_n_iterations", type=int, default=10)
    p.add_argument("--maskctc_threshold_probability", type=float, default=0.99)
    return p


def main(cmd: Optional[List[str]] = None) -> None:
    args = parse(get_parser(), cmd)
    s2t = Speech2Text(
        args.asr_train_config, args.asr_model_file, decode_head="joint",
        beam_size=args.beam_size, max_sym_per_frame=args.max_sym_per_frame,
        ctc_weight=args.ctc_weight, joint_nbest_head=args.joint_nbest_head,
        joint_weights={h: 1.0 for h in args.heads}, device=device_of(args), **geometry_of(args))
    refs = read_2columns_text(args.text)
    data = DecodeList.from_triple(args.data_path_and_name_and_type, args.key_file)
    missing = [k for k in data.keys if k not in refs]
    if missing:
        raise ValueError(f"{args.text}: no reference for {len(missing)} utterance(s), e.g. "
                         f"{missing[:3]}")
    failures, utts = Failures(), []
    with torch.no_grad():
        for keys, batch in data.batches(1, s2t.sample_rate, min_samples(s2t.train_args, data),
                                        failures):
            enc = s2t.model.encode_features(*s2t.features(batch))
            (cands, scores), = s2t.joint_candidates(enc, args.heads)
            utts.append(DevCandidates(s2t.text.ids(refs[keys[0]]), cands,
                                      {h: v.numpy() for h, v in scores.items()}))
    args.output_dir.mkdir(parents=True, exist_ok=True)
    failures.write(args.output_dir, len(data.keys))
    best, tried = tune_weights(utts, args.heads, args.grid)
    oracle = sum(min(candidate_errors(u)) for u in utts) / max(1, sum(len(u.ref) for u in utts))
    lines = [f"Joint weights tuned on {args.data_path_and_name_and_type} ({len(utts)} "
             f"utterances, n-best of {args.joint_nbest_head}; oracle error rate of the pooled "
             f"candidates {100 * oracle:.2f} %)", "",
             "|" + "|".join(args.heads) + "|dev error rate (%)|",
             "|" + "---|" * (len(args.heads) + 1)]
    lines += ["|" + "|".join(f"{w[h]:g}" for h in args.heads) + f"|{100 * err:.2f}|"
              for w, err in sorted(tried, key=lambda t: t[1])]
    (args.output_dir / "tuning.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = {}
    if args.config:
        with open(args.config, encoding="utf-8") as f:
            config = yaml.safe_load(f) or {}
    config.update(joint_nbest_head=args.joint_nbest_head, joint_weights=best)
    (args.output_dir / "joint_decode.yaml").write_text(
        yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    logging.info("best joint weights %s: dev error rate %.2f %% (written to %s)", best,
                 100 * min(err for _, err in tried), args.output_dir / "joint_decode.yaml")


if __name__ == "__main__":
    main(sys.argv[1:])
