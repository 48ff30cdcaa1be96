"""The learning curve (validation CER against training minutes) read from the reporter of
ESPnet's trainer, as ``checkpoint.pth`` holds it."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
import torch
from espnet2.train.reporter import Reporter

from dualmode_recipe.__main__ import main
from dualmode_recipe.learning_curve import (CURVE_MD, CURVE_PNG, curve_from_reporter,
                                            curve_markdown, read_curve)

# (train seconds, valid seconds, valid stats) per epoch
EPOCHS = [(60.0, 6.0, {"cer_ctc": 0.9, "cer_onl": 1.0, "loss": 50.0}),
          (90.0, 12.0, {"cer_ctc": 0.6, "cer_onl": 0.8, "cer_rnnt": 0.7, "loss": 30.0}),
          (30.0, 3.0, {"cer_ctc": 0.45, "cer_onl": 0.55, "cer_rnnt": 0.5, "cer_onl_b8": 0.6,
                       "loss": 20.0})]


def reporter_state(epochs=EPOCHS) -> dict:
    """A state of ESPnet's own Reporter, filled through its API, with set wall times."""
    reporter = Reporter()
    for epoch, (train_s, valid_s, valid) in enumerate(epochs, 1):
        reporter.set_epoch(epoch)
        with reporter.observe("train") as sub:
            sub.register({"loss": 1.0})
            sub.next()
        with reporter.observe("valid") as sub:
            sub.register(dict(valid))
            sub.next()
        reporter.stats[epoch]["train"]["time"] = datetime.timedelta(seconds=train_s)
        reporter.stats[epoch]["valid"]["time"] = datetime.timedelta(seconds=valid_s)
    return reporter.state_dict()


def test_minutes_accumulate_train_and_valid_time() -> None:
    points = curve_from_reporter(reporter_state())
    assert [p.epoch for p in points] == [1, 2, 3]
    assert [p.minutes for p in points] == pytest.approx([66 / 60, 168 / 60, 201 / 60])
    assert points[0].error_rates == pytest.approx({"cer_ctc": 0.9, "cer_onl": 1.0})
    assert points[2].error_rates["cer_onl_b8"] == pytest.approx(0.6)


def test_markdown_rows_and_columns() -> None:
    text = curve_markdown(curve_from_reporter(reporter_state()), "demo")
    header = "|epoch|minutes|streaming RNN-T|full-context RNN-T|full-context CTC|cer_onl_b8|"
    assert header in text
    assert "|1|1.1|100.0|-|90.0|-|" in text
    assert "|2|2.8|80.0|70.0|60.0|-|" in text
    assert "|3|3.4|55.0|50.0|45.0|60.0|" in text


def test_an_epoch_without_validation_still_counts_its_time() -> None:
    state = reporter_state()
    del state["stats"][2]["valid"]
    points = curve_from_reporter(state)
    assert [p.epoch for p in points] == [1, 3]
    assert points[1].minutes == pytest.approx((66 + 90 + 33) / 60)


@pytest.mark.parametrize("state, message", [
    ({}, "no reporter statistics"),
    ({"stats": {}}, "no epoch with validation statistics"),
    ({"stats": {1: {"train": {"loss": 1.0}}}}, "epoch 1 train: 'time' is None"),
])
def test_bad_reporter_state_is_named(state, message) -> None:
    with pytest.raises(ValueError, match=message):
        curve_from_reporter(state, "exp/x/checkpoint.pth")


def test_cli_writes_table_and_png_from_a_checkpoint(tmp_path: Path, capsys) -> None:
    checkpoint = tmp_path / "checkpoint.pth"
    torch.save({"model": {}, "reporter": reporter_state()}, checkpoint)
    main(["learning_curve", "--checkpoint", str(checkpoint), "--output_dir",
          str(tmp_path / "out"), "--title", "demo"])
    text = (tmp_path / "out" / CURVE_MD).read_text()
    assert text in capsys.readouterr().out and "|3|3.4|55.0|50.0|45.0|60.0|" in text
    assert (tmp_path / "out" / CURVE_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(read_curve(checkpoint)) == 3


def test_cli_names_a_file_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    bad = tmp_path / "model.pth"
    torch.save({"encoder.weight": torch.zeros(1)}, bad)
    with pytest.raises(SystemExit, match=f"learning_curve: error: {bad}: not an ESPnet"):
        main(["learning_curve", "--checkpoint", str(bad), "--output_dir", str(tmp_path),
              "--title", "x"])
