"""Batched multi-stream decoding: each stream's partials and final result equal decoding it
alone with Speech2TextStreaming, whatever its batch-mates, chunk sizes and open/close times."""

from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import pytest
import torch
from espnet2.utils.yaml_no_alias_safe_dump import yaml_no_alias_safe_dump

from espnet2_dualmode.decoding import TransducerSearch
from espnet2_dualmode.encoders.contextual_block_conformer import ContextualBlockConformerEncoder
from espnet2_dualmode.inference.model_io import Result
from espnet2_dualmode.inference.multistream import MultiStreamDecoder
from espnet2_dualmode.inference.streaming import Speech2TextStreaming
from espnet2_dualmode.tasks.dualmode_asr import DualModeASRTask
from test_inference import corpus_items

BEAM, NBEST = 4, 2
ROOT = Path(__file__).resolve().parents[1]

# per stream: (step at which it opens, samples per chunk, chunks fed before each step)
PLANS = [(0, 1600, 1), (0, 700, 2), (1, 2560, 1), (3, 4000, 1), (4, 333, 3), (6, 1000, 1)]


def groups(wav: np.ndarray, chunk: int, per_step: int) -> List[List[Tuple[np.ndarray, bool]]]:
    """The stream's chunks with their is_final flag, grouped by the step that decodes them."""
    starts = list(range(0, wav.size, chunk))
    chunks = [(wav[s:s + chunk], s + chunk >= wav.size) for s in starts]
    return [chunks[i:i + per_step] for i in range(0, len(chunks), per_step)]


def alone(s2t: Speech2TextStreaming, plan: Sequence[List[Tuple[np.ndarray, bool]]]) -> List[List[Result]]:
    """Speech2TextStreaming's result after each group of chunks (the last: final)."""
    s2t.reset()
    out = []
    for group in plan:
        for chunk, final in group:
            result = s2t(chunk, is_final=final)
        out.append(result)
    return out


def assert_same(got: List[Result], want: List[Result], what: str) -> None:
    assert [r.token_ids for r in got] == [r.token_ids for r in want], what
    assert [r.text for r in got] == [r.text for r in want], what
    assert [r.timestamps for r in got] == [r.timestamps for r in want], what
    assert [r.score for r in got] == pytest.approx([r.score for r in want], abs=1e-3), what


def run_interleaved(dec: MultiStreamDecoder, wavs: Sequence[np.ndarray],
                    plans=PLANS) -> Tuple[Dict[int, List[List[Result]]], List[int]]:
    """Open each stream at its step, feed its next group before every step, close it after
    its final result; returns each stream's results per step and the open count per step."""
    todo = {k: groups(wav, chunk, per) for k, (wav, (_, chunk, per)) in enumerate(zip(wavs, plans))}
    ids: Dict[int, int] = {}
    results: Dict[int, List[List[Result]]] = {k: [] for k in todo}
    n_open = []
    step = 0
    while todo:
        for k, (opens, _, _) in enumerate(plans[:len(wavs)]):
            if opens == step:
                ids[k] = dec.open()
        fed = []
        for k in list(todo):
            if k in ids:
                for chunk, final in todo[k].pop(0):
                    dec.feed(ids[k], chunk, is_final=final)
                fed.append(k)
        n_open.append(len(dec.open_streams))
        out = dec.step()
        assert sorted(out) == sorted(ids[k] for k in fed)  # only the streams fed
        for k in fed:
            results[k].append(out[ids[k]])
            if not todo[k]:
                dec.close(ids[k])
                del todo[k]
        step += 1
    return results, n_open


def check_streams(config, weights, corpus, refs_apply: bool = True,
                  **options) -> MultiStreamDecoder:
    """Interleaved decoding equals each stream decoded alone, step by step."""
    wavs_by_key, refs = corpus_items(corpus)
    keys = sorted(wavs_by_key)
    # the corpus repeats lengths: cut k x 5 ms off the trailing silence of wav k
    wavs = [wavs_by_key[key][:wavs_by_key[key].size - 80 * k] for k, key in enumerate(keys)]
    # different lengths, and streams open and end at different steps
    assert len({w.size for w in wavs}) == len(wavs) >= 4
    single = Speech2TextStreaming(config, weights, beam_size=BEAM, nbest=NBEST, **options)
    dec = MultiStreamDecoder.from_config(config, weights, beam_size=BEAM, nbest=NBEST, **options)
    got, n_open = run_interleaved(dec, wavs)
    for k, (wav, (_, chunk, per)) in enumerate(zip(wavs, PLANS)):
        want = alone(single, groups(wav, chunk, per))
        assert len(got[k]) == len(want)
        for step, (g, w) in enumerate(zip(got[k], want)):
            assert_same(g, w, f"stream {k} ({keys[k]}), step {step}")
    if refs_apply:  # stream 0 is not cut: the toy model's transcript
        assert got[0][-1][0].text == refs[keys[0]]
    assert dec.open_streams == []
    assert max(n_open) >= 4 and dec.stats.largest_round >= 3  # batched for real
    return dec


def test_interleaved_streams_equal_decoding_each_alone(toy_model, toy_corpus):
    dec = check_streams(toy_model["config"], toy_model["model"], toy_corpus)
    assert dec.stats.blocks_encoded > dec.stats.encoder_calls  # blocks shared calls


def test_a_geometry_other_than_the_training_one(toy_model, toy_corpus):
    check_streams(toy_model["config"], toy_model["model"], toy_corpus, refs_apply=False,
                  block_size=6, hop_size=2, look_ahead=2)


@pytest.fixture(scope="module")
def random_shared_model(toy_corpus, tmp_path_factory):
    """The shared-weights debug model at its seeded initial weights (the comparison with
    decoding alone needs no training)."""
    args = DualModeASRTask.get_parser().parse_args(
        ["--config", str(ROOT / "conf" / "debug" / "dualmode_shared.yaml"),
         "--token_list", str(toy_corpus["tokens.txt"]), "--token_type", "char"])
    torch.manual_seed(0)
    model = DualModeASRTask.build_model(args)
    out = tmp_path_factory.mktemp("shared_random")
    with open(out / "config.yaml", "w", encoding="utf-8") as f:
        yaml_no_alias_safe_dump(vars(args), f, indent=4, sort_keys=False)
    torch.save(model.state_dict(), out / "model.pth")
    return {"config": out / "config.yaml", "model": out / "model.pth"}


def test_shared_weights_model_batches_the_search(random_shared_model, toy_corpus):
    dec = check_streams(random_shared_model["config"], random_shared_model["model"], toy_corpus,
                        refs_apply=False)
    assert not dec.batched_encoder and dec.stats.encoder_calls == 0


def test_encode_blocks_equals_each_stream_alone():
    """Blocks of streams at different block indices, several of one stream, one stream's
    last short block, in one call: each stream's frames equal its own forward_incremental."""
    torch.manual_seed(0)
    enc = ContextualBlockConformerEncoder(12, output_size=16, attention_heads=2, linear_units=32,
                                          num_blocks=3, cnn_module_kernel=5, block_size=8,
                                          hop_size=3, look_ahead=2).eval()
    g = torch.Generator().manual_seed(1)
    feats = [torch.randn(1, n, 12, generator=g) for n in (80, 150, 61)]
    with torch.no_grad():
        want = [enc.forward_incremental(x, enc.init_state(1), is_final=True)[0] for x in feats]
        states = [enc.init_state(1) for _ in feats]
        for x, state, first in zip(feats, states, (40, 95, 61)):  # the last one ends now
            enc.ingest(x[:, :first], state, is_final=first == x.size(1))
        got: List[List[torch.Tensor]] = [[] for _ in feats]
        while any(enc.block_ready(s) for s in states):
            ready = [i for i, s in enumerate(states) if enc.block_ready(s)]
            for i, out in zip(ready, enc.encode_blocks([states[i] for i in ready])):
                got[i].append(out)
        assert got[1][0].size(1) > 2 * enc.hop_size  # several blocks of a stream in one call
        for x, state, first in zip(feats, states, (40, 95, 61)):
            if first < x.size(1):
                enc.ingest(x[:, first:], state, is_final=True)
        while any(enc.block_ready(s) for s in states):
            ready = [i for i, s in enumerate(states) if enc.block_ready(s)]
            for i, out in zip(ready, enc.encode_blocks([states[i] for i in ready])):
                got[i].append(out)
    for g_i, w in zip(got, want):
        torch.testing.assert_close(torch.cat(g_i, dim=1), w, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="no complete block"):
        enc.encode_blocks(states[:1])
    other = enc.init_state(1)
    with enc.geometry((6, 2, 2)):
        mismatched = enc.init_state(1)
    enc.ingest(torch.randn(1, 60, 12), other)
    mismatched.feats = torch.randn(1, 60, 12)
    with pytest.raises(RuntimeError, match="cannot continue at"):
        enc.encode_blocks([other, mismatched])


def same_beams(got, want) -> bool:
    """Hypotheses equal in tokens and times, scores to 1e-6 (batch-mates change rounding)."""
    return ([(h.tokens, h.times) for h in got] == [(h.tokens, h.times) for h in want]
            and [h.score for h in got] == pytest.approx([h.score for h in want], abs=1e-6))


def test_search_utterances_added_and_removed(toy_model):
    """Removing an utterance leaves the others' search unchanged; an added one is searched
    as a fresh one, also after every utterance (and the cached empty prefix) left."""
    s2t = Speech2TextStreaming(toy_model["config"], toy_model["model"], beam_size=BEAM)
    search: TransducerSearch = s2t.search
    g = torch.Generator().manual_seed(0)
    enc = torch.randn(3, 6, s2t.model.stream_encoder.output_size(), generator=g)
    ref = search.init(3)
    search.advance(ref, enc)
    fresh = search.init(1)
    search.advance(fresh, enc[1:2, :3])
    state = search.init(3)
    search.advance(state, enc[:, :3])
    search.remove_utterances(state, [1])
    assert search.add_utterances(state, 1) == [2] and state.num_frames == [3, 3, 0]
    search.advance(state, torch.cat([enc[[0, 2], 3:], enc[1:2, :3]]))
    assert same_beams(state.hyps[0], ref.hyps[0]) and same_beams(state.hyps[1], ref.hyps[2])
    assert same_beams(state.hyps[2], fresh.hyps[0])
    with pytest.raises(ValueError, match=r"utterances \[5\] are not in"):
        search.remove_utterances(state, [5])
    search.remove_utterances(state, [0, 1, 2])
    assert state.batch_size == 0 and () not in state.cache
    assert search.add_utterances(state, 2) == [0, 1]
    search.advance(state, enc[[1, 1], :3])
    assert same_beams(state.hyps[0], fresh.hyps[0]) and same_beams(state.hyps[1], fresh.hyps[0])


def test_bad_use_is_refused(toy_model, toy_corpus):
    wavs, _ = corpus_items(toy_corpus)
    wav = next(iter(wavs.values()))
    dec = MultiStreamDecoder.from_config(toy_model["config"], toy_model["model"], beam_size=BEAM)
    a, b = dec.open(), dec.open()
    dec.feed(a, wav, is_final=True)
    with pytest.raises(RuntimeError, match=f"stream {a} was fed after its final chunk"):
        dec.feed(a, wav)
    with pytest.raises(ValueError, match="no open stream 99"):
        dec.feed(99, wav)
    with pytest.raises(ValueError, match="too short"):  # this stream only
        dec.feed(b, wav[:100], is_final=True)
    dec.close(b)
    with pytest.raises(ValueError, match=f"no open stream {b}"):
        dec.close(b)
    assert list(dec.step()) == [a]
    dec.model.stream_encoder.select_geometry(6, 2, 2)
    with pytest.raises(ValueError, match="cannot share a batched call"):
        dec.open()


def test_restart_gives_the_nbest_so_far_and_a_fresh_stream(toy_model, toy_corpus):
    """An endpoint cut: ``restart`` returns the stream's n-best over the frames decoded so
    far (the search's final over them) and the stream then decodes its next audio as a
    fresh recognizer would; its batch-mate is unaffected."""
    wavs, _ = corpus_items(toy_corpus)
    first, second, mate = (wavs[k] for k in sorted(wavs)[:3])
    single = Speech2TextStreaming(toy_model["config"], toy_model["model"], beam_size=BEAM,
                                  nbest=NBEST)
    single(first, is_final=False)
    want_cut = single.text.results(single.search.finalize(single.search_state)[0])
    want_frames = single.n_encoder_frames
    want_second = alone(single, [[(second, True)]])[-1]
    want_mate = alone(single, [[(mate[:4000], False)], [(mate[4000:], True)]])
    dec = MultiStreamDecoder.from_config(toy_model["config"], toy_model["model"], beam_size=BEAM,
                                         nbest=NBEST)
    a, b = dec.open(), dec.open()
    dec.feed(a, first)
    dec.feed(b, mate[:4000])
    got_mate = [dec.step()[b]]
    assert dec.encoder_frames(a) == want_frames > 0
    assert_same(dec.restart(a), want_cut, "the n-best at the cut")
    assert dec.encoder_frames(a) == 0 and dec.open_streams == [b, a]
    dec.feed(a, second, is_final=True)
    dec.feed(b, mate[4000:], is_final=True)
    out = dec.step()
    assert_same(out[a], want_second, "the stream after the cut")
    for g, w in zip(got_mate + [out[b]], want_mate):
        assert_same(g, w, "the batch-mate")
    with pytest.raises(ValueError, match="no open stream 99"):
        dec.restart(99)
