"""Python stage helpers of the shared recipe script ``egs2/TEMPLATE/asr1/dualmode_asr.sh``.

Stage 2 :mod:`.speed_perturb`, stage 3 :mod:`.format`, stage 4 :mod:`.filter`, stage 5
:mod:`.bpe`, stages 10/12 :mod:`.jobs` (split key lists, merge decoding outputs), stage
13 :mod:`.results`. Kaldi data directories are read by :mod:`.datadir` and written by
:func:`espnet2_dualmode.datasets.kaldi_dir.write_data_dir`; :mod:`.audio` and
:mod:`.recordings` hold the audio I/O and the per-recording worker pool of stages 2-3,
:mod:`.cli` the plumbing of the ``espnet2_dualmode.bin.recipe_*`` entry points.
"""
