"""The public functional API, argument for argument ``torch.nn.functional``'s.

``conv2d`` and ``conv_transpose2d`` compute the forward; ``conv2d_backward`` and
``conv_transpose2d_backward`` are the hand-derived backward as explicit functions of
``grad_output = ∂L/∂y``. The same backward functions are what autograd calls.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from . import checks
from .autograd import Correlate, CorrelateTranspose, conv2d_grads, conv_transpose2d_grads, correlate, correlate_transpose

__all__ = ["conv2d", "conv_transpose2d", "conv2d_backward", "conv_transpose2d_backward"]


def _batched(input: torch.Tensor) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """A 4-D view of ``input`` and the function that undoes the batching on a result."""
    if input.dim() == 4:
        return input, lambda t: t
    return input.unsqueeze(0), lambda t: t.squeeze(0)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D cross-correlation, exactly ``torch.nn.functional.conv2d`` (book eq. 2.1):

        y[n,o,i,j] = b[o] + Σ_{c ∈ group(o), u, v} w[o,c,u,v] · x[n,c, s·i + d·u − p, s·j + d·v − p]

    ``padding`` is an int, a pair, ``'valid'`` or ``'same'``.
    """
    checks.check_tensors("conv2d", input, weight, bias, stride, dilation, groups)
    x, unbatch = _batched(input)
    geometry = checks.conv2d_geometry(x, weight, bias, stride, padding, dilation, groups)
    return unbatch(correlate(x, weight, bias, geometry))


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """2-D transposed convolution, exactly ``torch.nn.functional.conv_transpose2d`` (book eq. 4.1):
    the adjoint of ``conv2d`` with the same weight, plus bias,

        out[n,c,h,w] = b[c] + Σ_{o,i,j,u,v : s·i + d·u − p = h, s·j + d·v − p = w} w[o,c,u,v] · x[n,o,i,j].

    Weight shape (C_in, C_out / groups, kH, kW); output size (H − 1)s − 2p + d(k − 1) + a + 1 (eq. 4.2).
    """
    checks.check_tensors("conv_transpose2d", input, weight, bias, stride, dilation, groups, output_padding)
    y, unbatch = _batched(input)
    geometry = checks.conv_transpose2d_geometry(y, weight, bias, stride, padding, output_padding, groups, dilation)
    return unbatch(correlate_transpose(y, weight, bias, geometry))


def conv2d_backward(grad_output, input, weight, stride=1, padding=0, dilation=1, groups=1):
    """The gradients of ``conv2d`` from ``grad_output = ∂L/∂y`` (book §3):

    * ``grad_input``  = conv_transpose2d(grad_output, w)      (eq. 3.4)
    * ``grad_weight`` = correlation of x with grad_output     (eq. 3.3)
    * ``grad_bias``   = Σ_{n,i,j} grad_output[n,o,i,j]          (eq. 3.2)

    Returns ``(grad_input, grad_weight, grad_bias)``; all three are differentiable.
    """
    checks.check_tensors("conv2d", input, weight, None, stride, dilation, groups)
    x, unbatch = _batched(input)
    geometry = checks.conv2d_geometry(x, weight, None, stride, padding, dilation, groups)
    grad_y = grad_output if input.dim() == 4 else grad_output.unsqueeze(0)
    checks.check_grad_output(grad_y, torch.Size((x.shape[0], weight.shape[0], *geometry.output_size)), x.dtype)
    grad_x, grad_weight, grad_bias = conv2d_grads(grad_y, x, weight, geometry)
    return unbatch(grad_x), grad_weight, grad_bias


def conv_transpose2d_backward(grad_output, input, weight, stride=1, padding=0, output_padding=0, groups=1,
                              dilation=1):
    """The gradients of ``conv_transpose2d`` from ``grad_output`` (book §4.5):

    * ``grad_input``  = conv2d(grad_output, w)                (eq. 4.5a)
    * ``grad_weight`` = correlation of grad_output with input (eq. 4.5b)
    * ``grad_bias``   = Σ_{n,h,w} grad_output[n,c,h,w]

    Returns ``(grad_input, grad_weight, grad_bias)``; all three are differentiable.
    """
    checks.check_tensors("conv_transpose2d", input, weight, None, stride, dilation, groups, output_padding)
    y, unbatch = _batched(input)
    geometry = checks.conv_transpose2d_geometry(y, weight, None, stride, padding, output_padding, groups, dilation)
    grad_x = grad_output if input.dim() == 4 else grad_output.unsqueeze(0)
    checks.check_grad_output(grad_x, torch.Size((y.shape[0], weight.shape[1] * groups, *geometry.input_size)), y.dtype)
    grad_y, grad_weight, grad_bias = conv_transpose2d_grads(grad_x, y, weight, geometry)
    return unbatch(grad_y), grad_weight, grad_bias
