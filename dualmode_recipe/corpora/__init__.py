"""Corpus preparation into Kaldi data directories: CSJ (:mod:`.csj`), LibriSpeech
(:mod:`.librispeech`) and the synthetic Japanese demo corpus (:mod:`.demo_ja`, with its
sentence generator :mod:`.demo_ja_text`)."""
