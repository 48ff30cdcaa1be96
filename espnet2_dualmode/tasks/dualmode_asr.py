"""ESPnet2 task for the dual-mode model: ``--stream_encoder``, ``--full_encoder`` and one
``--X``/``--X_conf`` pair per head, on top of everything ESPnet's ASR task offers
(frontend, specaug, normalize, preprocessing, token lists, Trainer, iterators).
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from typing import Collection, Dict, List, Optional, Tuple

import numpy as np
import torch
from espnet2.asr.ctc import CTC
from espnet2.asr.decoder.abs_decoder import AbsDecoder
from espnet2.asr.decoder.mlm_decoder import MLMDecoder
from espnet2.asr.decoder.transducer_decoder import TransducerDecoder
from espnet2.asr.decoder.transformer_decoder import TransformerDecoder
from espnet2.asr.encoder.abs_encoder import AbsEncoder
from espnet2.asr_transducer.joint_network import JointNetwork
from espnet2.tasks.asr import (
    ASRTask,
    frontend_choices,
    normalize_choices,
    preprocessor_choices,
    specaug_choices,
)
from espnet2.torch_utils.initialize import initialize
from espnet2.train.abs_espnet_model import AbsESPnetModel
from espnet2.train.class_choices import ClassChoices
from espnet2.train.collate_fn import CommonCollateFn
from espnet2.utils.nested_dict_action import NestedDictAction
from espnet2.utils.types import str_or_none

from espnet2_dualmode.encoders.contextual_block_conformer import ContextualBlockConformerEncoder
from espnet2_dualmode.encoders.full_context_conformer import FullContextConformerEncoder
from espnet2_dualmode.model import DualModeASRModel

model_choices = ClassChoices("model", classes=dict(dualmode=DualModeASRModel),
                             type_check=AbsESPnetModel, default="dualmode")
stream_encoder_choices = ClassChoices(
    "stream_encoder", classes=dict(contextual_block_conformer=ContextualBlockConformerEncoder),
    type_check=AbsEncoder, default="contextual_block_conformer", optional=True)
full_encoder_choices = ClassChoices(
    "full_encoder", classes=dict(conformer=FullContextConformerEncoder),
    type_check=AbsEncoder, default="conformer", optional=True)
stream_decoder_choices = ClassChoices(
    "stream_decoder", classes=dict(transducer=TransducerDecoder),
    type_check=AbsDecoder, default="transducer", optional=True)
rnnt_decoder_choices = ClassChoices(
    "rnnt_decoder", classes=dict(transducer=TransducerDecoder),
    type_check=AbsDecoder, default="transducer", optional=True)
att_decoder_choices = ClassChoices(
    "att_decoder", classes=dict(transformer=TransformerDecoder),
    type_check=AbsDecoder, default="transformer", optional=True)
mlm_decoder_choices = ClassChoices(
    "mlm_decoder", classes=dict(mlm=MLMDecoder),
    type_check=AbsDecoder, default="mlm", optional=True)

SUBSAMPLING_MIN_FRAMES = 7  # two 3x3 stride-2 convolutions need 7 frames for one output


class CheckedCollateFn(CommonCollateFn):
    """ESPnet's collate after checking every utterance by name.

    A token id outside the vocabulary or a feature dimension that does not match the
    model is an error naming the utterance. An empty transcript or an utterance too
    short to give one encoder frame is skipped with a warning and counted (ESPnet's
    stage 4 normally removes both).
    """

    def __init__(self, vocab_size: int, feat_dim: Optional[int], min_speech_samples: int):
        super().__init__(float_pad_value=0.0, int_pad_value=-1)
        self.vocab_size = vocab_size
        self.feat_dim = feat_dim
        self.min_speech_samples = min_speech_samples
        self.skipped: Counter = Counter()

    def problem(self, uid: str, data: Dict[str, np.ndarray]) -> Optional[str]:
        """Reason to skip ``uid`` (None: keep it); raises ValueError for broken data."""
        speech = data.get("speech")
        if speech is not None:
            if speech.ndim == 2:
                if self.feat_dim is not None and speech.shape[1] != self.feat_dim:
                    raise ValueError(f"utterance {uid}: feature dimension {speech.shape[1]}, but the "
                                     f"model reads {self.feat_dim}-dimensional features")
                if speech.shape[0] < SUBSAMPLING_MIN_FRAMES:
                    return (f"too short ({speech.shape[0]} frames; at least "
                            f"{SUBSAMPLING_MIN_FRAMES} give one encoder frame)")
            elif speech.shape[0] < self.min_speech_samples:
                return (f"too short ({speech.shape[0]} samples; at least "
                        f"{self.min_speech_samples} give one encoder frame)")
        text = data.get("text")
        if text is not None:
            if text.size == 0:
                return "empty transcript"
            bad = text[(text < 0) | (text >= self.vocab_size)]
            if bad.size:
                raise ValueError(f"utterance {uid}: token ids {bad.tolist()} outside the "
                                 f"vocabulary of {self.vocab_size} tokens (wrong token_list?)")
        return None

    def __call__(self, data: Collection[Tuple[str, Dict[str, np.ndarray]]]
                 ) -> Tuple[List[str], Dict[str, torch.Tensor]]:
        kept = []
        for uid, d in data:
            reason = self.problem(uid, d)
            if reason is None:
                kept.append((uid, d))
                continue
            self.skipped[reason.split(" (")[0]] += 1
            logging.warning(f"skipping utterance {uid}: {reason}; skipped so far: {dict(self.skipped)}")
        if not kept:
            raise ValueError(f"every utterance of the batch {[u for u, _ in data]} was skipped "
                             f"({dict(self.skipped)}); filter the data (stage 4) first")
        return super().__call__(kept)


class DualModeASRTask(ASRTask):
    """ASRTask with the dual-mode model's components."""

    class_choices_list = [
        frontend_choices,
        specaug_choices,
        normalize_choices,
        model_choices,
        stream_encoder_choices,
        full_encoder_choices,
        stream_decoder_choices,
        rnnt_decoder_choices,
        att_decoder_choices,
        mlm_decoder_choices,
        preprocessor_choices,
    ]

    @classmethod
    def add_task_arguments(cls, parser: argparse.ArgumentParser) -> None:
        super().add_task_arguments(parser)
        group = parser.add_argument_group(description="Dual-mode model")
        group.add_argument("--ctc", type=str_or_none, default="ctc", choices=["ctc", None],
                           help="offline CTC head (none: absent); its options are --ctc_conf")
        group.add_argument("--stream_ctc", type=str_or_none, default=None, choices=["ctc", None],
                           help="auxiliary CTC head on the streaming encoder (not in the paper; "
                                "weighted by model_conf.stream_ctc_weight); options --ctc_conf")
        group.add_argument("--stream_joint_net_conf", action=NestedDictAction, default=None,
                           help="JointNetwork options of the streaming RNN-T "
                                "(--joint_net_conf is the offline one)")

    @classmethod
    def build_collate_fn(cls, args: argparse.Namespace, train: bool) -> CheckedCollateFn:
        token_list = _token_list(args)
        hop = (args.frontend_conf or {}).get("hop_length", 128) if args.input_size is None else 1
        feat_dim = args.input_size
        return CheckedCollateFn(len(token_list), feat_dim, (SUBSAMPLING_MIN_FRAMES - 1) * hop)

    @classmethod
    def build_model(cls, args: argparse.Namespace) -> DualModeASRModel:
        token_list = _token_list(args)
        args.token_list = token_list  # portable config, as ESPnet does
        vocab_size = len(token_list)
        logging.info(f"Vocabulary size: {vocab_size}")

        # 1. Features
        if args.input_size is None:
            frontend = frontend_choices.get_class(args.frontend)(**args.frontend_conf)
            input_size = frontend.output_size()
        else:
            args.frontend, args.frontend_conf, frontend = None, {}, None
            input_size = args.input_size
        specaug = (specaug_choices.get_class(args.specaug)(**args.specaug_conf)
                   if args.specaug is not None else None)
        normalize = (normalize_choices.get_class(args.normalize)(**args.normalize_conf)
                     if args.normalize is not None else None)

        # 2. Encoders (cascade: the full-context encoder reads the streaming output)
        stream_encoder = _build(stream_encoder_choices, args.stream_encoder,
                                args.stream_encoder_conf, input_size=input_size)
        full_input = stream_encoder.output_size() if stream_encoder is not None else input_size
        full_encoder = _build(full_encoder_choices, args.full_encoder, args.full_encoder_conf,
                              input_size=full_input)

        # 3. Heads
        stream_decoder = stream_joint = None
        if stream_encoder is not None and args.stream_decoder is not None:
            stream_decoder = _build(stream_decoder_choices, args.stream_decoder,
                                    args.stream_decoder_conf, vocab_size=vocab_size)
            stream_joint = JointNetwork(vocab_size, stream_encoder.output_size(),
                                        stream_decoder.dunits, **(args.stream_joint_net_conf or {}))
        stream_ctc = None  # configs written before --stream_ctc existed lack the key
        if stream_encoder is not None and getattr(args, "stream_ctc", None) is not None:
            stream_ctc = CTC(odim=vocab_size, encoder_output_size=stream_encoder.output_size(),
                             **args.ctc_conf)
        rnnt_decoder = rnnt_joint = ctc = att_decoder = mlm_decoder = None
        if full_encoder is not None:
            enc_size = full_encoder.output_size()
            if args.rnnt_decoder is not None:
                rnnt_decoder = _build(rnnt_decoder_choices, args.rnnt_decoder,
                                      args.rnnt_decoder_conf, vocab_size=vocab_size)
                rnnt_joint = JointNetwork(vocab_size, enc_size, rnnt_decoder.dunits,
                                          **(args.joint_net_conf or {}))
            if args.ctc is not None:
                ctc = CTC(odim=vocab_size, encoder_output_size=enc_size, **args.ctc_conf)
            att_decoder = _build(att_decoder_choices, args.att_decoder, args.att_decoder_conf,
                                 vocab_size=vocab_size, encoder_output_size=enc_size)
            mlm_decoder = _build(mlm_decoder_choices, args.mlm_decoder, args.mlm_decoder_conf,
                                 vocab_size=vocab_size, encoder_output_size=enc_size)

        # 4. Model
        model = model_choices.get_class(args.model)(
            vocab_size=vocab_size, token_list=token_list, frontend=frontend, specaug=specaug,
            normalize=normalize, stream_encoder=stream_encoder, full_encoder=full_encoder,
            stream_decoder=stream_decoder, stream_joint=stream_joint, rnnt_decoder=rnnt_decoder,
            rnnt_joint=rnnt_joint, ctc=ctc, att_decoder=att_decoder, mlm_decoder=mlm_decoder,
            stream_ctc=stream_ctc, **args.model_conf,
        )
        if args.init is not None:
            initialize(model, args.init)
        return model


def _token_list(args: argparse.Namespace) -> List[str]:
    if isinstance(args.token_list, str):
        with open(args.token_list, encoding="utf-8") as f:
            return [line.rstrip() for line in f]
    if isinstance(args.token_list, (tuple, list)):
        return list(args.token_list)
    raise RuntimeError("token_list must be a file path or a list")


def _build(choices: ClassChoices, name: Optional[str], conf: Optional[dict], **kwargs):
    """Instantiate ``choices[name]`` or return None for a 'none' choice."""
    if name is None:
        return None
    return choices.get_class(name)(**kwargs, **(conf or {}))
