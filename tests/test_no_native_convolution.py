"""The rule that is never bent: no native convolution runs, forward or backward, at any order.

Every ATen operator is recorded at the dispatcher while both ops and both modules run forward,
backward and double backward; none may belong to the convolution family."""
import torch
import torch.nn.functional as F

import convbook
from convbook.dispatch import convolution_ops, record_aten_ops


def run_everything(dtype):
    x = torch.randn(2, 4, 9, 9, dtype=dtype, requires_grad=True)
    w = torch.randn(6, 2, 3, 3, dtype=dtype, requires_grad=True)
    wt = torch.randn(4, 3, 3, 3, dtype=dtype, requires_grad=True)
    y = convbook.conv2d(x, w, stride=2, padding=1, dilation=1, groups=2)
    z = convbook.conv_transpose2d(x, wt, stride=2, padding=1, output_padding=1, groups=2)
    same = convbook.conv2d(x, w, padding="same", dilation=2, groups=2)
    grads = torch.autograd.grad(y.square().sum() + z.square().sum() + same.sum(), (x, w, wt), create_graph=True)
    sum(g.square().sum() for g in grads).backward()
    convbook.conv2d_backward(torch.randn_like(y), x.detach(), w.detach(), stride=2, padding=1, groups=2)
    convbook.conv_transpose2d_backward(torch.randn_like(z), x.detach(), wt.detach(), stride=2, padding=1,
                                       output_padding=1, groups=2)
    for module in (convbook.Conv2d(4, 6, 3, padding=1, padding_mode="reflect", dtype=dtype),
                   convbook.Conv2d(4, 4, 3, padding=1, groups=4, padding_mode="circular", dtype=dtype),
                   convbook.ConvTranspose2d(4, 3, 3, stride=2, dtype=dtype)):
        module(x).sum().backward()
    convbook.ConvTranspose2d(4, 3, 3, stride=2, dtype=dtype)(x, output_size=(20, 19)).sum().backward()


def test_no_convolution_op_reaches_the_dispatcher():
    for dtype in (torch.float32, torch.float64):
        with record_aten_ops() as ops:
            run_everything(dtype)
        assert ops["aten.bmm"] + ops["aten.mm"] + ops["aten.addmm"] + ops["aten.baddbmm"] + ops["aten.mul"] > 0
        assert convolution_ops(ops) == []


def test_the_recorder_would_catch_a_native_convolution():
    """The guard can fail: PyTorch's own conv and im2col are caught."""
    x = torch.randn(1, 2, 5, 5, requires_grad=True)
    with record_aten_ops() as ops:
        F.conv2d(x, torch.randn(3, 2, 3, 3)).sum().backward()
        F.conv_transpose2d(x, torch.randn(2, 3, 3, 3))
        F.unfold(x, 2)
        F.fold(torch.randn(1, 8, 16), (5, 5), 2)
    caught = convolution_ops(ops)
    assert "aten.convolution" in caught and "aten.convolution_backward" in caught
    assert "aten.im2col" in caught and "aten.col2im" in caught


def test_the_recorder_catches_onednns_convolution_and_lets_its_inner_product_through():
    """oneDNN's convolution is caught; its inner product (nn.Linear's kernel, a matrix product) is not."""
    x, w = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
    with record_aten_ops() as ops:
        torch.ops.mkldnn._convolution_pointwise(x, w, None, [0, 0], [1, 1], [1, 1], 1, "none", [], "")
        torch.ops.mkldnn._linear_pointwise(torch.randn(4, 6), torch.randn(5, 6), None, "none", [], "")
    assert convolution_ops(ops) == ["mkldnn._convolution_pointwise"]
    assert ops["mkldnn._linear_pointwise"] == 1


def test_a_wide_layer_multiplies_on_onednns_inner_product_and_convolves_nowhere():
    """The stem's shape of product (more than WIDE positions per image) takes convbook.products' oneDNN
    path, forward and backward -- and still no convolution reaches the dispatcher."""
    x = torch.randn(2, 3, 184, 184, requires_grad=True)               # 92 × 92 = 8464 output positions
    w = torch.randn(32, 3, 7, 7, requires_grad=True)
    with record_aten_ops() as ops:
        convbook.conv2d(x, w, stride=2, padding=3).square().sum().backward()
        convbook.conv_transpose2d(torch.randn(2, 32, 92, 92), w, stride=2, padding=3, output_padding=1)
    assert ops["mkldnn._linear_pointwise"] >= 3
    assert convolution_ops(ops) == []
