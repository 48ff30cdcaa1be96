"""The encoders' conv2d subsampling with a narrower convolution (``subsampling_channels``)."""

import pytest
import torch
from espnet.nets.pytorch_backend.transformer.subsampling_without_posenc import (
    Conv2dSubsamplingWOPosEnc,
)

from espnet2_dualmode.encoders.conformer_layer import subsampled_lengths
from espnet2_dualmode.encoders.contextual_block_conformer import ContextualBlockConformerEncoder
from espnet2_dualmode.encoders.subsampling import conv2d_subsampling

F, D = 20, 24


@pytest.mark.parametrize("channels", [None, D])
def test_default_width_is_espnets_module(channels):
    """Same parameter names and shapes as ESPnet's (checkpoints load), same output."""
    torch.manual_seed(0)
    ours = conv2d_subsampling(F, D, 0.0, channels)
    espnet = Conv2dSubsamplingWOPosEnc(F, D, 0.0, [3, 3], [2, 2])
    assert {k: v.shape for k, v in ours.state_dict().items()} == \
        {k: v.shape for k, v in espnet.state_dict().items()}
    espnet.load_state_dict(ours.state_dict())
    x = torch.randn(2, 41, F)
    torch.testing.assert_close(ours(x, None)[0], espnet(x, None)[0], rtol=0, atol=0)


@pytest.mark.parametrize("frames", [7, 8, 10, 11, 41, 203])
def test_narrow_width_keeps_the_frame_rate_and_output_size(frames):
    embed = conv2d_subsampling(F, D, 0.0, channels=6)
    out, _ = embed(torch.randn(3, frames, F), None)
    assert out.shape == (3, int(subsampled_lengths(torch.tensor([frames]))), D)
    narrow = sum(p.numel() for p in embed.parameters())
    default = sum(p.numel() for p in conv2d_subsampling(F, D, 0.0).parameters())
    assert narrow < default / 2


def test_narrow_width_keeps_the_receptive_field():
    """Output frame t depends on input frames 4t .. 4t+6 and on no other (what the
    incremental encoders rely on): a change outside the window leaves it unchanged, one
    inside changes it."""
    torch.manual_seed(0)
    embed = conv2d_subsampling(F, D, 0.0, channels=6).eval()
    x = torch.randn(1, 43, F)
    base, _ = embed(x, None)
    t = 4
    for frame, inside in ((4 * t - 1, False), (4 * t, True), (4 * t + 6, True), (4 * t + 7, False)):
        y = x.clone()
        y[0, frame] += 3.0
        out, _ = embed(y, None)
        changed = not torch.equal(out[0, t], base[0, t])
        assert changed == inside, (frame, inside)


def test_bad_width_is_refused():
    with pytest.raises(ValueError, match="subsampling_channels must be >= 1"):
        conv2d_subsampling(F, D, 0.0, channels=0)


def test_an_encoder_built_with_it_costs_less_subsampling():
    """The option reaches the encoder (and so its YAML conf)."""
    enc = ContextualBlockConformerEncoder(F, output_size=D, attention_heads=2, linear_units=32,
                                          num_blocks=1, block_size=8, hop_size=3, look_ahead=2,
                                          subsampling_channels=4)
    assert [m.out_channels for m in enc.embed.conv if isinstance(m, torch.nn.Conv2d)] == [4, 4]
