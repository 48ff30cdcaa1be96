"""Loading a trained model and turning token ids back into text."""

from __future__ import annotations

import argparse
import itertools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import humanfriendly
import torch
import yaml
from espnet2.text.build_tokenizer import build_tokenizer
from espnet2.text.token_id_converter import TokenIDConverter

from espnet2_dualmode.decoding.hypothesis import Hypothesis
from espnet2_dualmode.model import DualModeASRModel
from espnet2_dualmode.tasks.dualmode_asr import DualModeASRTask


@dataclass
class Result:
    """One recognition hypothesis, ready to be written in ESPnet's 1best_recog layout."""

    text: str
    tokens: List[str]
    token_ids: List[int]
    score: float
    timestamps: Optional[List[int]] = field(default=None)  # encoder frame of each token


def load_model(asr_train_config: str | Path, asr_model_file: Optional[str | Path],
               device: str = "cpu", block_size: Optional[int] = None,
               hop_size: Optional[int] = None, look_ahead: Optional[int] = None,
               ) -> Tuple[DualModeASRModel, argparse.Namespace]:
    """Build the model from its training config.yaml and load its weights strictly.

    ESPnet's ``build_model_from_file`` loads with ``strict=False``, so a checkpoint that
    does not fit the config would silently leave layers random; here it is an error.
    ``block_size/hop_size/look_ahead`` choose the streaming encoder's geometry (see
    :meth:`ContextualBlockConformerEncoder.select_geometry`; none: the training geometry);
    the full-context path, cascaded on the streaming encoder, follows it.
    """
    with open(asr_train_config, encoding="utf-8") as f:
        args = argparse.Namespace(**yaml.safe_load(f))
    model = DualModeASRTask.build_model(args)
    if asr_model_file is not None:
        state = torch.load(asr_model_file, map_location="cpu", weights_only=True)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise RuntimeError(f"{asr_model_file} does not fit {asr_train_config}: {e}") from e
    geometry = (block_size, hop_size, look_ahead)
    if model.stream_encoder is not None:
        chosen = model.stream_encoder.select_geometry(*geometry)
        logging.info(f"{asr_train_config}: streaming encoder at {chosen}")
    elif any(v is not None for v in geometry):
        raise ValueError(f"{asr_train_config}: block_size/hop_size/look_ahead need a streaming "
                         f"encoder, which this model does not have")
    return model.to(device).eval(), args


def module_device(module: torch.nn.Module) -> torch.device:
    """Device of a module's first parameter or buffer (CPU for a module without state)."""
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        return tensor.device
    return torch.device("cpu")


def sample_rate(train_args: argparse.Namespace) -> int:
    """The frontend's sample rate in Hz (ESPnet accepts 16000 or '16k')."""
    fs = (getattr(train_args, "frontend_conf", None) or {}).get("fs", 16000)
    return int(humanfriendly.parse_size(fs)) if isinstance(fs, str) else int(fs)


class TokenText:
    """Token ids -> tokens -> text with the training run's tokenizer (char or BPE)."""

    def __init__(self, train_args: argparse.Namespace):
        self.converter = TokenIDConverter(token_list=train_args.token_list)
        token_type = getattr(train_args, "token_type", "char")
        bpemodel = getattr(train_args, "bpemodel", None)
        self.tokenizer = build_tokenizer(token_type=token_type, bpemodel=bpemodel)

    def ids(self, text: str) -> List[int]:
        """Text -> token ids, as the training run's preprocessor tokenizes references."""
        return self.converter.tokens2ids(self.tokenizer.text2tokens(text))

    def result(self, token_ids: Sequence[int], score: float,
               timestamps: Optional[Sequence[int]] = None) -> Result:
        ids = [int(i) for i in token_ids]
        tokens = self.converter.ids2tokens(ids)
        return Result(self.tokenizer.tokens2text(tokens), tokens, ids, float(score),
                      None if timestamps is None else [int(t) for t in timestamps])

    def results(self, hyps: Sequence[Hypothesis]) -> List[Result]:
        """:meth:`result` of each search hypothesis (an n-best list)."""
        return [self.result(h.tokens, h.score, h.timestamps) for h in hyps]
