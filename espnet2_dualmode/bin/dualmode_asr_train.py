"""Train a dual-mode ASR model with ESPnet's Trainer.

Usage (single process; wrap with ``python -m espnet2.bin.launch ... --`` for several):
    python -m espnet2_dualmode.bin.dualmode_asr_train --config conf/debug/joint_sp_ed.yaml \
        --token_list tokens.txt --output_dir exp/run \
        --train_data_path_and_name_and_type dump/train/wav.scp,speech,sound \
        --train_data_path_and_name_and_type dump/train/text,text,text \
        --train_shape_file exp/stats/train/speech_shape --valid_... --resume true
"""

from typing import List, Optional

import torch

from espnet2_dualmode.tasks.dualmode_asr import DualModeASRTask


def get_parser():
    return DualModeASRTask.get_parser()


def main(cmd: Optional[List[str]] = None) -> None:
    DualModeASRTask.main(cmd=cmd)
    close_process_group()


def close_process_group() -> None:
    """Wait for every rank, then tear the process group down before the interpreter exits.

    ESPnet's Trainer leaves the group open and rank 0 keeps working (model averaging) after
    the others return; a gloo group destroyed during interpreter shutdown can abort a rank
    with "terminate called without an active exception", failing a finished run.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
