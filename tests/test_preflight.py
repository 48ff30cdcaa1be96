"""The pre-flight memory check (--preflight_batches): batch choice, no trace, OOM message."""

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from espnet2.iterators.sequence_iter_factory import SequenceIterFactory
from espnet2.train.dataset import ESPnetDataset

from espnet2_dualmode.tasks.dualmode_asr import DualModeASRTask
from espnet2_dualmode.train.preflight import (
    BatchCost,
    PreflightOutOfMemoryError,
    batch_costs,
    largest_batches,
    preflight,
    run_batch,
)
from tiny_corpus import make_tone_corpus, train_args

ROOT = Path(__file__).resolve().parents[1]
DEBUG_CONFIG = ROOT / "conf" / "debug" / "joint_sp_ed.yaml"
TRAIN = [sys.executable, "-m", "espnet2_dualmode.bin.dualmode_asr_train"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_tone_corpus(tmp_path_factory.mktemp("tone"), n_utts=6, seed=5)


@pytest.fixture(scope="module")
def stochastic_config(tmp_path_factory):
    """The debug joint+sp-ED config with dropout and a CTC warm-up, so that a forward pass
    draws random numbers and moves the warm-up counter (what the check must undo)."""
    conf = yaml.safe_load(DEBUG_CONFIG.read_text())
    for key in ("stream_encoder_conf", "full_encoder_conf"):
        conf[key]["dropout_rate"] = 0.2
    conf["model_conf"]["ctc_warmup_iters"] = 2
    path = tmp_path_factory.mktemp("conf") / "stochastic.yaml"
    path.write_text(yaml.safe_dump(conf))
    return path


def test_batch_costs_count_bins_as_espnet_and_read_the_longest_target(tmp_path):
    speech = tmp_path / "speech_shape"
    speech.write_text("a 100\nb 300\nc 200\n")
    text = tmp_path / "text_shape.char"
    text.write_text("a 9,50\nb 4,50\nc 7,50\n")
    cost, = batch_costs([("a", "b", "c")], [str(speech), str(text)])
    assert cost.longest_input == 300 and cost.longest_target == 9
    # ESPnet's NumElementsBatchSampler: B x (longest speech x 1 + longest text x 50).
    assert cost.bins == 3 * (300 + 9 * 50)
    assert cost.padded_input == 900 and cost.joint == 900 * 10
    with pytest.raises(RuntimeError, match=r"\['zz'\] are not in"):
        batch_costs([("a", "zz")], [str(speech)])


def test_largest_batches_alternate_padded_input_and_joint_size():
    def cost(name, b, longest, target):
        return BatchCost(tuple(f"{name}{i}" for i in range(b)), longest, target, 0)

    long_audio = cost("L", 4, 1000, 2)     # padded 4000 (largest), joint 12000
    many_tokens = cost("T", 2, 800, 20)    # padded 1600, joint 33600 (largest)
    both = cost("M", 3, 900, 10)           # padded 2700 (2nd), joint 29700 (2nd)
    small = cost("S", 1, 100, 1)
    costs = [small, both, many_tokens, long_audio]
    assert largest_batches(costs, 1) == [long_audio]
    assert largest_batches(costs, 2) == [long_audio, many_tokens]
    assert largest_batches(costs, 3) == [long_audio, many_tokens, both]
    assert largest_batches(costs, 10) == [long_audio, many_tokens, both, small]  # distinct, all


def build_components(corpus, config, out):
    """Model, training iterator factory and trainer options as ESPnet's task builds them."""
    args = DualModeASRTask.get_parser().parse_args(
        train_args(corpus, config, out) + ["--use_preprocessor", "true"])
    torch.manual_seed(0)
    model = DualModeASRTask.build_model(args)
    dataset = ESPnetDataset([(str(corpus["wav.scp"]), "speech", "sound"),
                             (str(corpus["text"]), "text", "text")],
                            preprocess=DualModeASRTask.build_preprocess_fn(args, train=True))
    uids = [line.split()[0] for line in corpus["speech_shape"].read_text().splitlines()]
    batches = [uids[0:2], uids[2:5], uids[5:6]]
    factory = SequenceIterFactory(dataset=dataset, batches=batches,
                                  collate_fn=DualModeASRTask.build_collate_fn(args, train=True))
    options = DualModeASRTask.trainer.build_options(args)
    return model, factory, options, batches


def snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [None if p.grad is None else p.grad.clone() for p in model.parameters()],
            random.random(), float(np.random.rand()), float(torch.rand(())))


def same(a, b) -> bool:
    states_equal = a[0].keys() == b[0].keys() and all(torch.equal(a[0][k], b[0][k]) for k in a[0])
    grads_equal = all((x is None and y is None) or (x is not None and y is not None and torch.equal(x, y))
                      for x, y in zip(a[1], b[1]))
    return states_equal and grads_equal and a[2:] == b[2:]


def seed_all(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def test_preflight_restores_parameters_buffers_gradients_and_rng(corpus, stochastic_config, tmp_path):
    model, factory, options, _ = build_components(corpus, stochastic_config, tmp_path / "exp")
    options.preflight_batches = 2
    model.eval()  # the training flag comes back too
    seed_all(1)
    before = snapshot(model)
    seed_all(1)
    preflight(model, factory, options, distributed=False)
    assert not model.training
    assert int(model.train_iters) == 0
    assert same(before, snapshot(model))

    # Control: the same batch without the check's restore changes what the test compares.
    seed_all(1)
    model.train()
    run_batch(model, factory, factory.collate_fn, batch_costs([factory.sampler.batches[1]],
              options.train_shape_file)[0], torch.device("cpu"), False)
    model.eval()
    assert not same(before, snapshot(model))


def test_out_of_memory_names_the_batch_and_what_to_change(corpus, tmp_path, monkeypatch):
    model, factory, options, batches = build_components(corpus, DEBUG_CONFIG, tmp_path / "exp")
    options.preflight_batches = 3
    options.batch_type, options.batch_bins, options.accum_grad = "numel", 4000000, 2
    largest = largest_batches(batch_costs(batches, options.train_shape_file), 1)[0]
    calls = []

    def forward_that_runs_out(self, *args, utt_id=None, **kwargs):
        calls.append(tuple(utt_id))
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 30.00 GiB")

    monkeypatch.setattr(type(model), "forward", forward_that_runs_out)
    with pytest.raises(PreflightOutOfMemoryError) as info:
        preflight(model, factory, options, distributed=False)
    message = str(info.value)
    assert calls == [largest.utt_ids]  # the largest batch first, and fail at once
    for uid in largest.utt_ids:
        assert uid in message
    assert f"B={len(largest.utt_ids)}," in message
    assert "lower batch_bins from 4000000 to about 2000000" in message
    assert "accum_grad from 2 to 4" in message
    assert "rnnt_loss_type: pruned" in message and "--use_amp true" in message
    assert isinstance(info.value.__cause__, torch.cuda.OutOfMemoryError)


def test_other_errors_propagate_unchanged(corpus, tmp_path, monkeypatch):
    model, factory, options, _ = build_components(corpus, DEBUG_CONFIG, tmp_path / "exp")
    options.preflight_batches = 1

    def broken(self, *args, **kwargs):
        raise ValueError("utterance X: token ids outside the vocabulary")

    monkeypatch.setattr(type(model), "forward", broken)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        preflight(model, factory, options, distributed=False)


def test_training_with_preflight_is_bit_identical(corpus, stochastic_config, tmp_path):
    def train(out, extra):
        args = TRAIN + train_args(corpus, stochastic_config, out) + [
            "--max_epoch", "1", "--batch_size", "2", "--num_workers", "0"] + extra
        run = subprocess.run(args, capture_output=True, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert run.returncode == 0, run.stderr[-3000:]
        return torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=False), run.stderr

    plain, _ = train(tmp_path / "plain", [])
    checked, log = train(tmp_path / "checked", ["--preflight_batches", "2"])
    assert "pre-flight batch 1/2" in log and "pre-flight batch 2/2" in log
    assert "peak RSS" in log
    assert plain["model"].keys() == checked["model"].keys()
    for key in plain["model"]:
        assert torch.equal(plain["model"][key], checked["model"][key]), key
    # The counter stops at the warm-up's end (2 of the 3 steps); the check's own setting of
    # it (past the warm-up) would have skipped the warm-up and changed every parameter.
    assert int(checked["model"]["train_iters"]) == 2
    p_opt, c_opt = plain["optimizers"][0]["state"], checked["optimizers"][0]["state"]
    assert p_opt.keys() == c_opt.keys()
    for i in p_opt:
        for name in p_opt[i]:
            assert torch.equal(p_opt[i][name], c_opt[i][name]), (i, name)


def preflight_rank(rank: int, corpus, out: Path, rendezvous: Path, results: Path) -> None:
    """One of 2 gloo ranks; rank 1's forward runs out of memory on every batch."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{rendezvous}",
                                         rank=rank, world_size=2)
    model, factory, options, _ = build_components(corpus, DEBUG_CONFIG, out / f"rank{rank}")
    options.preflight_batches = 2
    if rank == 1:
        def out_of_memory(*args, **kwargs):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        model.forward = out_of_memory
    try:
        preflight(model, factory, options, distributed=True)
        outcome = "passed"
    except Exception as e:  # noqa: BLE001 -- the test records which error each rank saw
        outcome = type(e).__name__
    (results / f"rank{rank}").write_text(outcome)


def test_out_of_memory_on_one_rank_stops_both(corpus, tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=preflight_rank,
                         args=(r, corpus, tmp_path, tmp_path / "rendezvous", tmp_path))
             for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    alive = [p.is_alive() for p in procs]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert alive == [False, False], "a rank still waits after the other one failed"
    assert (tmp_path / "rank1").read_text() == "PreflightOutOfMemoryError"
    assert (tmp_path / "rank0").read_text() == "PreflightError"


@pytest.mark.parametrize("override", sorted(
    str(p.relative_to(ROOT)) for p in ROOT.glob("egs2/*/asr1/conf/gpu_*.yaml")))
def test_gpu_overrides_merge_onto_the_paper_config(override, tmp_path):
    """Each GPU override holds only known keys, keeps the paper's effective batch
    (batch_bins x accum_grad) and turns the pre-flight check on."""
    from dualmode_recipe.config import load_mapping, merge_config

    paper = load_mapping(ROOT / "conf" / "paper" / "joint_sp_ed.yaml")
    changes = load_mapping(ROOT / override)
    merged = merge_config(paper, changes, override)
    path = tmp_path / "merged.yaml"
    path.write_text(yaml.safe_dump(merged))
    args = DualModeASRTask.get_parser().parse_args(["--config", str(path)])  # unknown keys fail
    assert args.preflight_batches > 0
    assert args.batch_bins * args.accum_grad == pytest.approx(
        paper["batch_bins"] * paper["accum_grad"], rel=0.1)
    assert args.model_conf["rnnt_loss_type"] in ("full", "pruned")
