"""Chapter 3 and 4's claims about the backward: the explicit backward functions equal PyTorch's
gradients, each gradient is the other operation, and double backward works."""
import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

import convbook
from convbook import autograd as wiring
from oracle import assert_close_to_torch

DTYPES = [torch.float64, torch.float32]
CONV_CASES = {
    "stride_2_padding_1": ((2, 4, 7, 6), (6, 2, 3, 3), dict(stride=2, padding=1, groups=2)),
    "dilation_2_groups_2": ((1, 4, 8, 8), (4, 2, 3, 2), dict(dilation=2, groups=2)),
    "same_even_kernel": ((2, 3, 6, 5), (2, 3, 2, 4), dict(padding="same")),
    "unbatched": ((3, 6, 6), (4, 3, 3, 3), dict(stride=(1, 2), padding=(1, 0))),
}
TRANSPOSED_CASES = {
    "stride_2_output_padding_1": ((2, 4, 4, 5), (4, 3, 3, 3), dict(stride=2, padding=1, output_padding=1, groups=2)),
    "dilation_2": ((1, 2, 4, 4), (2, 3, 3, 2), dict(dilation=2, output_padding=1)),
    "unbatched": ((3, 4, 4), (3, 2, 2, 2), dict(stride=2)),
}


def torch_grads(fn, grad_output, x, w, **kwargs):
    x, w = x.clone().requires_grad_(), w.clone().requires_grad_()
    b = torch.zeros(w.shape[0] if fn is F.conv2d else w.shape[1] * kwargs.get("groups", 1), dtype=x.dtype,
                    requires_grad=True)
    return torch.autograd.grad(fn(x, w, b, **kwargs), (x, w, b), grad_output)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv2d_backward_equals_pytorch_autograd(case, dtype):
    input_shape, weight_shape, kwargs = CONV_CASES[case]
    x, w = torch.randn(input_shape, dtype=dtype), torch.randn(weight_shape, dtype=dtype)
    grad_output = torch.randn_like(F.conv2d(x, w, **kwargs))
    mine = convbook.conv2d_backward(grad_output, x, w, **kwargs)
    for name, a, b in zip(("grad_input", "grad_weight", "grad_bias"), mine, torch_grads(F.conv2d, grad_output, x, w, **kwargs)):
        assert_close_to_torch(a, b, name)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", TRANSPOSED_CASES, ids=str)
def test_conv_transpose2d_backward_equals_pytorch_autograd(case, dtype):
    input_shape, weight_shape, kwargs = TRANSPOSED_CASES[case]
    x, w = torch.randn(input_shape, dtype=dtype), torch.randn(weight_shape, dtype=dtype)
    grad_output = torch.randn_like(F.conv_transpose2d(x, w, **kwargs))
    mine = convbook.conv_transpose2d_backward(grad_output, x, w, **kwargs)
    theirs = torch_grads(F.conv_transpose2d, grad_output, x, w, **kwargs)
    for name, a, b in zip(("grad_input", "grad_weight", "grad_bias"), mine, theirs):
        assert_close_to_torch(a, b, name)


def test_grad_bias_is_returned_for_a_layer_without_bias():
    x, w = torch.randn(2, 3, 5, 5, dtype=torch.float64), torch.randn(4, 3, 3, 3, dtype=torch.float64)
    grad_output = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    *_, grad_bias = convbook.conv2d_backward(grad_output, x, w)
    torch.testing.assert_close(grad_bias, grad_output.sum((0, 2, 3)))


def test_grad_input_of_conv2d_is_a_transposed_convolution():
    x, w = torch.randn(2, 4, 9, 8, dtype=torch.float64), torch.randn(6, 2, 3, 3, dtype=torch.float64)
    grad_output = torch.randn(2, 6, 5, 4, dtype=torch.float64)
    grad_input, _, _ = convbook.conv2d_backward(grad_output, x, w, stride=2, padding=1, groups=2)
    # a stride-2 conv maps 9 or 10 rows to 5, and 7 or 8 columns to 4: output_padding picks 9 and 8 (eq. 4.4)
    as_transposed = convbook.conv_transpose2d(grad_output, w, stride=2, padding=1, output_padding=(0, 1), groups=2)
    torch.testing.assert_close(grad_input, as_transposed, rtol=0, atol=0)


def test_grad_input_of_conv_transpose2d_is_a_convolution():
    x, w = torch.randn(2, 4, 4, 4, dtype=torch.float64), torch.randn(4, 3, 3, 3, dtype=torch.float64)
    grad_output = torch.randn(2, 6, 8, 8, dtype=torch.float64)
    grad_input, _, _ = convbook.conv_transpose2d_backward(grad_output, x, w, stride=2, padding=1, output_padding=1,
                                                          groups=2)
    torch.testing.assert_close(grad_input, convbook.conv2d(grad_output, w, stride=2, padding=1, groups=2),
                               rtol=0, atol=0)


def test_grad_weight_is_a_correlation_of_input_and_grad_output():
    """∂L/∂w[o,c,u,v] = Σ G[n,o,i,j] x[n,c,s·i+d·u−p, ...]: for one image and one channel it is the
    input correlated with G used as a kernel, with stride and dilation swapped (eq. 3.3)."""
    x, w = torch.randn(1, 1, 11, 11, dtype=torch.float64), torch.randn(1, 1, 3, 3, dtype=torch.float64)
    grad_output = torch.randn(1, 1, 6, 6, dtype=torch.float64)
    _, grad_weight, _ = convbook.conv2d_backward(grad_output, x, w, stride=2, padding=1, dilation=1)
    swapped = convbook.conv2d(x, grad_output, stride=1, padding=1, dilation=2)
    torch.testing.assert_close(grad_weight, swapped, rtol=0, atol=1e-12)


def test_autograd_backward_calls_the_explicit_backward_functions(monkeypatch):
    calls = []
    original = wiring.conv2d_grads
    monkeypatch.setattr(wiring, "conv2d_grads", lambda *a, **k: calls.append(1) or original(*a, **k))
    x = torch.randn(1, 2, 5, 5, requires_grad=True)
    convbook.conv2d(x, torch.randn(3, 2, 3, 3)).sum().backward()
    assert calls == [1]


def test_the_backward_is_not_autograd_through_the_forward():
    """The output's grad_fn is convbook's own Function, not a chain of einsum/as_strided nodes."""
    x = torch.randn(1, 2, 5, 5, requires_grad=True)
    assert type(convbook.conv2d(x, torch.randn(3, 2, 3, 3)).grad_fn).__name__ == "CorrelateBackward"
    assert type(convbook.conv_transpose2d(x, torch.randn(2, 3, 3, 3)).grad_fn).__name__ == "CorrelateTransposeBackward"


GRADCHECK_CONV = [
    dict(stride=2, padding=1),
    dict(dilation=2, groups=2),
    dict(stride=(2, 1), padding=(0, 1), dilation=(1, 2), groups=2),
    dict(padding="same", dilation=(1, 2)),
]
GRADCHECK_TRANSPOSED = [
    dict(stride=2, padding=1, output_padding=1),
    dict(dilation=2, groups=2, output_padding=1),
    dict(stride=(2, 3), padding=(1, 0), output_padding=(1, 2), groups=2),
]


def _leaves(*shapes):
    return [torch.randn(*s, dtype=torch.float64, requires_grad=True) for s in shapes]


@pytest.mark.parametrize("kwargs", GRADCHECK_CONV, ids=str)
def test_conv2d_passes_gradcheck_and_gradgradcheck(kwargs):
    x, w, b = _leaves((2, 4, 6, 5), (4, 2 if kwargs.get("groups") else 4, 3, 2), (4,))
    fn = lambda x, w, b: convbook.conv2d(x, w, b, **kwargs)  # noqa: E731
    assert gradcheck(fn, (x, w, b))
    assert gradgradcheck(fn, (x, w, b))


@pytest.mark.parametrize("kwargs", GRADCHECK_TRANSPOSED, ids=str)
def test_conv_transpose2d_passes_gradcheck_and_gradgradcheck(kwargs):
    groups = kwargs.get("groups", 1)
    x, w, b = _leaves((2, 4, 3, 3), (4, 2, 3, 2), (2 * groups,))
    fn = lambda x, w, b: convbook.conv_transpose2d(x, w, b, **kwargs)  # noqa: E731
    assert gradcheck(fn, (x, w, b))
    assert gradgradcheck(fn, (x, w, b))


def test_explicit_backward_functions_are_differentiable():
    x, w, grad_output = _leaves((1, 2, 5, 5), (3, 2, 3, 3), (1, 3, 3, 3))
    assert gradcheck(lambda g, x, w: convbook.conv2d_backward(g, x, w)[:2], (grad_output, x, w))
    y, wt, grad_x = _leaves((1, 2, 3, 3), (2, 3, 3, 3), (1, 3, 8, 8))
    assert gradcheck(lambda g, y, w: convbook.conv_transpose2d_backward(g, y, w, stride=2, output_padding=1)[:2],
                     (grad_x, y, wt))


def test_double_backward_matches_pytorch():
    """Hessian-vector products through convbook equal PyTorch's."""
    results = []
    for fn in (convbook.conv2d, F.conv2d):
        torch.manual_seed(0)
        x, w = _leaves((2, 2, 6, 6), (3, 2, 3, 3))
        y = fn(x, w, stride=2, padding=1)
        gx, gw = torch.autograd.grad(y.square().sum(), (x, w), create_graph=True)
        results.append(torch.autograd.grad((gx.sin().sum() + gw.cos().sum()), (x, w)))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
