"""Streaming and full-context encoders: batch invariance, incremental == parallel, geometry."""

import pytest
import torch
from espnet2.asr.encoder.conformer_encoder import ConformerEncoder
from espnet2.asr.encoder.contextual_block_conformer_encoder import (
    ContextualBlockConformerEncoder as ESPnetContextualBlockConformerEncoder,
)

from espnet2_dualmode.encoders.conformer_layer import MaskedConvolutionModule, subsampled_lengths
from espnet2_dualmode.encoders.contextual_block_conformer import ContextualBlockConformerEncoder
from espnet2_dualmode.encoders.full_context_conformer import FullContextConformerEncoder

TOL = 1e-4
FEAT = 12


def small_stream(block=8, hop=3, look_ahead=2, layers=3, channels=None
                 ) -> ContextualBlockConformerEncoder:
    torch.manual_seed(0)
    return ContextualBlockConformerEncoder(
        FEAT, output_size=16, attention_heads=2, linear_units=32, num_blocks=layers,
        cnn_module_kernel=5, block_size=block, hop_size=hop, look_ahead=look_ahead,
        subsampling_channels=channels).eval()


def padded_batch(lengths, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), max(lengths), FEAT, generator=g)
    for i, n in enumerate(lengths):  # garbage, not zeros, in the padding
        x[i, n:] = 50 * torch.randn(max(lengths) - n, FEAT, generator=g)
    return x, torch.tensor(lengths)


LENGTHS = [203, 64, 37, 9, 7]  # several blocks, < one block, exactly one output frame


@pytest.mark.parametrize("channels", [None, 6], ids=["conv_d", "conv_6"])
@pytest.mark.parametrize("geometry", [(8, 3, 2), (8, 4, 0), (6, 2, 4)])
def test_streaming_encoder_is_batch_invariant(geometry, channels):
    enc = small_stream(*geometry, channels=channels)
    x, lens = padded_batch(LENGTHS)
    with torch.no_grad():
        ys, olens, layers = enc.forward_layers(x, lens)
        assert olens.tolist() == subsampled_lengths(lens).tolist()
        for i, n in enumerate(LENGTHS):
            alone, alone_len, alone_layers = enc.forward_layers(x[i:i + 1, :n], lens[i:i + 1])
            m = int(alone_len)
            assert torch.allclose(alone[0], ys[i, :m], atol=TOL)
            for a, b in zip(alone_layers, layers):  # per-layer outputs used by sp-ED
                assert torch.allclose(a[0], b[i, :m], atol=TOL)


def test_espnet_contextual_block_encoder_leaks_padding():
    """The reason we have our own encoder: ESPnet's changes an utterance with its batch-mates."""
    torch.manual_seed(0)
    enc = ESPnetContextualBlockConformerEncoder(
        FEAT, output_size=16, attention_heads=2, linear_units=32, num_blocks=2,
        block_size=8, hop_size=3, look_ahead=2).eval()
    x, lens = padded_batch([203, 64])
    with torch.no_grad():
        ys, olens, _ = enc(x, lens)
        alone, alone_lens, _ = enc(x[1:2, :64], lens[1:2])
    n = int(min(alone_lens[0], olens[1]))
    assert (alone[0, :n] - ys[1, :n]).abs().max() > 1e-2


def test_full_context_encoder_is_batch_invariant_and_espnet_is_not():
    torch.manual_seed(0)
    ours = FullContextConformerEncoder(16, output_size=16, attention_heads=2, linear_units=32,
                                       num_blocks=2, cnn_module_kernel=5).eval()
    theirs = ConformerEncoder(16, output_size=16, attention_heads=2, linear_units=32, num_blocks=2,
                              cnn_module_kernel=5, input_layer=None, macaron_style=True,
                              rel_pos_type="latest", pos_enc_layer_type="rel_pos",
                              selfattention_layer_type="rel_selfattn", use_cnn_module=True).eval()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 30, 16, generator=g)
    x[1, 12:] = 30 * torch.randn(18, 16, generator=g)
    lens = torch.tensor([30, 12])
    with torch.no_grad():
        ys, _, _ = ours(x, lens)
        alone, _, _ = ours(x[1:2, :12], lens[1:2])
        assert torch.allclose(alone[0], ys[1, :12], atol=TOL)
        ys_e, _, _ = theirs(x, lens)
        alone_e, _, _ = theirs(x[1:2, :12], lens[1:2])
        assert (alone_e[0] - ys_e[1, :12]).abs().max() > 1e-2


def run_incremental(enc, feats, chunk_sizes):
    state = enc.init_state(1)
    outs, pos = [], 0
    for k, n in enumerate(chunk_sizes):
        chunk = feats[:, pos:pos + n]
        pos += n
        out, state = enc.forward_incremental(chunk, state, is_final=k == len(chunk_sizes) - 1)
        outs.append(out)
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("channels", [None, 6], ids=["conv_d", "conv_6"])
@pytest.mark.parametrize("seed", range(4))
def test_incremental_equals_parallel_for_random_chunks(seed, channels):
    enc = small_stream(channels=channels)
    x, lens = padded_batch(LENGTHS, seed=seed)
    g = torch.Generator().manual_seed(100 + seed)
    with torch.no_grad():
        ys, olens, _ = enc.forward_layers(x, lens)
        for i, n in enumerate(LENGTHS):
            sizes, left = [], n
            while left > 0:
                sizes.append(min(left, int(torch.randint(0, 20, (1,), generator=g))))
                left -= sizes[-1]
            inc = run_incremental(enc, x[i:i + 1, :n], sizes + [0])
            assert inc.shape[1] == int(olens[i])
            assert torch.allclose(inc[0], ys[i, :olens[i]], atol=TOL)


def test_incremental_emits_frames_exactly_when_their_look_ahead_arrived():
    """After each non-final call, the frames out are those of every block whose frames can
    all be computed from the features received: none early, none held back."""
    enc = small_stream(block=8, hop=3, look_ahead=2)
    x, _ = padded_batch([203])
    state = enc.init_state(1)
    emitted = 0
    with torch.no_grad():
        for t in range(0, 203, 5):
            out, _ = enc.forward_incremental(x[:, t:t + 5], state)
            emitted += out.size(1)
            available = int(subsampled_lengths(torch.tensor(min(t + 5, 203))))
            ready = [b for b in range(enc.num_blocks_for(available))
                     if b * enc.hop_size + enc.block_size <= available]
            expected = enc.emission_range(ready[-1])[1] if ready else 0
            assert emitted == state.n_emitted == expected
    assert emitted > 0


def test_incremental_rejects_use_after_final():
    enc = small_stream()
    state = enc.init_state(1)
    x, _ = padded_batch([40])
    with torch.no_grad():
        enc.forward_incremental(x, state, is_final=True)
        with pytest.raises(RuntimeError, match="after is_final"):
            enc.forward_incremental(x, state)


def test_block_geometry_and_errors():
    enc = small_stream(block=40, hop=16, look_ahead=16, layers=1)
    assert enc.past == 8
    assert enc.emission_range(0) == (0, 24)
    assert enc.emission_range(1) == (24, 40)
    assert enc.emission_range(2) == (40, 56)
    assert enc.num_blocks_for(24) == 1 and enc.num_blocks_for(25) == 2 and enc.num_blocks_for(0) == 0
    with pytest.raises(ValueError, match="block_size >= hop_size \\+ look_ahead"):
        ContextualBlockConformerEncoder(FEAT, block_size=10, hop_size=8, look_ahead=4)
    with pytest.raises(ValueError, match="fewer than 7 feature frames"):
        enc(torch.zeros(2, 20, FEAT), torch.tensor([20, 5]))


def test_masked_convolution_module_equals_its_conv1d_layers():
    """The pointwise convolutions run as matrix products: same output as the module's own
    Conv1d layers applied in order, padded frames zeroed before the depthwise one."""
    torch.manual_seed(0)
    module = MaskedConvolutionModule(16, 5).eval()
    x = torch.randn(3, 11, 16)
    mask = torch.arange(11) < torch.tensor([[11], [7], [2]])
    with torch.no_grad():
        h = torch.nn.functional.glu(module.pointwise_conv1(x.transpose(1, 2)), dim=1)
        h = module.depthwise_conv(h.masked_fill(~mask.unsqueeze(1), 0.0))
        h = module.activation(module.norm(h.transpose(1, 2))).transpose(1, 2)
        expected = module.pointwise_conv2(h).transpose(1, 2)
        assert torch.allclose(module(x, mask), expected, atol=1e-5)


def test_a_frame_shared_by_two_blocks_has_other_states_in_each():
    """Why the block encoder recomputes each block's overlap instead of caching its keys and
    values (issue 12, item 1): from the first layer on, a frame's state depends on the block
    it is computed in (its attention sees that block's frames and context embeddings), so
    reusing the previous block's keys/values would compute another model than the parallel
    path. The gap is far above the 1e-4 the incremental path is held to."""
    enc = small_stream(block=8, hop=3, look_ahead=2, layers=2)
    with torch.no_grad():
        x = enc._embed(torch.randn(1, 4 * 20 + 3, FEAT, generator=torch.Generator().manual_seed(0)), 0)
    states, inherited = [], None
    ones = torch.ones(1, 8, dtype=torch.bool)
    for b in (0, 1):  # blocks 0 and 1 share the frames 3..7; block 1 inherits block 0's context
        frames = x[:, 3 * b:3 * b + 8]
        ctx = enc._context_init(frames, ones, torch.tensor([b]))
        inherited = ctx if inherited is None else inherited
        out = enc.encoders[0].forward_block(torch.cat([frames, ctx.unsqueeze(1)], 1), inherited,
                                            ones)
        states.append(out[:, :-1].detach())
        inherited = ctx
    shared_in_0, shared_in_1 = states[0][:, 3:8], states[1][:, 0:5]
    gap = float((shared_in_0 - shared_in_1).norm() / shared_in_0.norm())
    assert gap > 100 * TOL, gap
