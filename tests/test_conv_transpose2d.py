"""Chapter 4's claim: convbook.conv_transpose2d is torch.nn.functional.conv_transpose2d."""
import pytest
import torch

import convbook
from oracle import check_against_torch

DTYPES = [torch.float64, torch.float32]

CASES = {
    "plain_3x3": ((2, 3, 5, 5), (3, 4, 3, 3), {}),
    "stride_2": ((2, 3, 5, 6), (3, 4, 3, 3), dict(stride=2)),
    "stride_2_kernel_2": ((2, 3, 4, 4), (3, 2, 2, 2), dict(stride=2)),
    "stride_2_kernel_4_padding_1": ((2, 3, 4, 4), (3, 2, 4, 4), dict(stride=2, padding=1)),
    "stride_pair": ((1, 2, 4, 5), (2, 3, 3, 2), dict(stride=(3, 2))),
    "padding_1": ((2, 3, 5, 5), (3, 4, 3, 3), dict(padding=1)),
    "padding_crops_more_than_stride": ((1, 2, 6, 6), (2, 2, 3, 3), dict(padding=2)),
    "output_padding_1": ((2, 3, 4, 4), (3, 2, 3, 3), dict(stride=2, padding=1, output_padding=1)),
    "output_padding_pair": ((1, 2, 4, 5), (2, 3, 3, 3), dict(stride=(3, 2), output_padding=(2, 1))),
    "output_padding_below_dilation": ((1, 2, 4, 4), (2, 2, 3, 3), dict(dilation=2, output_padding=1)),
    "dilation_2": ((2, 2, 5, 5), (2, 3, 3, 3), dict(dilation=2)),
    "groups_2": ((2, 4, 5, 5), (4, 3, 3, 3), dict(groups=2)),
    "depthwise": ((2, 4, 5, 5), (4, 1, 3, 3), dict(groups=4, stride=2)),
    "everything_at_once": ((2, 4, 5, 4), (4, 3, 3, 2), dict(stride=(2, 3), padding=(1, 0), output_padding=(1, 2),
                                                            dilation=(2, 1), groups=2)),
    "kernel_1x1": ((2, 5, 4, 4), (5, 3, 1, 1), {}),
    "single_pixel_input": ((2, 3, 1, 1), (3, 2, 3, 3), dict(stride=2)),
    "unbatched_input": ((3, 5, 5), (3, 4, 3, 3), dict(stride=2, output_padding=1)),
    "empty_batch": ((0, 3, 5, 5), (3, 4, 3, 3), dict(stride=2)),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_conv_transpose2d_matches_pytorch(case, bias, dtype):
    input_shape, weight_shape, kwargs = CASES[case]
    check_against_torch("conv_transpose2d", input_shape, weight_shape, bias, dtype, **kwargs)


def test_conv_transpose2d_accepts_positional_arguments_in_pytorch_order():
    x, w, b = torch.randn(1, 2, 4, 4), torch.randn(2, 3, 3, 3), torch.randn(6)
    torch.testing.assert_close(convbook.conv_transpose2d(x, w, b, 2, 1, 1, 2, 1),
                               torch.nn.functional.conv_transpose2d(x, w, b, 2, 1, 1, 2, 1))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_conv_transpose2d_of_non_contiguous_inputs_matches_pytorch(dtype):
    transpose_hw = lambda t: t.transpose(2, 3).contiguous().transpose(2, 3)  # noqa: E731
    check_against_torch("conv_transpose2d", (2, 4, 5, 4), (4, 3, 3, 3), True, dtype, prepare=transpose_hw,
                        stride=2, padding=1, groups=2)


@pytest.mark.parametrize("operand", ["input", "weight"])
def test_channels_last_transposed_gives_the_memory_format_pytorch_gives(operand):
    cl = torch.channels_last
    x, w = torch.randn(2, 4, 5, 5), torch.randn(4, 3, 3, 3)
    x, w = (x.to(memory_format=cl), w) if operand == "input" else (x, w.to(memory_format=cl))
    formats = []
    for fn in (convbook.conv_transpose2d, torch.nn.functional.conv_transpose2d):
        xi, wi = x.clone().requires_grad_(), w.clone().requires_grad_()
        y = fn(xi, wi, stride=2)
        gx, gw = torch.autograd.grad(y, (xi, wi), torch.ones_like(y))
        formats.append([t.is_contiguous(memory_format=cl) and not t.is_contiguous() for t in (y, gx, gw)])
    assert formats[0] == formats[1]
