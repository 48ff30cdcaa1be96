"""DDP robustness: an error on one rank stops every rank at once, naming the utterances.

Two gloo ranks on CPU, where only rank 1 gets the bad batch: through the training CLI (a
batch whose utterances are all skipped, a token id outside the vocabulary) and at the
model level (a DDP-wrapped debug model with real optimizer steps: bad token ids in training
and validation, an utterance the pruned loss cannot align). Single-process errors stay what
they were, and a misconfigured CTC warm-up is rejected at start-up.
"""

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import soundfile
import torch
import torch.multiprocessing as mp

from tiny_corpus import make_tone_corpus, train_args

from espnet2_dualmode.tasks.dualmode_asr import (
    CheckedCollateFn,
    DualModeASRTask,
    check_distributed_options,
)
from espnet2_dualmode.train.collective_errors import RankError

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "conf" / "debug" / "joint_sp_ed.yaml"
TRAIN = [sys.executable, "-m", "espnet2_dualmode.bin.dualmode_asr_train"]
# Both ranks must have exited by then; a hang never ends. Two ESPnet start-ups take most of
# it: the 2-rank runs below took 50 s alone and 70-78 s on a loaded 2-core machine.
TIMEOUT_S = 600  # a hang guard: two ranks may share a loaded CI machine's cores with the other xdist worker
VOCAB = 11  # tiny_corpus's token list


def single_thread_env() -> Dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def corpus_with_short(root: Path, short: List[int]) -> Dict[str, Path]:
    """4-utterance toy corpus whose utterances ``short`` are too short to encode (skipped)."""
    corpus = make_tone_corpus(root, n_utts=4)
    shapes = dict(line.split() for line in corpus["speech_shape"].read_text().splitlines())
    for i in short:
        uid = f"utt{i:03d}"
        soundfile.write(root / f"{uid}.wav", np.zeros(400, np.float32), 16000, subtype="PCM_16")
        shapes[uid] = "400"
    corpus["speech_shape"].write_text("".join(f"{k} {v}\n" for k, v in shapes.items()))
    return corpus


def run_ranks(args: List[str], tmp_path: Path, world: int) -> List[subprocess.CompletedProcess]:
    """Run ``world`` ranks of the training CLI; fails the test if any is alive after TIMEOUT_S."""
    dist = ["--multiprocessing_distributed", "false", "--dist_backend", "gloo",
            "--dist_world_size", str(world), "--dist_init_method", f"file://{tmp_path / 'rdv'}"]
    procs = [subprocess.Popen(args + (dist + ["--dist_rank", str(r), "--local_rank", str(r)]
                                      if world > 1 else []),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=single_thread_env()) for r in range(world)]
    deadline = time.time() + TIMEOUT_S
    results = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=max(1.0, deadline - time.time()))
            results.append(subprocess.CompletedProcess(p.args, p.returncode, out))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"a rank was still running after {TIMEOUT_S} s (hang)")
    return results


@pytest.mark.parametrize("case", ["all_skipped", "bad_token"])
def test_bad_batch_on_rank1_stops_both_ranks(case, tmp_path):
    # One batch of 4 (batch_type unsorted keeps file order); rank r gets utterances r::2,
    # so rank 1 alone gets utt001 and utt003.
    if case == "all_skipped":
        corpus = corpus_with_short(tmp_path / "corpus", short=[1, 3])
        args = TRAIN + train_args(corpus, CONFIG, tmp_path / "exp")
        expected = r"every utterance of the batch \['utt001', 'utt003'\] was skipped"
    else:
        corpus = make_tone_corpus(tmp_path / "corpus", n_utts=4)
        tokens = corpus["tokens.txt"].read_text().split()
        lines = []
        for line in corpus["text"].read_text().splitlines():
            uid, chars = line.split()
            ids = [tokens.index(c) for c in chars] + ([VOCAB + 3] if uid == "utt003" else [])
            lines.append(f"{uid} {' '.join(map(str, ids))}\n")
        (tmp_path / "text_int").write_text("".join(lines))
        args = [a.replace(f"{corpus['text']},text,text", f"{tmp_path / 'text_int'},text,text_int")
                for a in TRAIN + train_args(corpus, CONFIG, tmp_path / "exp")]
        args += ["--use_preprocessor", "false"]
        expected = r"utterance utt003: token ids \[14\] outside the vocabulary of 11 tokens"
    args += ["--max_epoch", "1", "--batch_size", "4", "--num_iters_per_epoch", "1"]
    start = time.time()
    results = run_ranks(args, tmp_path, world=2)
    elapsed = time.time() - start
    for rank, res in enumerate(results):
        tail = res.stdout[-3000:]
        assert res.returncode != 0, f"rank {rank} exited 0:\n{tail}"
        assert "RankError" in res.stdout, f"rank {rank}:\n{tail}"
        message = re.search(r"RankError: (.*)", res.stdout).group(1)
        assert "rank 1/2, utterances ['utt001', 'utt003']" in message, message
        assert re.search(expected, message), message
        assert "rank 0/2" not in message, message  # rank 0's batch was fine
    assert elapsed < TIMEOUT_S


def test_single_process_collate_error_is_unchanged(tmp_path):
    corpus = corpus_with_short(tmp_path / "corpus", short=[2, 3])
    args = TRAIN + train_args(corpus, CONFIG, tmp_path / "exp") + [
        "--max_epoch", "1", "--batch_size", "2"]
    (res,) = run_ranks(args, tmp_path, world=1)
    assert res.returncode != 0, res.stdout[-3000:]
    # Raised by the collate function in the DataLoader, exactly as before DDP support.
    assert re.search(r"ValueError: every utterance of the batch \['utt002', 'utt003'\] was "
                     r"skipped \(\{'too short': 2\}\); filter the data \(stage 4\) first",
                     res.stdout), res.stdout[-3000:]
    assert "RankError" not in res.stdout and "batch_error" not in res.stdout


def test_deferred_collate_error_is_raised_by_the_forward_with_the_same_message(tmp_path):
    short = ("utt_short", {"speech": np.zeros(10, np.float32), "text": np.array([2])})
    with pytest.raises(ValueError) as raised:
        CheckedCollateFn(VOCAB, None, 960)([short])
    ids, batch = CheckedCollateFn(VOCAB, None, 960, defer_errors=True)([short])
    assert ids == ["utt_short"] and batch == {"batch_error": str(raised.value)}
    corpus = make_tone_corpus(tmp_path / "corpus", n_utts=1)
    args = DualModeASRTask.get_parser().parse_args(
        ["--config", str(CONFIG), "--token_list", str(corpus["tokens.txt"])])
    model = DualModeASRTask.build_model(args)
    with pytest.raises(ValueError) as forwarded:  # one process: no collective, same error
        model(**batch, utt_id=ids)
    assert str(forwarded.value) == str(raised.value)
    assert "every utterance of the batch ['utt_short'] was skipped" in str(raised.value)


# ----- model level: DDP-wrapped debug model, real optimizer steps ------------------------
def _batch(n_chars: int, bad_token: bool = False, seconds: float = 0.6):
    """Two utterances of tone-like noise; ``bad_token`` puts an id outside the vocabulary."""
    g = torch.Generator().manual_seed(n_chars)
    samples = int(16000 * seconds)
    speech = torch.randn(2, samples, generator=g)
    text = torch.randint(2, VOCAB - 1, (2, n_chars), generator=g)
    if bad_token:
        text[1, 0] = VOCAB + 5
    return dict(speech=speech, speech_lengths=torch.tensor([samples, samples]),
                text=text, text_lengths=torch.tensor([n_chars, n_chars]))


def _ddp_worker(rank: int, rendezvous: str, token_list: str, results: dict) -> None:
    """One gloo rank: good steps, then failures on rank 1 only; records what each step saw."""
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{rendezvous}",
                                         rank=rank, world_size=2)
    args = DualModeASRTask.get_parser().parse_args(
        ["--config", str(CONFIG), "--token_list", token_list])
    args.model_conf.update(rnnt_loss_type="pruned", pruned_s_range=2)
    torch.manual_seed(0)
    model = DualModeASRTask.build_model(args)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.Adam(ddp.parameters(), lr=1e-3)
    seen = []

    def step(batch: dict, ids: List[str], train: bool = True) -> None:
        ddp.train(train)
        try:
            with torch.set_grad_enabled(train):
                loss, _, _ = ddp(**batch, utt_id=ids)
            if train:
                opt.zero_grad()
                loss.backward()
                opt.step()
            seen.append("ok")
        except RankError as e:
            seen.append(str(e))

    ids = [f"r{rank}_a", f"r{rank}_b"]
    step(_batch(4), ids)
    step(_batch(4, bad_token=rank == 1), ids)
    step(_batch(4), ids)  # every rank is still in step after a collective failure
    # s_range 2 and 0.3 s (7 encoder frames) cannot align 12 labels: 11 > 1 * 6.
    step(_batch(12, seconds=0.3) if rank == 1 else _batch(4), ids)
    step(_batch(4, bad_token=rank == 1), ids, train=False)  # validation
    if rank == 0:  # like ESPnet's rank-0-only attention plots: no collective, no hang
        model.eval()
        with torch.no_grad():
            model(**_batch(4))
        seen.append("alone ok")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    results[rank] = seen


def test_model_level_errors_on_rank1_raise_on_both_ranks(tmp_path):
    corpus = make_tone_corpus(tmp_path / "corpus", n_utts=1)
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        results = manager.dict()
        procs = [ctx.Process(target=_ddp_worker, args=(r, str(tmp_path / "rdv"),
                                                       str(corpus["tokens.txt"]), results))
                 for r in range(2)]
        for p in procs:
            p.start()
        deadline = time.time() + TIMEOUT_S
        for p in procs:
            p.join(timeout=max(1.0, deadline - time.time()))
        alive = [p for p in procs if p.is_alive()]
        for p in alive:
            p.kill()
        assert not alive, f"a rank was still running after {TIMEOUT_S} s (hang)"
        assert [p.exitcode for p in procs] == [0, 0]
        seen = dict(results)
    for rank in (0, 1):
        ok, bad_token, ok_again, unalignable, valid_bad = seen[rank][:5]
        assert ok == ok_again == "ok"
        for message in (bad_token, valid_bad):
            assert message.startswith("batch failed, stopping every rank; rank 1/2, utterances "
                                      "['r1_a', 'r1_b']: ValueError: token ids outside the "
                                      "vocabulary [0, 11) at batch index [1]"), message
        assert "rank 1/2, utterances ['r1_a', 'r1_b']: ValueError:" in unalignable
        assert "rank 0/2" not in bad_token + unalignable + valid_bad
    assert seen[0][5:] == ["alone ok"] and len(seen[1]) == 5


# ----- start-up check: CTC warm-up under DDP --------------------------------------------
def _args(*extra: str):
    return DualModeASRTask.get_parser().parse_args(
        ["--config", str(CONFIG), "--token_list", "unused.txt",
         "--model_conf", "ctc_warmup_iters=5", *extra])


DISTRIBUTED = ("--dist_world_size", "2", "--dist_rank", "0")


def test_ctc_warmup_under_ddp_needs_unused_parameters():
    with pytest.raises(ValueError, match=r"ctc_warmup_iters=5 with several processes needs "
                                         r"unused_parameters: true"):
        check_distributed_options(_args(*DISTRIBUTED))
    check_distributed_options(_args(*DISTRIBUTED, "--unused_parameters", "true"))
    check_distributed_options(_args())  # one process: no DDP, nothing unused to find
    args = _args(*DISTRIBUTED, "--unused_parameters", "true")
    before = dict(vars(args))
    check_distributed_options(args)
    assert vars(args) == before  # the check resolves the distributed mode on a copy


def test_ctc_warmup_under_ddp_is_rejected_before_anything_starts(tmp_path):
    cmd = ["--config", str(CONFIG), "--token_list", "unused.txt", "--output_dir",
           str(tmp_path / "exp"), "--model_conf", "ctc_warmup_iters=5", *DISTRIBUTED,
           "--dist_init_method", f"file://{tmp_path / 'rdv'}"]
    with pytest.raises(ValueError, match="unused_parameters: true"):
        DualModeASRTask.main(cmd=cmd)
    assert not (tmp_path / "exp").exists() and not torch.distributed.is_initialized()
