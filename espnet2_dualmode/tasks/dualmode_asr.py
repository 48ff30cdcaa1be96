"""ESPnet2 task for the dual-mode model: ``--stream_encoder``, ``--full_encoder`` and one
``--X``/``--X_conf`` pair per head, on top of everything ESPnet's ASR task offers
(frontend, specaug, normalize, preprocessing, token lists, Trainer, iterators).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import logging
from collections import Counter
from typing import Collection, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch
from espnet2.asr.ctc import CTC
from espnet2.asr.decoder.abs_decoder import AbsDecoder
from espnet2.asr.decoder.mlm_decoder import MLMDecoder
from espnet2.asr.decoder.transducer_decoder import TransducerDecoder
from espnet2.asr.decoder.transformer_decoder import TransformerDecoder
from espnet2.asr.encoder.abs_encoder import AbsEncoder
from espnet2.asr.frontend.default import DefaultFrontend
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
from espnet2.tasks import abs_task
from espnet2.train.collate_fn import CommonCollateFn
from espnet2.train.dataset import ESPnetDataset
from espnet2.train.distributed_utils import resolve_distributed_mode
from espnet2.train.iterable_dataset import DATA_TYPES as ITERABLE_TYPES
from espnet2.train.iterable_dataset import IterableESPnetDataset
from espnet2.utils.nested_dict_action import NestedDictAction
from espnet2.utils.types import str2bool, str_or_none

from espnet2_dualmode.encoders.contextual_block_conformer import (
    ContextualBlockConformerEncoder,
    min_input_frames,
)
from espnet2_dualmode.encoders.dualmode_conformer import DualModeConformerEncoder
from espnet2_dualmode.encoders.full_context_conformer import FullContextConformerEncoder
from espnet2_dualmode.model import DualModeASRModel
from espnet2_dualmode.model_shared import DualModeSharedASRModel
from espnet2_dualmode.train.preflight import DualModeTrainer

# shared: Dual-mode ASR with shared weights (stream_encoder: dualmode_conformer, full_encoder:
# null; the offline heads then sit on its full-context mode)
model_choices = ClassChoices("model", classes=dict(dualmode=DualModeASRModel,
                                                   shared=DualModeSharedASRModel),
                             type_check=AbsESPnetModel, default="dualmode")
stream_encoder_choices = ClassChoices(
    "stream_encoder", classes=dict(contextual_block_conformer=ContextualBlockConformerEncoder,
                                   dualmode_conformer=DualModeConformerEncoder),
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


def min_speech_samples(frontend_conf: Optional[dict]) -> int:
    """Fewest waveform samples from which ESPnet's default (STFT) frontend, configured by
    ``frontend_conf``, makes :func:`min_input_frames` feature frames: one encoder frame.

    ESPnet's ``Stft`` gives ``(L' - n_fft) // hop + 1`` frames, with ``L' = L + 2 (n_fft // 2)``
    when centred; a centred STFT's reflection padding also needs ``L > n_fft // 2``.
    """
    defaults = inspect.signature(DefaultFrontend).parameters
    conf = {key: (frontend_conf or {}).get(key, defaults[key].default)
            for key in ("n_fft", "hop_length", "center")}
    n_fft = conf["n_fft"]
    samples = (min_input_frames() - 1) * conf["hop_length"] + n_fft
    if conf["center"]:
        samples = max(samples - 2 * (n_fft // 2), n_fft // 2 + 1)
    return samples


class CheckedCollateFn(CommonCollateFn):
    """ESPnet's collate after checking every utterance by name.

    A token id outside the vocabulary or a feature dimension that does not match the
    model is an error naming the utterance. An utterance too short to give one encoder
    frame is skipped with a warning and counted, and so is an empty transcript unless
    ``keep_empty_text`` (ESPnet's stage 4 normally removes both; a corpus of silence and
    noise clips with empty transcripts keeps them to teach the model to emit nothing).

    With ``defer_errors`` (distributed training) such an error does not raise in the
    DataLoader, where the other ranks would wait for this one forever: the batch becomes
    ``{"batch_error": message}`` and the model's forward raises it on every rank.
    """

    def __init__(self, vocab_size: int, feat_dim: Optional[int], min_speech_samples: int,
                 defer_errors: bool = False, keep_empty_text: bool = False):
        super().__init__(float_pad_value=0.0, int_pad_value=-1)
        self.vocab_size = vocab_size
        self.feat_dim = feat_dim
        self.min_speech_samples = min_speech_samples
        self.defer_errors = defer_errors
        self.keep_empty_text = keep_empty_text
        self.skipped: Counter = Counter()

    def problem(self, uid: str, data: Dict[str, np.ndarray]) -> Optional[str]:
        """Reason to skip ``uid`` (None: keep it); raises ValueError for broken data."""
        speech = data.get("speech")
        if speech is not None:
            if speech.ndim == 2:
                if self.feat_dim is not None and speech.shape[1] != self.feat_dim:
                    raise ValueError(f"utterance {uid}: feature dimension {speech.shape[1]}, but the "
                                     f"model reads {self.feat_dim}-dimensional features")
                if speech.shape[0] < min_input_frames():
                    return (f"too short ({speech.shape[0]} frames; at least "
                            f"{min_input_frames()} give one encoder frame)")
            elif speech.shape[0] < self.min_speech_samples:
                return (f"too short ({speech.shape[0]} samples; at least "
                        f"{self.min_speech_samples} give one encoder frame)")
        text = data.get("text")
        if text is not None:
            if text.size == 0 and not self.keep_empty_text:
                return "empty transcript"
            bad = text[(text < 0) | (text >= self.vocab_size)]
            if bad.size:
                raise ValueError(f"utterance {uid}: token ids {bad.tolist()} outside the "
                                 f"vocabulary of {self.vocab_size} tokens (wrong token_list?)")
        return None

    def __call__(self, data: Collection[Tuple[str, Dict[str, np.ndarray]]]
                 ) -> Tuple[List[str], Dict[str, Union[torch.Tensor, str]]]:
        try:
            kept = self.kept(data)
        except ValueError as e:
            if not self.defer_errors:
                raise
            return [uid for uid, _ in data], {"batch_error": str(e)}
        return super().__call__(kept)

    def kept(self, data: Collection[Tuple[str, Dict[str, np.ndarray]]]
             ) -> List[Tuple[str, Dict[str, np.ndarray]]]:
        """The utterances to keep; raises ValueError for broken data or an empty batch."""
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
        return kept


class TextTolerantIterableDataset(IterableESPnetDataset):
    """ESPnet's streaming dataset (stage 10's collect_stats) with ``text`` files read whole.

    Why not ESPnet's: its line reader rejects a text line without a space, i.e. an empty
    transcript (silence/noise clips, ``--keep_empty_text``). ESPnetDataset's reader, used
    for the non-streamed part, accepts it.
    """

    def __init__(self, path_name_type_list: Collection[Tuple[str, str, str]], **kwargs):
        whole = [t for t in path_name_type_list if t[2] == "text"]
        streamed = [t for t in path_name_type_list if t[2] != "text"]
        super().__init__(streamed or whole, **kwargs)
        if whole and streamed:
            self.debug_info.update({name: (path, kind) for path, name, kind in whole})
            earlier = [t for t in streamed if t[2] not in ITERABLE_TYPES]
            self.non_iterable_dataset = ESPnetDataset(
                path_name_type_list=earlier + whole, preprocess=self.preprocess,
                float_dtype=self.float_dtype, int_dtype=self.int_dtype)


@contextlib.contextmanager
def _text_tolerant_streaming() -> Iterator[None]:
    """Make ESPnet's ``build_streaming_iterator`` build :class:`TextTolerantIterableDataset`
    (it names its dataset class as a module global)."""
    original = abs_task.IterableESPnetDataset
    abs_task.IterableESPnetDataset = TextTolerantIterableDataset
    try:
        yield
    finally:
        abs_task.IterableESPnetDataset = original


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
    # ESPnet's Trainer with --preflight_batches (a memory check before the first epoch)
    trainer = DualModeTrainer

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
        group.add_argument("--keep_empty_text", type=str2bool, default=False,
                           help="train on utterances with an empty transcript (silence or "
                                "noise clips) instead of skipping them")

    @classmethod
    def check_required_command_args(cls, args: argparse.Namespace) -> None:
        super().check_required_command_args(args)
        check_distributed_options(args)

    @classmethod
    def build_streaming_iterator(cls, *args, **kwargs):
        """ESPnet's, reading text files so that an empty transcript is accepted."""
        with _text_tolerant_streaming():
            return super().build_streaming_iterator(*args, **kwargs)

    @classmethod
    def build_collate_fn(cls, args: argparse.Namespace, train: bool) -> CheckedCollateFn:
        token_list = _token_list(args)
        feat_dim = args.input_size
        # Single process: errors raise in the DataLoader as usual. Distributed training:
        # they travel with the batch to the forward (collect_stats runs no forward).
        defer = (bool(getattr(args, "distributed", False))
                 and not getattr(args, "collect_stats", False))
        return CheckedCollateFn(len(token_list), feat_dim, min_speech_samples(args.frontend_conf),
                                defer_errors=defer,
                                keep_empty_text=getattr(args, "keep_empty_text", False))

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
        # the offline heads read the full-context encoder, or the shared encoder's full mode
        full_side = full_encoder if full_encoder is not None else (
            stream_encoder if isinstance(stream_encoder, DualModeConformerEncoder) else None)
        if full_side is not None:
            enc_size = full_side.output_size()
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


def check_distributed_options(args: argparse.Namespace) -> None:
    """Reject at start-up what would otherwise fail only at the first DDP step.

    ``model_conf.ctc_warmup_iters > 0``: during the warm-up the RNN-T, attention and
    Mask-CTC heads get no gradient, which DDP accepts only with ``unused_parameters: true``.
    Rejected rather than set silently: that option makes DDP search the graph at every step
    of the run, so the config should say it (and config.yaml then records what ran).
    """
    probe = argparse.Namespace(**vars(args))  # resolve_distributed_mode edits its argument
    resolve_distributed_mode(probe)
    warmup = (args.model_conf or {}).get("ctc_warmup_iters", 0)
    if probe.distributed and not args.collect_stats and warmup > 0 and not args.unused_parameters:
        raise ValueError(f"model_conf.ctc_warmup_iters={warmup} with several processes needs "
                         "unused_parameters: true (the decoders get no gradient during the "
                         "CTC warm-up, which DDP rejects at the first step)")


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
