"""The loop references follow the formulas literally -- and they too agree with PyTorch."""
import pytest
import torch
import torch.nn.functional as F

from convbook import reference

D = torch.float64
CASES = [
    dict(stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1),
    dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2),
    dict(stride=(2, 3), padding=(2, 0), dilation=(2, 1), groups=2),
]


def operands(groups):
    torch.manual_seed(0)
    return (torch.randn(2, 4, 6, 7, dtype=D), torch.randn(4, 4 // groups, 3, 2, dtype=D), torch.randn(4, dtype=D))


@pytest.mark.parametrize("kw", CASES, ids=str)
def test_loop_conv2d_is_eq_2_1_and_matches_pytorch(kw):
    x, w, b = operands(kw["groups"])
    torch.testing.assert_close(reference.conv2d(x, w, b, **kw), F.conv2d(x, w, b, **kw), rtol=0, atol=1e-12)


def test_loop_conv2d_with_asymmetric_same_padding_matches_pytorch():
    x, w, b = operands(1)
    w = torch.randn(4, 4, 2, 4, dtype=D)
    ours = reference.conv2d(x, w, b, padding=(0, 1), padding_after=(1, 2))
    torch.testing.assert_close(ours, F.conv2d(x, w, b, padding="same"), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kw", CASES, ids=str)
def test_loop_gradients_are_eqs_3_2_to_3_4_and_match_pytorch(kw):
    x, w, b = operands(kw["groups"])
    x.requires_grad_(), w.requires_grad_(), b.requires_grad_()
    y = F.conv2d(x, w, b, **kw)
    grad_output = torch.randn_like(y)
    gx, gw, gb = torch.autograd.grad(y, (x, w, b), grad_output)
    x, w = x.detach(), w.detach()
    torch.testing.assert_close(reference.conv2d_grad_input(grad_output, w, x.shape, kw["stride"], kw["padding"],
                                                           kw["dilation"], kw["groups"]), gx, rtol=0, atol=1e-12)
    torch.testing.assert_close(reference.conv2d_grad_weight(grad_output, x, w.shape, kw["stride"], kw["padding"],
                                                            kw["dilation"], kw["groups"]), gw, rtol=0, atol=1e-12)
    torch.testing.assert_close(reference.conv2d_grad_bias(grad_output), gb, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kw, output_padding", [(CASES[0], (0, 0)), (CASES[1], (1, 1)), (CASES[2], (1, 0))], ids=str)
def test_loop_conv_transpose2d_is_eq_4_1_and_matches_pytorch(kw, output_padding):
    x, w, _ = operands(kw["groups"])
    w = w.transpose(0, 1).reshape(4, -1, 3, 2).contiguous() if kw["groups"] == 1 else torch.randn(4, 2, 3, 2, dtype=D)
    b = torch.randn(w.shape[1] * kw["groups"], dtype=D)
    ours = reference.conv_transpose2d(x, w, b, kw["stride"], kw["padding"], output_padding, kw["groups"], kw["dilation"])
    theirs = F.conv_transpose2d(x, w, b, kw["stride"], kw["padding"], output_padding, kw["groups"], kw["dilation"])
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
