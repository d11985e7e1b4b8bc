"""Property tests: for any valid configuration, convbook equals PyTorch (hypothesis)."""
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oracle import check_against_torch

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def conv2d_configs(draw):
    groups = draw(st.integers(1, 3))
    in_channels = groups * draw(st.integers(1, 2))
    out_channels = groups * draw(st.integers(1, 2))
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = draw(st.one_of(st.tuples(st.integers(0, 2), st.integers(0, 2)), st.sampled_from(["same", "valid"])))
    stride = (1, 1) if padding == "same" else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    pads = (0, 0) if isinstance(padding, str) else padding
    size = [draw(st.integers(max(1, d * (k - 1) + 1 - 2 * p), 8)) for k, d, p in zip(kernel, dilation, pads)]
    batch = draw(st.integers(0, 2))
    shape = (batch, in_channels, *size) if draw(st.booleans()) or batch != 1 else (in_channels, *size)
    return dict(input_shape=shape, weight_shape=(out_channels, in_channels // groups, *kernel),
                bias=draw(st.booleans()), dtype=draw(st.sampled_from([torch.float64, torch.float32])),
                kwargs=dict(stride=stride, padding=padding, dilation=dilation, groups=groups))


@st.composite
def conv_transpose2d_configs(draw):
    groups = draw(st.integers(1, 3))
    in_channels = groups * draw(st.integers(1, 2))
    out_per_group = draw(st.integers(1, 2))
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    output_padding = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
    size = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    padding = tuple(draw(st.integers(0, max(0, ((h - 1) * s + d * (k - 1) + a) // 2)))
                    for h, s, d, k, a in zip(size, stride, dilation, kernel, output_padding))
    return dict(input_shape=(draw(st.integers(0, 2)), in_channels, *size),
                weight_shape=(in_channels, out_per_group, *kernel), bias=draw(st.booleans()),
                dtype=draw(st.sampled_from([torch.float64, torch.float32])),
                kwargs=dict(stride=stride, padding=padding, output_padding=output_padding, groups=groups,
                            dilation=dilation))


@SETTINGS
@given(conv2d_configs())
def test_any_valid_conv2d_matches_pytorch(config):
    check_against_torch("conv2d", config["input_shape"], config["weight_shape"], config["bias"], config["dtype"],
                        **config["kwargs"])


@SETTINGS
@given(conv_transpose2d_configs())
def test_any_valid_conv_transpose2d_matches_pytorch(config):
    check_against_torch("conv_transpose2d", config["input_shape"], config["weight_shape"], config["bias"],
                        config["dtype"], **config["kwargs"])
