"""Full-context (or whole-utterance streaming-path) decoding of a data directory.

Usage:
    python -m espnet2_dualmode.bin.dualmode_asr_inference \
        --asr_train_config exp/asr/config.yaml --asr_model_file exp/asr/valid.loss.ave.pth \
        --data_path_and_name_and_type dump/raw/test/wav.scp,speech,sound \
        --output_dir exp/asr/decode_rnnt/test --decode_head rnnt --beam_size 10

Writes <output_dir>/1best_recog/{text,token,token_int,score} (ESPnet's layout) and
<output_dir>/failed (utterances that could not be decoded, with the reason).
"""

from __future__ import annotations

import json
import sys
from typing import List, Optional

from espnet2_dualmode.inference.cli import common_parser, decode_list, device_of, geometry_of, parse
from espnet2_dualmode.inference.offline import HEADS, Speech2Text


def get_parser():
    p = common_parser(__doc__.splitlines()[0])
    p.add_argument("--decode_head", default="rnnt", choices=HEADS)
    p.add_argument("--ctc_weight", type=float, default=0.3, help="CTC weight of attention search")
    p.add_argument("--maskctc_n_iterations", type=int, default=10)
    p.add_argument("--maskctc_threshold_probability", type=float, default=0.99)
    p.add_argument("--joint_nbest_head", default="rnnt",
                   help="head(s) whose n-best joint rescores: rnnt, ctc, attention, joined by +")
    p.add_argument("--joint_weights", type=json.loads, default=None,
                   help='JSON weights of the joint rescoring, e.g. {"rnnt": 1, "ctc": 0.3, '
                        '"attention": 0.3, "mlm": 0}')
    return p


def main(cmd: Optional[List[str]] = None) -> None:
    args = parse(get_parser(), cmd)
    s2t = Speech2Text(
        args.asr_train_config, args.asr_model_file, decode_head=args.decode_head,
        beam_size=args.beam_size, nbest=args.nbest, max_sym_per_frame=args.max_sym_per_frame,
        ctc_weight=args.ctc_weight, maskctc_n_iterations=args.maskctc_n_iterations,
        maskctc_threshold_probability=args.maskctc_threshold_probability,
        joint_nbest_head=args.joint_nbest_head, joint_weights=args.joint_weights,
        device=device_of(args), **geometry_of(args))
    decode_list(args, s2t, s2t.train_args, s2t.sample_rate)


if __name__ == "__main__":
    main(sys.argv[1:])
