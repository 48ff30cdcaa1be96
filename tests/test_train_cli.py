"""The training binary on a toy corpus: resume after a kill, 2-process CPU (gloo) training."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tiny_corpus import make_tone_corpus, train_args

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "conf" / "debug" / "joint_sp_ed.yaml"
TRAIN = [sys.executable, "-m", "espnet2_dualmode.bin.dualmode_asr_train"]
ITERS = 3  # optimizer steps per epoch in these tests


def single_thread_env():
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_tone_corpus(tmp_path_factory.mktemp("tone"), n_utts=6)


def test_killed_training_resumes_with_optimizer_and_scheduler_state(corpus, tmp_path):
    out = tmp_path / "exp"
    args = TRAIN + train_args(corpus, CONFIG, out) + [
        "--max_epoch", "4", "--num_iters_per_epoch", str(ITERS), "--scheduler", "warmuplr",
        "--scheduler_conf", "warmup_steps=100", "--resume", "true"]
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(args, stderr=log, stdout=log, env=single_thread_env())
    deadline = time.time() + 300
    while not (out / "1epoch.pth").exists():
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.time() < deadline, "no checkpoint within 300 s"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)  # mid-run: epoch 2 has started or is about to
    proc.wait()
    first = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=False)
    done = first["reporter"]["epoch"]
    assert 1 <= done < 4

    second = subprocess.run(args, capture_output=True, text=True, env=single_thread_env())
    assert second.returncode == 0, second.stderr[-3000:]
    assert "The training was resumed using" in second.stderr
    final = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=False)
    assert final["reporter"]["epoch"] == 4
    # Adam's step count and the warm-up scheduler's step count continue across the kill:
    # restarted states would have counted only the steps after the resume.
    adam_steps = {int(s["step"]) for s in final["optimizers"][0]["state"].values()}
    assert adam_steps == {4 * ITERS}
    assert final["schedulers"][0]["last_epoch"] == 4 * ITERS


def test_two_process_cpu_training_completes_an_epoch(corpus, tmp_path):
    out = tmp_path / "exp"
    common = TRAIN + train_args(corpus, CONFIG, out) + [
        "--max_epoch", "1", "--batch_size", "4", "--multiprocessing_distributed", "false",
        "--dist_backend", "gloo", "--dist_world_size", "2",
        "--dist_init_method", f"file://{tmp_path / 'rendezvous'}"]
    logs = [open(tmp_path / f"rank{r}.log", "w") for r in range(2)]
    procs = [subprocess.Popen(common + ["--dist_rank", str(r), "--local_rank", str(r)],
                              stdout=logs[r], stderr=logs[r], env=single_thread_env())
             for r in range(2)]
    codes = [p.wait(timeout=600) for p in procs]
    assert codes == [0, 0], [(tmp_path / f"rank{r}.log").read_text()[-2000:] for r in range(2)]
    rank0 = (tmp_path / "rank0.log").read_text()
    assert "The training was finished at 1 epochs" in rank0
    assert "[vm:0/2]" in rank0 or "0/2" in rank0  # really a 2-process run
    state = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=False)
    assert state["reporter"]["epoch"] == 1
