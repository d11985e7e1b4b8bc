"""Autograd wiring: three ``torch.autograd.Function`` s, one per contraction of ``kernels``.

Each backward is written with the *other* Functions (book §3.5), never with autograd through
the forward: the input gradient of a correlation is a transposed correlation and vice versa,
and the weight gradient is its own differentiable Function. Double backward (and any higher
order) is therefore free, and nothing is ``once_differentiable``.
"""
from __future__ import annotations

import torch

from . import kernels
from .index_map import Geometry


def suggested_format(*tensors: torch.Tensor) -> torch.memory_format:
    """PyTorch's rule on CPU: a result is channels_last when any 4-D operand is."""
    for t in tensors:
        if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
            return torch.channels_last
    return torch.contiguous_format


def in_format(result: torch.Tensor, *operands: torch.Tensor) -> torch.Tensor:
    return result.contiguous(memory_format=suggested_format(*operands))


def _add_bias(out: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return out if bias is None else out.add_(bias.view(1, -1, 1, 1))


class Correlate(torch.autograd.Function):
    """y = correlate(x, w) + b: Conv2d forward (eq. 2.1); backward by eqs. (3.2)-(3.4)."""

    @staticmethod
    def forward(x, weight, bias, geometry: Geometry):
        return in_format(_add_bias(kernels.correlate(x, weight, geometry), bias), x, weight)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, _, ctx.geometry = inputs
        ctx.save_for_backward(x, weight)

    @staticmethod
    def backward(ctx, grad_output):
        x, weight = ctx.saved_tensors
        grads = conv2d_grads(grad_output, x, weight, ctx.geometry, ctx.needs_input_grad[:3])
        return (*grads, None)


class CorrelateTranspose(torch.autograd.Function):
    """x = correlate_transpose(y, w) + b: ConvTranspose2d forward (eq. 4.1); backward by eq. (4.5)."""

    @staticmethod
    def forward(y, weight, bias, geometry: Geometry):
        return in_format(_add_bias(kernels.correlate_transpose(y, weight, geometry), bias), y, weight)

    @staticmethod
    def setup_context(ctx, inputs, output):
        y, weight, _, ctx.geometry = inputs
        ctx.save_for_backward(y, weight)

    @staticmethod
    def backward(ctx, grad_output):
        y, weight = ctx.saved_tensors
        grads = conv_transpose2d_grads(grad_output, y, weight, ctx.geometry, ctx.needs_input_grad[:3])
        return (*grads, None)


class CorrelateWeight(torch.autograd.Function):
    """w = correlate_weight(x, y): the weight gradient (eq. 3.3), itself differentiable.

    B(x, w, y) is linear in each argument, so with ``ġ = ∂L/∂w``:
    ∂L/∂x = correlate_transpose(y, ġ) and ∂L/∂y = correlate(x, ġ).
    """

    @staticmethod
    def forward(x, y, geometry: Geometry):
        return in_format(kernels.correlate_weight(x, y, geometry), x, y)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, y, ctx.geometry = inputs
        ctx.save_for_backward(x, y)

    @staticmethod
    def backward(ctx, grad_weight):
        x, y = ctx.saved_tensors
        need_x, need_y = ctx.needs_input_grad[:2]
        grad_x = CorrelateTranspose.apply(y, grad_weight, None, ctx.geometry) if need_x else None
        grad_y = Correlate.apply(x, grad_weight, None, ctx.geometry) if need_y else None
        return grad_x, grad_y, None


def conv2d_grads(grad_output: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, geometry: Geometry,
                 needed=(True, True, True)):
    """(∂L/∂x, ∂L/∂w, ∂L/∂b) of Conv2d from ``grad_output = ∂L/∂y`` (eqs. 3.2-3.4)."""
    layout = suggested_format(x, weight)
    grad_x = CorrelateTranspose.apply(grad_output, weight, None, geometry) if needed[0] else None
    grad_weight = CorrelateWeight.apply(x, grad_output, geometry) if needed[1] else None
    grad_bias = grad_output.sum((0, 2, 3)) if needed[2] else None
    return (None if grad_x is None else grad_x.contiguous(memory_format=layout),
            None if grad_weight is None else grad_weight.contiguous(memory_format=layout),
            grad_bias)


def conv_transpose2d_grads(grad_output: torch.Tensor, y: torch.Tensor, weight: torch.Tensor,
                           geometry: Geometry, needed=(True, True, True)):
    """(∂L/∂input, ∂L/∂w, ∂L/∂b) of ConvTranspose2d (eq. 4.5): the input gradient is a Conv2d
    of ``grad_output`` with the same weight, the weight gradient a correlation of
    ``grad_output`` with the input."""
    layout = suggested_format(y, weight)
    grad_y = Correlate.apply(grad_output, weight, None, geometry) if needed[0] else None
    grad_weight = CorrelateWeight.apply(grad_output, y, geometry) if needed[1] else None
    grad_bias = grad_output.sum((0, 2, 3)) if needed[2] else None
    return (None if grad_y is None else grad_y.contiguous(memory_format=layout),
            None if grad_weight is None else grad_weight.contiguous(memory_format=layout),
            grad_bias)
