"""Train the sentencepiece model of a BPE recipe (stage 5), as ESPnet's ``spm_train`` call.

ESPnet's asr.sh trains on the transcripts without utterance ids, with
``--input_sentence_size=100000000 --character_coverage=1.0`` and the non-linguistic
symbols as user-defined symbols; the token list is then written by
``espnet2.bin.tokenize_text --token_type bpe --write_vocabulary true``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import sentencepiece

from dualmode_recipe.kaldi_dir import read_kaldi_map


def train_bpe(text: str | os.PathLike, model_prefix: str | os.PathLike, vocab_size: int,
              model_type: str = "unigram", character_coverage: float = 1.0,
              user_defined_symbols: Sequence[str] = ()) -> Path:
    """Train ``<model_prefix>.model`` on the transcripts of the Kaldi ``text`` file.

    Returns:
        The path of the ``.model`` file.

    Raises:
        ValueError: no non-empty transcript, or sentencepiece rejects the settings
            (e.g. a vocabulary larger than the text allows).
    """
    sentences = [t for t in read_kaldi_map(text).values() if t.strip()]
    if not sentences:
        raise ValueError(f"{text}: no non-empty transcript to train sentencepiece on")
    prefix = Path(model_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    train_txt = prefix.parent / "train.txt"
    train_txt.write_text("".join(s + "\n" for s in sentences), encoding="utf-8")
    options = dict(input=str(train_txt), model_prefix=str(prefix), vocab_size=vocab_size,
                   model_type=model_type, character_coverage=character_coverage,
                   input_sentence_size=100000000)
    if user_defined_symbols:
        options["user_defined_symbols"] = list(user_defined_symbols)
    try:
        sentencepiece.SentencePieceTrainer.train(**options)
    except RuntimeError as err:
        raise ValueError(f"sentencepiece training on {text} failed: {err}") from None
    model = prefix.with_name(prefix.name + ".model")
    logging.info("%s: %s model with %d pieces from %d transcripts", model, model_type,
                 vocab_size, len(sentences))
    return model
