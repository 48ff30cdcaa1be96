"""The recipe toolkit of espnet2-dualmode: everything the ``egs2/*/asr1`` recipes run
around the model plugin (:mod:`espnet2_dualmode`), which never imports it.

One entry point, ``python -m dualmode_recipe <command>`` (:mod:`.__main__`), serves the
shared stage script ``egs2/TEMPLATE/asr1/dualmode_asr.sh``:

- stage 1: corpus preparation, :mod:`.corpora` (CSJ, LibriSpeech, the synthetic demo);
- stage 2 :mod:`.speed_perturb`, stage 3 :mod:`.format`, stage 4 :mod:`.filter`, stage 5
  :mod:`.bpe`, over Kaldi data directories read and written by :mod:`.kaldi_dir`, with
  the audio I/O of :mod:`.audio` and the per-recording worker pool of :mod:`.recordings`;
- stages 10-12: :mod:`.config` (config values, override files merged onto a config) and
  :mod:`.jobs` (split key lists, merge decoding outputs);
- stage 13: :mod:`.scoring` (sclite-compatible CER/WER) and :mod:`.results`
  (RESULTS.md); across experiments, :mod:`.compare` (the paper's tables and Figure 2).
"""
