"""The CUDA path (``pytest -m cuda``, or tools/gpu_check.sh on a GPU machine): every decoding
head, streaming and the latency tool on CUDA give the CPU's results; a training step of every
debug config is finite on CUDA in fp32 and under autocast (and its loss terms equal the CPU's);
the demo recipe's tiny run trains with --ngpu 1 --use_amp true and decodes on the GPU, and
with 2 GPUs visible a DDP epoch runs on both. Skipped where no CUDA device is visible.

warp-rnnt against torchaudio on CUDA is in test_rnnt_backends.py (also marked ``cuda``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import torch
import yaml

from cuda_support import needs_cuda, needs_gpus, needs_warp_rnnt
from espnet2_dualmode.bin.dualmode_asr_inference_streaming import recognize
from espnet2_dualmode.inference.latency import reference_end_times, timed_recognition
from espnet2_dualmode.inference.offline import HEADS, Speech2Text
from espnet2_dualmode.inference.streaming import Speech2TextStreaming
from espnet2_dualmode.tasks.dualmode_asr import DualModeASRTask
from recipe_sandbox import REPO, make_recipe, read_map, run_recipe
from test_inference import corpus_items, run_module
from tiny_corpus import load_batch

pytestmark = [pytest.mark.cuda, needs_cuda]

DEVICE = "cuda"
DEBUG = sorted((REPO / "conf" / "debug").glob("*.yaml"))
SCORE_TOLERANCE = dict(rel=1e-4, abs=1e-3)  # fp32 on two devices, TF32 off


@pytest.fixture(autouse=True)
def exact_float32():
    """Full float32 matmuls and convolutions on CUDA (no TF32), so results compare to the CPU."""
    precision = torch.get_float32_matmul_precision()
    cudnn = torch.backends.cudnn
    torch.set_float32_matmul_precision("highest")
    try:
        with cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark,
                         benchmark_limit=cudnn.benchmark_limit,
                         deterministic=cudnn.deterministic, allow_tf32=False):
            yield
    finally:
        torch.set_float32_matmul_precision(precision)


def assert_same_results(got, want, context) -> None:
    """Two n-best lists of Results: same tokens and timestamps, scores equal to rounding."""
    assert [r.token_ids for r in got] == [r.token_ids for r in want], context
    assert [r.timestamps for r in got] == [r.timestamps for r in want], context
    assert [r.score for r in got] == [pytest.approx(r.score, **SCORE_TOLERANCE) for r in want], context


# ----- inference --------------------------------------------------------------------------
@pytest.mark.parametrize("head", HEADS)
def test_every_head_decodes_on_the_gpu_as_on_the_cpu(toy_model, toy_corpus, head):
    wavs, refs = corpus_items(toy_corpus)
    keys = sorted(wavs)
    results = {}
    for device in ("cpu", DEVICE):
        s2t = Speech2Text(toy_model["config"], toy_model["model"], decode_head=head, beam_size=4,
                          device=device)
        assert next(s2t.model.parameters()).device.type == torch.device(device).type
        results[device] = s2t([wavs[k] for k in keys])
    for key, got, want in zip(keys, results[DEVICE], results["cpu"]):
        assert_same_results(got, want, (head, key))
        assert got[0].text == refs[key]


def test_streaming_on_the_gpu_gives_every_partial_and_final_result_of_the_cpu(toy_model, toy_corpus):
    cpu, gpu = (Speech2TextStreaming(toy_model["config"], toy_model["model"], beam_size=4,
                                     device=device) for device in ("cpu", DEVICE))
    wavs, refs = corpus_items(toy_corpus)
    for key, wav in wavs.items():
        cpu.reset()
        gpu.reset()
        for start in range(0, wav.size, 640):
            final = start + 640 >= wav.size
            want = cpu(wav[start:start + 640], is_final=final)
            got = gpu(wav[start:start + 640], is_final=final)
            assert_same_results(got, want, (key, start))
        assert got[0].text == refs[key]
        whole = recognize(gpu, wav, 4000)  # another chunking, same final result
        assert [r.token_ids for r in whole] == [r.token_ids for r in want], key


def test_latency_timing_and_reference_alignment_on_the_gpu(toy_model, toy_corpus):
    cpu, gpu = (Speech2TextStreaming(toy_model["config"], toy_model["model"], beam_size=4,
                                     device=device) for device in ("cpu", DEVICE))
    wavs, refs = corpus_items(toy_corpus)
    for key, wav in wavs.items():
        timing = timed_recognition(gpu, wav, 640)
        assert gpu.text.result(timing.token_ids, 0.0).text == refs[key]
        want = reference_end_times(cpu, wav, timing.token_ids)
        assert reference_end_times(gpu, wav, timing.token_ids) == want, key


@pytest.mark.parametrize("module, options", [
    ("dualmode_asr_inference", ["--decode_head", "joint", "--batch_size", "3"]),
    ("dualmode_asr_inference_streaming", ["--sim_chunk_length", "1000"]),
])
def test_decoding_clis_with_ngpu_1(toy_model, toy_corpus, tmp_path, module, options):
    r = run_module(f"espnet2_dualmode.bin.{module}", "--ngpu", "1",
                   "--asr_train_config", toy_model["config"], "--asr_model_file", toy_model["model"],
                   "--data_path_and_name_and_type", f"{toy_corpus['wav.scp']},speech,sound",
                   "--output_dir", tmp_path, "--beam_size", "4", *options)
    assert r.returncode == 0, r.stderr[-3000:]
    assert read_map(tmp_path / "1best_recog" / "text") == corpus_items(toy_corpus)[1]
    assert not (tmp_path / "failed").read_text().strip()


def test_latency_tool_with_ngpu_1(toy_model, toy_corpus, tmp_path):
    r = run_module("espnet2_dualmode.bin.measure_latency", "--ngpu", "1",
                   "--asr_train_config", toy_model["config"], "--asr_model_file", toy_model["model"],
                   "--data_path_and_name_and_type", f"{toy_corpus['wav.scp']},speech,sound",
                   "--output_dir", tmp_path, "--beam_size", "4")
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((tmp_path / "latency.json").read_text())
    refs = corpus_items(toy_corpus)[1]
    assert result["device"] == DEVICE and result["failed"] == 0
    assert result["tokens"] == sum(len(t) for t in refs.values()) and result["rtf"] > 0


# ----- training ---------------------------------------------------------------------------
def build_model(config: Path, tokens: Path, **model_conf) -> torch.nn.Module:
    args = DualModeASRTask.get_parser().parse_args(
        ["--config", str(config), "--token_list", str(tokens), "--token_type", "char"])
    args.model_conf.update(model_conf)
    torch.manual_seed(0)
    return DualModeASRTask.build_model(args)


def loss_terms(model, batch, device: str, dtype=None) -> Dict[str, torch.Tensor]:
    """One training-mode forward (under autocast with ``dtype``) and backward; returns the
    loss terms (as float64 on the CPU) after checking every gradient is finite."""
    model.zero_grad()
    np.random.seed(0)  # the MLM masks (ESPnet's mask_uniform draws from numpy)
    with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None):
        loss, stats, _ = model(*(x.to(device) for x in batch))
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads, "no gradient reached the parameters"
    bad = [n for n, g in grads.items() if not torch.isfinite(g).all()]
    assert not bad, f"non-finite gradients ({dtype}): {bad[:5]}"
    terms = {k: v.detach().double().cpu() for k, v in stats.items() if k.startswith("loss")}
    assert all(torch.isfinite(v) for v in terms.values()), (dtype, terms)
    return terms


def autocast_dtypes():
    """The dtypes of ESPnet's --use_amp: bf16 where the GPU has it, and fp16 (V100/T4) always."""
    return ([torch.bfloat16] if torch.cuda.is_bf16_supported() else []) + [torch.float16]


BACKENDS = ["torchaudio", pytest.param("warp_rnnt", marks=needs_warp_rnnt)]
# Relative agreement of each loss term under autocast with fp32 (same weights and batch); on
# CPU, bf16 autocast of the debug configs stays within 0.3 % (measured 2026-11-30).
AMP_TOLERANCE = {torch.bfloat16: 0.02, torch.float16: 0.01}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("config", DEBUG, ids=lambda p: p.stem)
def test_training_step_on_the_gpu_in_fp32_and_under_autocast(toy_corpus, config, backend):
    batch = load_batch(toy_corpus)
    cpu_terms = loss_terms(build_model(config, toy_corpus["tokens.txt"]), batch, "cpu")
    model = build_model(config, toy_corpus["tokens.txt"], rnnt_backend=backend).to(DEVICE).train()
    fp32 = loss_terms(model, batch, DEVICE)
    assert fp32.keys() == cpu_terms.keys()
    for name, value in fp32.items():
        assert float(value) == pytest.approx(float(cpu_terms[name]), rel=1e-3, abs=1e-4), name
    for dtype in autocast_dtypes():
        amp = loss_terms(model, batch, DEVICE, dtype)
        assert amp.keys() == fp32.keys()
        for name, value in amp.items():
            assert float(value) == pytest.approx(float(fp32[name]), rel=AMP_TOLERANCE[dtype],
                                                 abs=1e-3), (dtype, name)


def test_pruned_rnnt_training_step_on_the_gpu(toy_corpus):
    config = REPO / "conf" / "debug" / "joint_sp_ed.yaml"
    batch = load_batch(toy_corpus)
    cpu_terms = loss_terms(build_model(config, toy_corpus["tokens.txt"], rnnt_loss_type="pruned"),
                           batch, "cpu")
    model = build_model(config, toy_corpus["tokens.txt"], rnnt_loss_type="pruned").to(DEVICE)
    gpu_terms = loss_terms(model.train(), batch, DEVICE)
    for name, value in gpu_terms.items():
        assert float(value) == pytest.approx(float(cpu_terms[name]), rel=1e-3, abs=1e-4), name
    for dtype in autocast_dtypes():
        loss_terms(model, batch, DEVICE, dtype)


# ----- the demo recipe on the GPU ---------------------------------------------------------
TINY = ["--corpus_size", "tiny", "--nj", "1", "--latency_max_utts", "2",
        "--asr_config", str(REPO / "conf" / "debug" / "joint_sp_ed.yaml")]


@pytest.fixture(scope="module")
def gpu_recipe(tmp_path_factory):
    """The demo recipe's stages 1-13 on the tiny corpus, trained with --ngpu 1 --use_amp true
    and decoded on the GPU."""
    recipe = make_recipe("demo_ja", tmp_path_factory.mktemp("demo_gpu"))
    result = run_recipe(recipe, TINY + ["--tag", "amp", "--ngpu", "1", "--gpu_inference", "true",
                                        "--asr_args", "--max_epoch 1 --use_amp true"], timeout=600)
    assert result.returncode == 0, result.stdout[-6000:]
    return recipe, result.stdout


def test_demo_recipe_trains_with_amp_on_one_gpu_and_decodes_on_it(gpu_recipe):
    recipe, stdout = gpu_recipe
    exp = recipe / "exp" / "asr_amp"
    config = yaml.safe_load((exp / "config.yaml").read_text())
    assert config["ngpu"] == 1 and config["use_amp"] is True
    train_log = (exp / "logs" / "stage11.log").read_text()
    assert "Skipping updating the model" not in train_log  # no non-finite gradient under AMP
    results = (exp / "RESULTS.md").read_text()
    assert results in stdout
    rows = dict(re.findall(r"^\|(\w+)\|([^|]+)\|$", results, flags=re.M))
    assert {"streaming", "rnnt", "ctc", "attention", "maskctc", "joint"} <= set(rows), results
    ref = read_map(recipe / "dump" / "raw" / "test" / "text")
    for head in ("rnnt", "streaming"):
        decode = exp / "decode_asr_asr_model_valid.loss.ave" / head / "test"
        assert set(read_map(decode / "text")) | set(read_map(decode / "failed")) == set(ref), head


@needs_gpus(2)
def test_demo_recipe_ddp_epoch_on_two_gpus(gpu_recipe):
    recipe, _ = gpu_recipe
    result = run_recipe(recipe, TINY + ["--tag", "ddp", "--ngpu", "2", "--stage", "11",
                                        "--stop_stage", "11",
                                        "--asr_args", "--max_epoch 1 --batch_size 4"], timeout=300)
    assert result.returncode == 0, result.stdout[-6000:]
    exp = recipe / "exp" / "asr_ddp"
    config = yaml.safe_load((exp / "config.yaml").read_text())
    assert config["ngpu"] == 2 and config["multiprocessing_distributed"] is True
    assert (exp / "checkpoint.pth").is_file() and (exp / ".done_stage11").is_file()
    assert "Skipping updating the model" not in (exp / "logs" / "stage11.log").read_text()
