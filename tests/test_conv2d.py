"""Chapter 2's claim: convbook.conv2d is torch.nn.functional.conv2d, output and gradients."""
import pytest
import torch

import convbook
from oracle import check_against_torch

DTYPES = [torch.float64, torch.float32]

CASES = {
    "plain_3x3": ((2, 3, 7, 7), (4, 3, 3, 3), {}),
    "stride_2": ((2, 3, 8, 9), (4, 3, 3, 3), dict(stride=2)),
    "stride_pair": ((2, 3, 8, 9), (4, 3, 3, 2), dict(stride=(2, 3))),
    "padding_1": ((2, 3, 6, 6), (4, 3, 3, 3), dict(padding=1)),
    "padding_pair": ((1, 2, 5, 6), (3, 2, 3, 3), dict(padding=(2, 0))),
    "dilation_2": ((2, 2, 9, 9), (3, 2, 3, 3), dict(dilation=2)),
    "dilation_pair_with_padding": ((1, 2, 9, 8), (3, 2, 3, 2), dict(dilation=(2, 3), padding=(1, 2))),
    "groups_2": ((2, 4, 6, 6), (6, 2, 3, 3), dict(groups=2)),
    "depthwise": ((2, 4, 6, 6), (4, 1, 3, 3), dict(groups=4, padding=1)),
    "depthwise_multiplier_2": ((2, 3, 6, 6), (6, 1, 3, 3), dict(groups=3)),
    "same_odd_kernel": ((2, 3, 6, 7), (4, 3, 3, 3), dict(padding="same")),
    "same_even_kernel_is_asymmetric": ((2, 3, 6, 7), (4, 3, 4, 2), dict(padding="same")),
    "same_with_dilation": ((1, 2, 7, 7), (2, 2, 2, 3), dict(padding="same", dilation=(3, 2))),
    "valid": ((2, 3, 6, 7), (4, 3, 3, 3), dict(padding="valid")),
    "kernel_1x1": ((2, 5, 4, 4), (3, 5, 1, 1), {}),
    "kernel_1x1_stride_2": ((2, 5, 5, 5), (3, 5, 1, 1), dict(stride=2)),
    "kernel_equals_input": ((2, 3, 4, 4), (2, 3, 4, 4), {}),
    "non_square_kernel": ((2, 3, 6, 8), (4, 3, 1, 5), dict(padding=(0, 2))),
    "everything_at_once": ((2, 6, 11, 10), (4, 3, 3, 2), dict(stride=(2, 1), padding=(1, 2), dilation=(2, 1), groups=2)),
    "stride_larger_than_kernel": ((1, 2, 9, 9), (2, 2, 2, 2), dict(stride=3)),
    "unbatched_input": ((3, 7, 7), (4, 3, 3, 3), dict(padding=1)),
    "empty_batch": ((0, 3, 7, 7), (4, 3, 3, 3), dict(padding=1)),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_conv2d_matches_pytorch(case, bias, dtype):
    input_shape, weight_shape, kwargs = CASES[case]
    check_against_torch("conv2d", input_shape, weight_shape, bias, dtype, **kwargs)


def test_conv2d_accepts_positional_arguments_in_pytorch_order():
    x, w, b = torch.randn(1, 2, 6, 6), torch.randn(2, 1, 3, 3), torch.randn(2)
    torch.testing.assert_close(convbook.conv2d(x, w, b, 2, 1, 1, 2),
                               torch.nn.functional.conv2d(x, w, b, 2, 1, 1, 2))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_conv2d_of_non_contiguous_inputs_matches_pytorch(dtype):
    transpose_hw = lambda t: t.transpose(2, 3).contiguous().transpose(2, 3) if t.dim() == 4 else t  # noqa: E731
    pairs = check_against_torch("conv2d", (2, 4, 7, 6), (6, 2, 3, 3), True, dtype,
                                prepare=transpose_hw, stride=2, padding=1, groups=2)
    assert pairs["output"][0].is_contiguous()


def test_conv2d_of_a_sliced_input_matches_pytorch():
    x = torch.randn(3, 8, 12, 12, dtype=torch.float64)[::2, ::2, 1::2, ::3]
    w = torch.randn(5, 4, 2, 2, dtype=torch.float64)[:, :, :, :]
    assert not x.is_contiguous()
    torch.testing.assert_close(convbook.conv2d(x, w, padding=1), torch.nn.functional.conv2d(x, w, padding=1),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("operand", ["input", "weight", "both"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_channels_last_gives_the_memory_format_pytorch_gives(operand, dtype):
    cl = torch.channels_last
    x = torch.randn(2, 4, 6, 6, dtype=dtype)
    w = torch.randn(6, 4, 3, 3, dtype=dtype)
    if operand in ("input", "both"):
        x = x.to(memory_format=cl)
    if operand in ("weight", "both"):
        w = w.to(memory_format=cl)
    results = {}
    for name, fn in (("convbook", convbook.conv2d), ("torch", torch.nn.functional.conv2d)):
        xi, wi = x.clone().requires_grad_(), w.clone().requires_grad_()
        y = fn(xi, wi, padding=1)
        gx, gw = torch.autograd.grad(y, (xi, wi), torch.ones_like(y))
        results[name] = [t.is_contiguous(memory_format=cl) and not t.is_contiguous() for t in (y, gx, gw)]
    assert results["convbook"] == results["torch"]


def test_inputs_are_never_modified():
    x, w, b = torch.randn(2, 4, 6, 6), torch.randn(6, 2, 3, 3), torch.randn(6)
    copies = [t.clone() for t in (x, w, b)]
    for t in (x, w, b):
        t.requires_grad_()
    y = convbook.conv2d(x, w, b, padding=1, groups=2)
    y.backward(torch.randn_like(y))
    grad_output = torch.randn_like(y)
    before = grad_output.clone()
    convbook.conv2d_backward(grad_output, x.detach(), w.detach(), padding=1, groups=2)
    assert all(torch.equal(t.detach(), c) for t, c in zip((x, w, b), copies))
    assert torch.equal(grad_output, before)


def test_dtype_is_preserved():
    for dtype in DTYPES:
        assert convbook.conv2d(torch.randn(1, 1, 3, 3, dtype=dtype), torch.randn(1, 1, 2, 2, dtype=dtype)).dtype == dtype


def test_zero_input_channels_give_the_bias_alone():
    """An empty sum is zero, so y = b. (PyTorch 2.13 returns a tensor with *zero* output channels
    here, a shortcut of its empty-input path; convbook keeps the shape of eq. 2.1.)"""
    x, w, b = torch.randn(2, 0, 5, 5), torch.randn(4, 0, 3, 3), torch.randn(4)
    y = convbook.conv2d(x, w, b, padding=1)
    assert y.shape == (2, 4, 5, 5)
    assert torch.equal(y, b.view(1, 4, 1, 1).expand(2, 4, 5, 5))
