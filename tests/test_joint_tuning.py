"""Joint weights tuned on dev: the grid, the error rate of a weight vector, the choice."""

from __future__ import annotations

import numpy as np
import pytest

from espnet2_dualmode.inference.joint_tuning import (DevCandidates, dev_error_rate, tune_weights,
                                                     weight_grid)


def test_grid_has_no_zero_vector_and_no_rescaled_duplicates():
    grid = weight_grid(["a", "b"], (0.0, 0.3, 1.0))
    assert {"a": 0.0, "b": 0.0} not in grid
    ratios = {round(w["a"] / max(w.values()), 6) for w in grid if w["b"] == max(w.values())}
    assert len(grid) == 5  # (0,.3)~(0,1), (.3,0)~(1,0), (.3,.3)~(1,1), (.3,1), (1,.3)
    assert ratios == {0.0, 0.3, 1.0}


def _utt(ref, cands, **scores):
    return DevCandidates(ref, cands, {k: np.array(v, dtype=float) for k, v in scores.items()})


def test_error_rate_and_choice_against_hand_counts():
    # utterance 1: head a prefers the wrong candidate, b the right one; utterance 2: the
    # opposite, but b's mistake costs 2 errors and a's only 1 on utterance 1.
    u1 = _utt([1, 2, 3], [[1, 2, 4], [1, 2, 3]], a=[-1.0, -2.0], b=[-3.0, -1.0])
    u2 = _utt([5, 6], [[5, 6], [7, 8]], a=[-1.0, -5.0], b=[-2.0, -1.5])
    assert dev_error_rate([u1, u2], {"a": 1.0, "b": 0.0}) == pytest.approx(1 / 5)
    assert dev_error_rate([u1, u2], {"a": 0.0, "b": 1.0}) == pytest.approx(2 / 5)
    # a + b: u1 totals (-4, -3) -> right; u2 totals (-3, -6.5) -> right
    assert dev_error_rate([u1, u2], {"a": 1.0, "b": 1.0}) == 0.0
    best, tried = tune_weights([u1, u2], ["a", "b"])
    assert dev_error_rate([u1, u2], best) == 0.0 and len(tried) == 5


def test_ties_keep_the_single_head():
    u = _utt([1], [[1], [2]], a=[-1.0, -2.0], b=[-1.0, -2.0])
    best, _ = tune_weights([u], ["a", "b"])
    assert sum(v > 0 for v in best.values()) == 1
    with pytest.raises(ValueError, match="no development utterances"):
        tune_weights([], ["a"])


# ------------------------------------------------------- on the model overfitted to the toy corpus
def test_pooled_candidates_hold_each_heads_nbest_and_decode_the_targets(toy_model, toy_corpus):
    import soundfile
    import torch

    from espnet2_dualmode.inference.offline import Speech2Text

    wavs = dict(line.split() for line in toy_corpus["wav.scp"].read_text().splitlines())
    refs = dict(line.split() for line in toy_corpus["text"].read_text().splitlines())
    keys = sorted(wavs)[:3]
    audio = [soundfile.read(wavs[k], dtype="float32")[0] for k in keys]
    pooled = Speech2Text(toy_model["config"], toy_model["model"], decode_head="joint",
                         beam_size=3, nbest=2, joint_nbest_head="rnnt+attention")
    assert [r[0].text for r in pooled(audio)] == [refs[k] for k in keys]
    singles = {h: Speech2Text(toy_model["config"], toy_model["model"], decode_head=h,
                              beam_size=3, nbest=3) for h in ("rnnt", "attention")}
    with torch.no_grad():
        enc = pooled.model.encode_features(*pooled.features(audio))
        found = pooled.joint_candidates(enc, ["ctc", "mlm"])
    for i, (cands, scores) in enumerate(found):
        expected: list = []
        for head in ("rnnt", "attention"):
            nbest = [h.tokens for h in singles[head]._decode(enc)[i]]
            expected += [c for c in nbest if c not in expected]
        assert cands == expected
        assert set(scores) == {"ctc", "mlm"} and all(v.shape == (len(cands),) for v in scores.values())
    with pytest.raises(ValueError, match="unknown n-best heads"):
        Speech2Text(toy_model["config"], toy_model["model"], decode_head="joint",
                    joint_nbest_head="rnnt+maskctc")


def test_tuning_cli_writes_the_joint_config(toy_model, toy_corpus, tmp_path):
    import yaml

    from espnet2_dualmode.bin.dualmode_asr_tune_joint import main

    decode_conf = tmp_path / "decode.yaml"
    decode_conf.write_text("beam_size: 3\nmax_sym_per_frame: 10\n")
    out = tmp_path / "tuning"
    main(["--asr_train_config", str(toy_model["config"]), "--asr_model_file",
          str(toy_model["model"]), "--data_path_and_name_and_type",
          f"{toy_corpus['wav.scp']},speech,sound", "--text", str(toy_corpus["text"]),
          "--config", str(decode_conf), "--heads", "rnnt", "attention", "--output_dir", str(out)])
    conf = yaml.safe_load((out / "joint_decode.yaml").read_text())
    assert conf["beam_size"] == 3 and conf["joint_nbest_head"] == "rnnt+attention"
    assert set(conf["joint_weights"]) == {"rnnt", "attention"}
    table = (out / "tuning.md").read_text()
    assert table.count("\n|") == 2 + 5  # header, rule, the 5 distinct weight vectors
    assert "|0.00|" in table  # the overfitted model decodes the toy corpus without error
