"""Benchmark: our batched RNN-T beam search vs ESPnet's ``BeamSearchTransducer`` (CPU).

Both decode the same encoder outputs with the same prediction network (1-layer LSTM) and
``JointNetwork``, beam 10, on one thread:

* ours: ``espnet2_dualmode.decoding.transducer_search.TransducerSearch(beam_size=10,
  max_sym_per_frame=10, score_norm=True)`` (``--max-sym`` sets the symbols per frame), all
  utterances in one batch (time-synchronous decoding, as ESPnet's ``search_type="tsd"``,
  with its default pruning of hopeless expansions; ``--exact`` turns that off);
* ESPnet: ``BeamSearchTransducer(beam_size=10, search_type="default", score_norm=True)``
  (the search of ESPnet's ``decode_transducer.yaml``), one utterance at a time, as
  ``espnet2/bin/asr_inference.py`` runs it.

The cost of both searches depends on how peaked and how ambiguous the network's outputs
are, and a random network's outputs are nearly uniform, unlike a trained one's. The
models (``--model``):

* ``structured`` (default): weights set by hand so that the network behaves like a
  trained one on planted token sequences. Every label v has a random unit vector E[v];
  the encoder frame is E[k_t] plus noise, with k_t = blank on most frames and a token on
  ``--token-rate`` of them (half of those an ambiguous 0.7/0.3 mixture of two tokens);
  ``lin_out`` scores ``<E[v], tanh(...)>``; the prediction network (an LSTM with open
  input/output gates and a closed forget gate) returns its last label's vector and
  ``lin_dec`` subtracts it, so a token is emitted once and not repeated. The script
  reports how many planted sequences our search recovers.
* ``random``: random weights, output weights scaled by ``--logit-scale`` and
  ``--blank-bias`` added to the blank logit (default log(V) + 2).
* ``trained``: the RNN-T head (``--head rnnt`` offline or ``streaming``) of a trained run
  (``--exp``: its config.yaml and ``--model-file``) on the encoder outputs of a data dir's
  utterances (``--data``: wav.scp and text); both searches' CERs against the references
  are printed. ``--vocab`` is ignored (the run's vocabulary is used).

The script prints the mean hypothesis length and how many 1-best results of the two
searches agree (they are different algorithms), then the speed ratio (ESPnet time / our
time) last. One warm-up call of each search is not timed.

Usage: ``python benchmarks/beam_search.py [--vocab 300 3262] [--utts 20] [--frames 150]``
       ``cd egs2/demo_ja/asr1 && python ../../../benchmarks/beam_search.py --model trained
       --exp exp/RUN --data dump/raw/test`` (from the recipe directory: a run's config.yaml
       names its statistics file relative to it)
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import time
from pathlib import Path
from typing import List, Optional

import editdistance
import torch
from espnet2.asr.decoder.transducer_decoder import TransducerDecoder
from espnet2.asr.transducer.beam_search_transducer import BeamSearchTransducer
from espnet2.asr_transducer.joint_network import JointNetwork

from dualmode_recipe.kaldi_dir import read_kaldi_map
from espnet2_dualmode.decoding.transducer_search import TransducerSearch
from espnet2_dualmode.inference.decode_list import DecodeList
from espnet2_dualmode.inference.model_io import TokenText, load_model, sample_rate


def random_model(vocab: int, args: argparse.Namespace, gen: torch.Generator):
    """Random networks (eval mode) with scaled output weights and a blank bias; random
    encoder frames (B, T, D)."""
    decoder = TransducerDecoder(vocab, rnn_type="lstm", hidden_size=args.dim).eval()
    joint = JointNetwork(vocab, args.dim, args.dim, joint_space_size=args.joint_dim).eval()
    bias = args.blank_bias if args.blank_bias is not None else math.log(vocab) + 2.0
    with torch.no_grad():
        joint.lin_out.weight.mul_(args.logit_scale)
        joint.lin_out.bias[decoder.blank_id] += bias
    enc = torch.randn(args.utts, args.frames, args.dim, generator=gen)
    return decoder, joint, enc, torch.full((args.utts,), args.frames), None


def structured_model(vocab: int, gen: torch.Generator, utts: int, frames: int, dim: int = 256,
                     joint_dim: int = 320, token_rate: float = 0.25):
    """Hand-set networks that emit planted token sequences (see module doc).

    In the joint space (first ``dim`` dims) the hidden vector is ``tanh(4 (frame - last))``
    with ``frame`` the encoder frame and ``last`` the vector of the last emitted label
    (0 at the start); logits are ``30 <E[v], .>`` (about 30 for the frame's label, |x| < 6
    for the others) plus log(V) + 4 on blank, so that blank wins wherever the frame has
    been used up.

    Returns:
        decoder, joint, encoder frames (B, T, D) and the planted tokens per utterance.
    """
    blank, gain = 0, 4.0
    vectors = torch.nn.functional.normalize(torch.randn(vocab, dim, generator=gen), dim=1)
    decoder = TransducerDecoder(vocab, rnn_type="lstm", hidden_size=dim).eval()
    joint = JointNetwork(vocab, dim, dim, joint_space_size=joint_dim).eval()
    eye = torch.eye(joint_dim, dim)
    lstm = decoder.decoder[0]
    with torch.no_grad():
        for p in [*decoder.parameters(), *joint.parameters()]:
            p.zero_()
        decoder.embed.weight[1:] = vectors[1:]  # blank (the start symbol) stays 0
        # gates (input, forget, cell, output) = (1, 0, tanh(x), 1): h = tanh(tanh(x)) ~ x
        lstm.weight_ih_l0[2 * dim : 3 * dim] = torch.eye(dim)
        lstm.bias_ih_l0[:dim] = 10.0
        lstm.bias_ih_l0[dim : 2 * dim] = -10.0
        lstm.bias_ih_l0[3 * dim :] = 10.0
        joint.lin_enc.weight.copy_(gain * eye)
        joint.lin_dec.weight.copy_(-gain * eye)
        joint.lin_out.weight[:, :dim] = 7.5 * vectors
        joint.lin_out.bias[blank] = math.log(vocab) + 4.0

    planted, enc = [], vectors[blank].repeat(utts, frames, 1)
    for b in range(utts):
        tokens, last = [], blank
        for t in range(frames):
            if float(torch.rand((), generator=gen)) >= token_rate:
                continue
            token = last
            while token in (blank, last):  # no immediate repeats
                token = int(torch.randint(1, vocab, (), generator=gen))
            enc[b, t] = vectors[token]
            if float(torch.rand((), generator=gen)) < 0.5:  # ambiguous: 21 vs 9 logits
                other = int(torch.randint(1, vocab, (), generator=gen))
                enc[b, t] = 0.7 * vectors[token] + 0.3 * vectors[other]
            tokens.append(token)
            last = token
        planted.append(tokens)
    enc = enc + 0.01 * torch.randn(enc.shape, generator=gen)
    return decoder, joint, enc, torch.full((utts,), frames), planted


def trained_model(args: argparse.Namespace):
    """A trained run's RNN-T head and the encoder outputs of ``--data``'s first ``--utts``
    utterances; the reference token ids play the role of the planted sequences."""
    exp = Path(args.exp)
    model, train_args = load_model(exp / "config.yaml", exp / args.model_file)
    data = Path(args.data)
    utts = DecodeList(str(data / "wav.scp"), "sound")
    texts = read_kaldi_map(data / "text")
    token_text = TokenText(train_args)
    encoded, refs = [], []
    with torch.no_grad():
        for key in utts.keys[: args.utts]:
            wav = torch.from_numpy(utts.load(key, sample_rate(train_args), 0))[None]
            stream, full, _ = model.encode(wav, torch.tensor([wav.size(1)]))
            encoded.append((stream if args.head == "streaming" else full)[0])
            refs.append(token_text.ids(texts[key]))
    lens = torch.tensor([e.size(0) for e in encoded])
    enc = torch.nn.utils.rnn.pad_sequence(encoded, batch_first=True)
    if args.head == "streaming":
        return model.stream_decoder, model.stream_joint, enc, lens, refs
    return model.rnnt_decoder, model.rnnt_joint, enc, lens, refs


def bench_vocab(vocab: int, args: argparse.Namespace) -> float:
    """Decode with both searches; print the measurements and return ESPnet / ours time."""
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    if args.model == "trained":
        decoder, joint, enc, lens, planted = trained_model(args)
        vocab, args.utts = joint.lin_out.out_features, enc.size(0)
    elif args.model == "structured":
        decoder, joint, enc, lens, planted = structured_model(
            vocab, gen, args.utts, args.frames, args.dim, args.joint_dim, args.token_rate)
    else:
        decoder, joint, enc, lens, planted = random_model(vocab, args, gen)
    ours = TransducerSearch(decoder, joint, beam_size=args.beam,
                            max_sym_per_frame=args.max_sym, score_norm=True,
                            prune=not args.exact)
    espnet = BeamSearchTransducer(decoder, joint, beam_size=args.beam, search_type="default",
                                  score_norm=True)
    with torch.no_grad():
        ours(enc[:1, :5])  # warm-up
        espnet(enc[0, :5])
        begin = time.perf_counter()
        our_hyps = [nbest[0].tokens for nbest in ours(enc, lens)]
        our_time = time.perf_counter() - begin
        begin = time.perf_counter()
        ref_hyps = [list(espnet(enc[b, : lens[b]])[0].yseq[1:]) for b in range(args.utts)]
        ref_time = time.perf_counter() - begin

    agree = sum(a == b for a, b in zip(our_hyps, ref_hyps))
    print(f"V={vocab} ({args.model} model): mean 1-best length "
          f"{sum(map(len, our_hyps)) / args.utts:.1f} tokens, 1-best agreement ours/ESPnet "
          f"{agree}/{args.utts}")
    if args.model == "trained":
        chars = sum(map(len, planted))
        for name, hyps in (("ours", our_hyps), ("ESPnet", ref_hyps)):
            errors = sum(editdistance.eval(h, r) for h, r in zip(hyps, planted))
            print(f"{args.head} RNN-T, {name}: CER {100.0 * errors / chars:.1f}% "
                  f"({errors} errors / {chars} characters)")
    elif planted is not None:
        ours_ok = sum(h == p for h, p in zip(our_hyps, planted))
        ref_ok = sum(h == p for h, p in zip(ref_hyps, planted))
        print(f"V={vocab}: planted token sequences (mean {sum(map(len, planted)) / args.utts:.1f}"
              f" tokens) recovered: ours {ours_ok}/{args.utts}, ESPnet {ref_ok}/{args.utts}")
    print(f"V={vocab}: ours {our_time:.2f} s, ESPnet default {ref_time:.2f} s "
          f"({args.utts} utterances, {int(lens.sum())} frames, beam {args.beam}, "
          f"ours with {args.max_sym} symbols per frame, {'exact TSD' if args.exact else 'pruned'})")
    return ref_time / our_time


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, nargs="+", default=[300, 3262])
    parser.add_argument("--utts", type=int, default=20)
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--beam", type=int, default=10)
    parser.add_argument("--max-sym", type=int, default=10,
                        help="our search: most symbols per encoder frame")
    parser.add_argument("--exact", action="store_true",
                        help="our search without pruning (exactly ESPnet's TSD)")
    parser.add_argument("--model", choices=("structured", "random", "trained"),
                        default="structured")
    parser.add_argument("--exp", help="trained model: the run's directory (config.yaml)")
    parser.add_argument("--model-file", default="valid.loss.ave.pth",
                        help="trained model: the weights, relative to --exp")
    parser.add_argument("--data", help="trained model: data dir with wav.scp and text")
    parser.add_argument("--head", choices=("rnnt", "streaming"), default="rnnt",
                        help="trained model: the offline or the streaming RNN-T")
    parser.add_argument("--dim", type=int, default=256, help="encoder and prediction dims")
    parser.add_argument("--joint-dim", type=int, default=320)
    parser.add_argument("--token-rate", type=float, default=0.25,
                        help="structured model: fraction of frames that carry a token")
    parser.add_argument("--logit-scale", type=float, default=4.0,
                        help="random model: scale of the joint's output weights")
    parser.add_argument("--blank-bias", type=float, default=None,
                        help="random model: added to the blank logit; default log(V) + 2")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(cmd: Optional[List[str]] = None) -> None:
    args = get_parser().parse_args(cmd)
    if args.model == "trained":
        if args.exp is None or args.data is None:
            raise SystemExit("--model trained needs --exp and --data")
        args.vocab = [0]  # one run, its own vocabulary
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    logging.info("machine: %s, %d CPUs, Python %s, torch %s, 1 thread; load average %s",
                 platform.processor() or platform.machine(), os.cpu_count(),
                 platform.python_version(), torch.__version__,
                 "/".join(f"{x:.2f}" for x in os.getloadavg()))
    ratios = {vocab: bench_vocab(vocab, args) for vocab in args.vocab}
    logging.info("load average after: %s", "/".join(f"{x:.2f}" for x in os.getloadavg()))
    for vocab, ratio in ratios.items():
        label = f"{args.head} RNN-T of {args.exp}" if args.model == "trained" else f"V={vocab}"
        print(f"speed ratio ESPnet default / ours, {label}: {ratio:.1f}x (target >= 10x)")


if __name__ == "__main__":
    main()
