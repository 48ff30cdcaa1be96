"""Eq. (9) and (13) checked from the outside: the total loss is recomputed from the reported
loss terms and the configured weights.

L = lambda_onl L_onl + lambda_off sum_i w_i L_i + lambda_dist L_dist (+ stream_ctc_weight
L_stream_ctc), L_off = sum_i w_i L_i and L_dist = the sum of the reported distillation terms,
for every debug variant with every active weight set to a distinct non-default value. The
recomputation with any one weight wrong, or any two swapped, must not match.
"""

from itertools import combinations
from pathlib import Path
from typing import Dict

import numpy
import pytest
import torch

from espnet2_dualmode.tasks.dualmode_asr import DualModeASRTask

ROOT = Path(__file__).resolve().parents[1]
DEBUG = {p.stem: p for p in sorted((ROOT / "conf" / "debug").glob("*.yaml"))}
TOKENS = ["<blank>", "<unk>"] + list("abcdefgh") + ["<sos/eos>"]
RTOL = 1e-5  # float32 sums of a handful of terms of size ~1-100
OFFLINE = ("ctc", "rnnt", "att", "mlm")
DISTILL_TERMS = ("loss_sp_ed", "loss_mse_ed", "loss_sp_dd")
# Distinct, non-default values; distill weights sized so that L_dist is not negligible.
DISTINCT = {"online_weight": 0.7, "offline_weight": 1.3, "ctc_weight": 0.21, "rnnt_weight": 0.33,
            "att_weight": 0.47, "mlm_weight": 0.59, "stream_ctc_weight": 0.27,
            "inplace_kd_weight": 290.0}  # L_kd is small between two similar random modes
DISTILL_WEIGHT = {"sp": 29000.0, "mse": 17.0}
VARIANTS = {name: (path, {}) for name, path in DEBUG.items()}
VARIANTS["joint_sp_ed+stream_ctc"] = (DEBUG["joint_sp_ed"], {"stream_ctc": "ctc"})
VARIANTS["joint_sp_ed+sp_dd"] = (DEBUG["joint_sp_ed"], {"decoder_distill": "sp"})


@pytest.fixture(scope="module")
def token_list(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tokens.txt"
    path.write_text("\n".join(TOKENS) + "\n")
    return path


def active_weights(args) -> Dict[str, float]:
    """The variant's weights that enter Eq. (13), each set to its distinct value."""
    conf = args.model_conf
    weights = {}
    if conf.get("online_weight", 1.0) > 0:
        weights["online_weight"] = DISTINCT["online_weight"]
    if conf.get("offline_weight", 1.0) > 0:
        weights["offline_weight"] = DISTINCT["offline_weight"]
        for head in OFFLINE:
            if conf[f"{head}_weight"] > 0:
                weights[f"{head}_weight"] = DISTINCT[f"{head}_weight"]
    if args.stream_ctc is not None:
        weights["stream_ctc_weight"] = DISTINCT["stream_ctc_weight"]
    if conf.get("inplace_kd_weight", 0) > 0:  # the shared-weights model's in-place KD
        weights["inplace_kd_weight"] = DISTINCT["inplace_kd_weight"]
    kind = conf.get("encoder_distill") or conf.get("decoder_distill")
    if kind:
        weights["distill_weight"] = DISTILL_WEIGHT[kind]
    return weights


def build(config: Path, token_list: Path, extra: Dict[str, str]):
    argv = ["--config", str(config), "--token_list", str(token_list)]
    if "stream_ctc" in extra:
        argv += ["--stream_ctc", extra["stream_ctc"]]
    args = DualModeASRTask.get_parser().parse_args(argv)
    if "decoder_distill" in extra:
        args.model_conf["decoder_distill"] = extra["decoder_distill"]
    weights = active_weights(args)
    args.model_conf.update(weights)
    torch.manual_seed(0)
    # ESPnet's Mask-CTC masking draws from numpy's global generator: without a seed the
    # masked tokens, so L_mlm's size and the checks' power, depended on the tests run before
    numpy.random.seed(0)
    return DualModeASRTask.build_model(args), weights


def batch():
    g = torch.Generator().manual_seed(0)
    speech = torch.randn(3, 12000, generator=g)
    text = torch.tensor([[2, 3, 4, 5, 6], [7, 8, 9, -1, -1], [4, 2, -1, -1, -1]])
    return speech, torch.tensor([12000, 8000, 6000]), text, torch.tensor([5, 3, 2])


def offline_sum(stats: Dict[str, float], w: Dict[str, float]) -> float:
    """Eq. (9): sum_i w_i L_i over the reported offline terms."""
    return sum(w[f"{h}_weight"] * stats[f"loss_{h}"] for h in OFFLINE if f"loss_{h}" in stats)


def total(stats: Dict[str, float], w: Dict[str, float]) -> float:
    """Eq. (13) (+ the auxiliary streaming CTC) from the reported terms."""
    value = w.get("online_weight", 0.0) * stats.get("loss_onl", 0.0)
    value += w.get("offline_weight", 0.0) * offline_sum(stats, w)
    value += w.get("distill_weight", 0.0) * stats.get("loss_dist", 0.0)
    value += w.get("stream_ctc_weight", 0.0) * stats.get("loss_stream_ctc", 0.0)
    value += w.get("inplace_kd_weight", 0.0) * stats.get("loss_inplace_kd", 0.0)
    return value


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_total_loss_is_the_weighted_sum_of_the_reported_terms(variant, token_list):
    config, extra = VARIANTS[variant]
    model, w = build(config, token_list, extra)
    model.train()
    loss, raw, _ = model(*batch())
    stats = {k: float(v) for k, v in raw.items()}
    assert float(loss.detach()) == stats["loss"]

    # Every active weight has its reported term(s), and nothing unweighted is reported.
    terms = {k for k in stats if k.startswith("loss_") and k not in ("loss_off", "loss_dist")}
    expected = {f"loss_{h}" for h in OFFLINE if f"{h}_weight" in w}
    expected |= {name for name, key in (("loss_onl", "online_weight"),
                                        ("loss_stream_ctc", "stream_ctc_weight"),
                                        ("loss_inplace_kd", "inplace_kd_weight")) if key in w}
    expected |= {t for t in DISTILL_TERMS if t in stats} if "distill_weight" in w else set()
    assert terms == expected
    assert ("loss_dist" in stats) == ("distill_weight" in w)
    if "distill_weight" in w:
        reported = [stats[t] for t in DISTILL_TERMS if t in stats]
        assert len(reported) == (2 if variant == "joint_sp_ed+sp_dd" else 1)
        assert stats["loss_dist"] == pytest.approx(sum(reported), rel=RTOL)
        assert w["distill_weight"] * stats["loss_dist"] > 200 * RTOL * abs(stats["loss"])
    if "offline_weight" in w:
        assert stats["loss_off"] == pytest.approx(offline_sum(stats, w), rel=RTOL)

    assert stats["loss"] == pytest.approx(total(stats, w), rel=RTOL)

    # The check has teeth: one weight left at its default, or doubled, or two swapped, fails.
    def wrong(v: Dict[str, float]) -> bool:
        return abs(total(stats, v) - stats["loss"]) > 100 * RTOL * abs(stats["loss"])

    for key in w:
        assert wrong({**w, key: 2 * w[key]}), key
        default = {"distill_weight": 3000.0, "online_weight": 1.0, "offline_weight": 1.0,
                   "stream_ctc_weight": 0.0, "ctc_weight": 0.15, "rnnt_weight": 0.1,
                   "att_weight": 0.3, "mlm_weight": 0.45, "inplace_kd_weight": 1.0}[key]
        assert wrong({**w, key: default}), key
    heads = [f"{h}_weight" for h in OFFLINE if f"{h}_weight" in w]
    for a, b in combinations(w, 2):
        if len(heads) == 1 and {a, b} == {"offline_weight", heads[0]}:
            continue  # lambda_off * w_i of a single head: one product, either order
        assert wrong({**w, a: w[b], b: w[a]}), (a, b)
