"""Loop-level reference implementations: the book's formulas, one term at a time.

They follow the equations literally -- one output element (forward) or one input element
(scatter) at a time, positions from :func:`convbook.index_map.input_position` -- and are meant
for tiny inputs only. They work on ``torch.Tensor`` s and, unchanged, on sympy arrays
(``sympy.MutableDenseNDimArray``), which is how the symbolic checks of :mod:`convbook.symbolic`
evaluate the very same definitions on symbols.

Arguments are batched (N, C, H, W) with stride, padding, dilation as pairs and padding as the
amount before; ``output_size`` is given explicitly where the formula does not fix it.
"""
from __future__ import annotations

from itertools import product

import torch

from .index_map import conv_output_size, conv_transpose_output_size, input_position


def zeros(like, shape):
    """A zero array of ``shape`` of the same kind as ``like`` (torch tensor or sympy array)."""
    if isinstance(like, torch.Tensor):
        return torch.zeros(shape, dtype=like.dtype)
    import sympy
    return sympy.MutableDenseNDimArray.zeros(*shape)


def _read(x, n, c, h, w):
    """x[n, c, h, w], or 0 outside the image: zero padding."""
    return x[n, c, h, w] if 0 <= h < x.shape[2] and 0 <= w < x.shape[3] else 0


def conv2d(x, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1, padding_after=None):
    """Eq. (2.1), one output element at a time:
    ``y[n,o,i,j] = b[o] + Σ_{c,u,v} w[o,c,u,v] · x̃[n, κ(o,c), s·i + d·u − p, s·j + d·v − p]``,
    with κ(o,c) = γ(o)·C_in/g + c the input channel and x̃ the zero-extended input.
    ``padding_after`` (default: = padding) allows the asymmetric split of ``'same'``."""
    n_batch, _, height, width = x.shape
    out_channels, group_channels, kh, kw = weight.shape
    after = padding if padding_after is None else padding_after
    rows = conv_output_size(height, kh, stride[0], (padding[0], after[0]), dilation[0])
    cols = conv_output_size(width, kw, stride[1], (padding[1], after[1]), dilation[1])
    per_group = out_channels // groups
    y = zeros(x, (n_batch, out_channels, rows, cols))
    for n, o, i, j in product(range(n_batch), range(out_channels), range(rows), range(cols)):
        total = bias[o] if bias is not None else 0
        for c, u, v in product(range(group_channels), range(kh), range(kw)):
            h = input_position(i, u, stride[0], padding[0], dilation[0])
            w = input_position(j, v, stride[1], padding[1], dilation[1])
            total = total + weight[o, c, u, v] * _read(x, n, (o // per_group) * group_channels + c, h, w)
        y[n, o, i, j] = total
    return y


def conv_transpose2d(y, weight, bias=None, stride=(1, 1), padding=(0, 0), output_padding=(0, 0), groups=1,
                     dilation=(1, 1)):
    """Eq. (4.1), one input element at a time: every y[n,o,i,j] is scattered by every tap
    (u, v) to out[n, c, s·i + d·u − p, s·j + d·v − p] with weight w[o,c,u,v]; what lands in
    the padding is dropped."""
    n_batch, in_channels, rows, cols = y.shape
    _, group_channels, kh, kw = weight.shape
    height = conv_transpose_output_size(rows, kh, stride[0], padding[0], dilation[0], output_padding[0])
    width = conv_transpose_output_size(cols, kw, stride[1], padding[1], dilation[1], output_padding[1])
    per_group = in_channels // groups
    out = zeros(y, (n_batch, group_channels * groups, height, width))
    for n, o, i, j, c, u, v in product(range(n_batch), range(in_channels), range(rows), range(cols),
                                       range(group_channels), range(kh), range(kw)):
        h = input_position(i, u, stride[0], padding[0], dilation[0])
        w = input_position(j, v, stride[1], padding[1], dilation[1])
        if 0 <= h < height and 0 <= w < width:
            channel = (o // per_group) * group_channels + c
            out[n, channel, h, w] = out[n, channel, h, w] + weight[o, c, u, v] * y[n, o, i, j]
    if bias is not None:
        for n, c, h, w in product(range(n_batch), range(group_channels * groups), range(height), range(width)):
            out[n, c, h, w] = out[n, c, h, w] + bias[c]
    return out


def conv2d_grad_bias(grad_output):
    """Eq. (3.2): ∂L/∂b[o] = Σ_{n,i,j} G[n,o,i,j]."""
    n_batch, channels, rows, cols = grad_output.shape
    grad = zeros(grad_output, (channels,))
    for n, o, i, j in product(range(n_batch), range(channels), range(rows), range(cols)):
        grad[o] = grad[o] + grad_output[n, o, i, j]
    return grad


def conv2d_grad_weight(grad_output, x, weight_shape, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    """Eq. (3.3), one weight element at a time:
    ``∂L/∂w[o,c,u,v] = Σ_{n,i,j} G[n,o,i,j] · x̃[n, κ(o,c), s·i + d·u − p, s·j + d·v − p]``."""
    out_channels, group_channels, kh, kw = weight_shape
    n_batch, _, rows, cols = grad_output.shape
    per_group = out_channels // groups
    grad = zeros(x, tuple(weight_shape))
    for o, c, u, v in product(range(out_channels), range(group_channels), range(kh), range(kw)):
        total = 0
        for n, i, j in product(range(n_batch), range(rows), range(cols)):
            h = input_position(i, u, stride[0], padding[0], dilation[0])
            w = input_position(j, v, stride[1], padding[1], dilation[1])
            total = total + grad_output[n, o, i, j] * _read(x, n, (o // per_group) * group_channels + c, h, w)
        grad[o, c, u, v] = total
    return grad


def conv2d_grad_input(grad_output, weight, input_shape, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    """Eq. (3.4), one input element at a time, as a *gather*: x[n,c,h,w] receives
    G[n,o,i,j]·w[o,c,u,v] for every (i, u) with s·i + d·u − p = h, i.e. u = (h + p − s·i)/d
    when that is an integer in [0, k) -- the flipped kernel, the stride acting as a dilation of G."""
    n_batch, channels, height, width = input_shape
    out_channels, group_channels, kh, kw = weight.shape
    _, _, rows, cols = grad_output.shape
    per_group = out_channels // groups
    grad = zeros(grad_output, tuple(input_shape))
    for n, c, h, w in product(range(n_batch), range(channels), range(height), range(width)):
        total, group = 0, c // group_channels
        for o, i, j in product(range(group * per_group, (group + 1) * per_group), range(rows), range(cols)):
            u, du = divmod(h + padding[0] - stride[0] * i, dilation[0])
            v, dv = divmod(w + padding[1] - stride[1] * j, dilation[1])
            if du == 0 and dv == 0 and 0 <= u < kh and 0 <= v < kw:
                total = total + grad_output[n, o, i, j] * weight[o, c % group_channels, u, v]
        grad[n, c, h, w] = total
    return grad
