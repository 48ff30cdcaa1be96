"""Train a dual-mode ASR model with ESPnet's Trainer.

Usage (single process; wrap with ``python -m espnet2.bin.launch ... --`` for several):
    python -m espnet2_dualmode.bin.dualmode_asr_train --config conf/debug/joint_sp_ed.yaml \
        --token_list tokens.txt --output_dir exp/run \
        --train_data_path_and_name_and_type dump/train/wav.scp,speech,sound \
        --train_data_path_and_name_and_type dump/train/text,text,text \
        --train_shape_file exp/stats/train/speech_shape --valid_... --resume true
"""

from typing import List, Optional

from espnet2_dualmode.tasks.dualmode_asr import DualModeASRTask


def get_parser():
    return DualModeASRTask.get_parser()


def main(cmd: Optional[List[str]] = None) -> None:
    DualModeASRTask.main(cmd=cmd)


if __name__ == "__main__":
    main()
