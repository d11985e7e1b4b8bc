"""Chapter 7's matrix product: a wide product in float32 runs on oneDNN's inner product and is as accurate
as ``torch.bmm``; every other product is ``torch.bmm`` itself.

In float32 a long sum depends on its order: past a few hundred unit-normal terms two correct orders differ
by more than torch.testing's defaults (book chapter 5, "The reference for float32"). So the float32 claims
here are normwise, against the exact answer (the same operands in float64): ``max |a − e| / max |e|`` at
most twice that of the MKL product it stands for, and for whole layers at most twice that of PyTorch's
own convolution -- except the forced ``channels_last`` strategy, whose one-chain sums are held to the
bound of a sum in any order, entry by entry."""
import pytest
import torch
import torch.nn.functional as F

import convbook
from convbook import metrics, products, strategies, sweep
from convbook.dispatch import convolution_ops, record_aten_ops
from oracle import check_against_torch

def _normwise(result, exact):
    return metrics.errors(result, exact).max_rel


def _operands(batch, m, k, n, shared, transposed, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=g, dtype=dtype).expand(batch, m, k) if shared else \
        torch.randn(batch, m, k, generator=g, dtype=dtype)
    b = torch.randn(batch, n, k, generator=g, dtype=dtype).transpose(1, 2) if transposed else \
        torch.randn(batch, k, n, generator=g, dtype=dtype)
    return a, b


@pytest.mark.parametrize("shared", [True, False], ids=["one_weight", "a_weight_per_matrix"])
@pytest.mark.parametrize("transposed", [False, True], ids=["b_rows", "b_transposed"])
@pytest.mark.parametrize("m,k,n", [(8, 21, products.WIDE), (21, products.WIDE + 3, 8)], ids=["wide_n", "wide_k"])
def test_a_wide_float32_product_is_onednns_inner_product_and_as_accurate_as_bmm(shared, transposed, m, k, n):
    a, b = _operands(2, m, k, n, shared, transposed)
    out = torch.full((2, m, n), float("nan"))
    with record_aten_ops() as ops:
        result = products.bmm(a, b, out)
    assert result is out and ops["mkldnn._linear_pointwise"] == 2 and ops["aten.bmm"] == 0
    exact = torch.bmm(a.double(), b.double())
    mine, mkl = _normwise(out, exact), _normwise(torch.bmm(a, b), exact)
    assert mine <= 2 * mkl, (mine, mkl)


@pytest.mark.parametrize("dtype,m,k,n", [(torch.float32, 8, 21, products.WIDE - 1), (torch.float64, 8, 21, products.WIDE),
                                         (torch.float32, 22, 21, products.WIDE)],
                         ids=["narrow_float32", "wide_float64", "wide_but_taller_than_deep"])
def test_every_other_product_is_torch_bmm(dtype, m, k, n):
    a, b = _operands(2, m, k, n, True, False, dtype)
    out = torch.empty(2, m, n, dtype=dtype)
    with record_aten_ops() as ops:
        products.bmm(a, b, out)
    assert ops["aten.bmm"] == 1 and ops["mkldnn._linear_pointwise"] == 0
    assert torch.equal(out, torch.bmm(a, b))


def test_with_onednn_switched_off_a_wide_product_is_torch_bmm():
    a, b = _operands(2, 8, 21, products.WIDE, True, False)
    out = torch.empty(2, 8, products.WIDE)
    with torch.backends.mkldnn.flags(enabled=False), record_aten_ops() as ops:
        products.bmm(a, b, out)
    assert ops["aten.bmm"] == 1 and ops["mkldnn._linear_pointwise"] == 0


# layers whose im2col or col2im products are wide: more than WIDE output positions per image
WIDE_CASES = {
    "conv_stem": ("conv2d", (2, 3, 184, 184), (32, 3, 7, 7), dict(stride=2, padding=3)),
    "transposed_stem_adjoint": ("conv_transpose2d", (2, 32, 92, 92), (32, 3, 7, 7),
                                dict(stride=2, padding=3, output_padding=1)),
}


@pytest.mark.parametrize("case", WIDE_CASES)
def test_a_layer_with_wide_products_is_pytorchs_in_float64(case):
    op, input_shape, weight_shape, kwargs = WIDE_CASES[case]
    check_against_torch(op, input_shape, weight_shape, dtype=torch.float64, **kwargs)


def _float32_layer(op, input_shape, weight_shape, **kwargs):
    """Seeded float32 operands (x, w, b, grad_output) of one layer and its exact results (``sweep.results`` of
    PyTorch's convolution on the same operands in float64)."""
    native = F.conv2d if op == "conv2d" else F.conv_transpose2d
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(*input_shape, generator=g), torch.randn(*weight_shape, generator=g)
    b = torch.randn(w.shape[0] if op == "conv2d" else w.shape[1], generator=g)
    grad_output = torch.randn(native(x, w, b, **kwargs).shape, generator=g)
    return (x, w, b, grad_output), sweep.results(native, *(t.double() for t in (x, w, b, grad_output)), **kwargs)


@pytest.mark.parametrize("case", WIDE_CASES)
def test_in_float32_a_layer_with_wide_products_is_as_accurate_as_pytorchs_own(case):
    """Forward and all three gradients through oneDNN's inner product: normwise no further from the exact
    answer than twice PyTorch's own convolution is. (Measured on the stem: the outputs and input gradients
    as near as PyTorch's; the weight gradients, sums of 8 464 products per image, 0.3 times PyTorch's error
    and 2.3 times that of the same strategies multiplying with MKL.)"""
    op, input_shape, weight_shape, kwargs = WIDE_CASES[case]
    native = F.conv2d if op == "conv2d" else F.conv_transpose2d
    (x, w, b, grad_output), exact = _float32_layer(op, input_shape, weight_shape, **kwargs)
    theirs = sweep.results(native, x, w, b, grad_output, **kwargs)
    with record_aten_ops() as ops:
        mine = sweep.results(getattr(convbook, op), x, w, b, grad_output, **kwargs)
    assert ops["mkldnn._linear_pointwise"] > 0 and convolution_ops(ops) == []
    for field in mine:
        errors = {name: _normwise(r[field], exact[field]) for name, r in (("convbook", mine), ("pytorch", theirs))}
        assert errors["convbook"] <= 2 * errors["pytorch"], (field, errors)


def test_in_float32_channels_last_is_within_the_a_priori_bound_of_a_sum_in_any_order():
    """channels_last (forced: the dispatcher does not pick it) multiplies on oneDNN's inner product, which sums
    each window's K = 9·64 = 576 products in one chain: its outputs and input gradients are normwise 2-3.6
    times as far from the exact answer as PyTorch's own convolution (measured 6.5e-7 to 1.1e-6, PyTorch 2.6e-7
    to 4.0e-7). Every entry is within the bound that holds for any order of a K-term float32 sum,
    ``|ŷ − y| ≤ γ_K · (|W|·|X|)``, ``γ_K = K·u / (1 − K·u)`` (Higham, Accuracy and Stability, Thm. 3.1;
    book eq. verification-sum-bound)."""
    kwargs = dict(padding=1)
    (x, w, b, grad_output), exact = _float32_layer("conv2d", (2, 64, 28, 28), (64, 64, 3, 3), **kwargs)
    magnitude = sweep.results(F.conv2d, *(t.double().abs() for t in (x, w, b, grad_output)), **kwargs)
    with strategies.forced(correlate="channels_last", correlate_pair="channels_last"), record_aten_ops() as ops:
        mine = sweep.results(convbook.conv2d, x, w, b, grad_output, **kwargs)
    assert ops["mkldnn._linear_pointwise"] > 0 and convolution_ops(ops) == []
    u = 2.0 ** -24
    terms = {"output": w[0].numel() + 1, "grad_input": w.shape[0] * 9, "grad_weight": x.shape[0] * x.shape[2] * x.shape[3]}
    for field, k in terms.items():
        gamma = k * u / (1 - k * u)
        assert ((mine[field].double() - exact[field]).abs() <= gamma * magnitude[field]).all(), field


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_linear_is_x_times_w_transposed_on_onednn_in_float32_only(dtype):
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(37, 21, generator=g, dtype=dtype), torch.randn(5, 21, generator=g, dtype=dtype)
    for weight in (w, torch.randn(21, 5, generator=g, dtype=dtype).t()):          # any strides
        with record_aten_ops() as ops:
            result = products.linear(x, weight)
        exact = x.double() @ weight.double().t()
        assert result.shape == (37, 5) and result.dtype == dtype
        assert _normwise(result, exact) <= (1e-6 if dtype == torch.float32 else 1e-15)
        onednn = dtype == torch.float32 and torch.backends.mkldnn.is_available()
        assert ops["mkldnn._linear_pointwise"] == int(onednn) and ops["aten.mm"] == int(not onednn)


def test_the_stems_training_step_multiplies_its_forward_and_weight_gradient_on_onednn():
    x = torch.randn(2, 3, 184, 184, requires_grad=True)
    w = torch.randn(32, 3, 7, 7, requires_grad=True)
    assert tuple(s for s, _ in convbook.explain("conv2d", x.shape, w.shape, stride=2, padding=3).values()) == \
        ("im2col", "col2im", "im2col", "separate")
    with record_aten_ops() as ops:
        convbook.conv2d(x, w, stride=2, padding=3).backward(torch.randn(2, 32, 92, 92))
    # per image: the forward W·X_col and the weight gradient X_col·Gᵀ; the input gradient's Wᵀ·G (147 × 32,
    # taller than deep) by torch.bmm, once per block of images
    assert ops["mkldnn._linear_pointwise"] == 2 * 2 and ops["aten.bmm"] >= 1
