"""Autograd wiring: three ``torch.autograd.Function`` s, one per contraction of ``kernels``.

Each backward is written with the *other* Functions (book §3.5), never with autograd through
the forward: the input gradient of a correlation is a transposed correlation and vice versa,
and the weight gradient is its own differentiable Function. Double backward (and any higher
order) is therefore free, and nothing is ``once_differentiable``.

The same three Functions carry everything else PyTorch's own convolution supports:

* **every dtype** PyTorch convolves (:func:`contract`): half precision is computed in float32
  and rounded once, as PyTorch accumulates it; complex tensors as four real contractions of
  their real and imaginary parts; integers exactly, in int64. Complex gradients follow PyTorch's
  convention (the conjugate Wirtinger derivative, book appendix "Complex convolution"): the
  input gradient uses the conjugated weight, the weight gradient the conjugated input.
* **forward-mode AD** (``jvp``): a convolution is bilinear, so the tangent of
  ``correlate(x, w) + b`` is ``correlate(ẋ, w) + correlate(x, ẇ) + ḃ``.
* **torch.func** (``vmap``): a vmapped input folds into the batch; a vmapped weight folds into
  the groups -- B independent convolutions are one convolution with B times the groups.
* **torch.compile**: while Dynamo traces, the contractions are called through the opaque
  custom operators ``torch.ops.convbook.*`` (see :mod:`convbook.compiled`), and the Functions
  are used without their ``jvp`` (Dynamo cannot trace a custom ``jvp``).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from . import kernels, strategies
from .index_map import Geometry

WIDER = {torch.float16: torch.float32, torch.bfloat16: torch.float32, torch.complex32: torch.complex64,
         torch.uint8: torch.int64, torch.int8: torch.int64, torch.int16: torch.int64, torch.int32: torch.int64}
"""The dtype each narrow dtype is computed in: half precision accumulates in single precision (as
PyTorch's kernels do); integers in int64, which is exact -- integer sums wrap around modulo 2^bits,
and rounding the int64 result to the narrow type gives the same residue."""


def suggested_format(*tensors: torch.Tensor) -> torch.memory_format:
    """PyTorch's rule on CPU: a result is channels_last when any 4-D operand is."""
    for t in tensors:
        if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
            return torch.channels_last
    return torch.contiguous_format


def in_format(result: torch.Tensor, *operands: torch.Tensor) -> torch.Tensor:
    return result.contiguous(memory_format=suggested_format(*operands))


def _kernel(contraction: str, *operands: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor, Geometry], torch.Tensor]:
    """``kernels.<contraction>``, or the same contraction as an opaque custom operator (see
    :mod:`convbook.compiled`) where Python must not step into the kernels' scratch buffers:
    while torch.compile traces, and on the batched tensors of the prototype vmap that
    ``gradcheck(check_batched_grad=True)`` uses (which runs such an operator once per example)."""
    if not _kernels_reachable(*operands):
        from . import compiled
        return compiled.contraction(contraction)
    return getattr(kernels, contraction)


_PROTOTYPE_BATCHED = torch._C._parse_dispatch_key("Batched")


def _kernels_reachable(*operands: torch.Tensor) -> bool:
    """Whether Python may step into the kernels on these operands: no torch.compile trace and no
    tensor of the prototype vmap (see :func:`_kernel`)."""
    return not torch.compiler.is_compiling() and not any(_prototype_batched(t) for t in operands)


def _prototype_batched(t: torch.Tensor) -> bool:
    """A tensor of ``torch._vmap_internals.vmap`` (not ``torch.vmap``, whose rule is ``vmap`` below)."""
    return torch._C._dispatch_keys(t).has(_PROTOTYPE_BATCHED)


def _real_contract(contraction: str, a: torch.Tensor, b: torch.Tensor, geometry: Geometry,
                   bias: torch.Tensor | None = None) -> torch.Tensor:
    """A contraction of two real (or integer) tensors (+ bias on the channel dimension), in the dtype it is
    computed in. The kernels take the bias themselves (a strategy may fold it into its product:
    ``strategies.ADDS_BIAS``); to the result of an opaque operator (:func:`_kernel`) it is added."""
    wide = WIDER.get(a.dtype, a.dtype)
    kernel = _kernel(contraction, a, b)
    bias = None if bias is None else bias.to(wide)
    if bias is not None and kernel is getattr(kernels, contraction):
        return kernel(a.to(wide), b.to(wide), geometry, bias=bias)
    result = kernel(a.to(wide), b.to(wide), geometry)
    return result if bias is None else result.add_(bias.view(1, -1, 1, 1))    # the kernels return fresh tensors


def _parts(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(real part, imaginary part) of a complex tensor, in the wider dtype it is computed in."""
    t = t.resolve_conj().to(WIDER.get(t.dtype, t.dtype))
    return t.real, t.imag


def contract(contraction: str, a: torch.Tensor, b: torch.Tensor, geometry: Geometry,
             bias: torch.Tensor | None = None) -> torch.Tensor:
    """``kernels.<contraction>(a, b, geometry)`` (+ bias on the channel dimension) for any dtype
    PyTorch convolves, rounded once to that dtype.

    The kernels contract real tensors. Every contraction f is bilinear, so for complex operands
    ``a = a_r + i·a_i``, ``b = b_r + i·b_i`` (appendix eq. C.8)

        f(a, b) = f(a_r, b_r) − f(a_i, b_i) + i·(f(a_r, b_i) + f(a_i, b_r)),

    four real contractions; narrower dtypes are computed in :data:`WIDER` and the bias added there.
    """
    if not a.dtype.is_complex:
        return _real_contract(contraction, a, b, geometry, bias).to(a.dtype)
    (a_r, a_i), (b_r, b_i) = _parts(a), _parts(b)
    f = lambda p, q: _real_contract(contraction, p, q, geometry)  # noqa: E731
    result = torch.complex(f(a_r, b_r) - f(a_i, b_i), f(a_r, b_i) + f(a_i, b_r))
    if bias is not None:
        result.add_(bias.to(result.dtype).view(1, -1, 1, 1))
    return result.to(a.dtype)


def sum_bias(grad_output: torch.Tensor) -> torch.Tensor:
    """∂L/∂b = Σ_{n,i,j} grad_output[n,o,i,j] (eq. 3.2), accumulated in the wider dtype."""
    wide = WIDER.get(grad_output.dtype, grad_output.dtype)
    return grad_output.sum((0, 2, 3), dtype=wide).to(grad_output.dtype)


def _tangent(terms: list[torch.Tensor | None]) -> torch.Tensor:
    """The sum of the tangent terms that exist (a bilinear map's jvp has one per operand)."""
    present = [t for t in terms if t is not None]
    total = present[0]
    for t in present[1:]:
        total = total + t
    return total


# --- vmap: fold the vmapped dimension into the batch or into the groups -----------------------

def _leading(t: torch.Tensor, dim: int | None, size: int) -> torch.Tensor:
    """``t`` with its vmapped dimension first (an unbatched ``t`` is broadcast to ``size``)."""
    return t.expand(size, *t.shape) if dim is None else t.movedim(dim, 0)


def _into_channels(t: torch.Tensor, dim: int | None, size: int) -> torch.Tensor:
    """(B, N, C, H, W) -> (N, B·C, H, W): B images side by side as B groups of channels."""
    return _leading(t, dim, size).movedim(0, 1).flatten(1, 2)


def _into_rows(t: torch.Tensor | None, dim: int | None, size: int) -> torch.Tensor | None:
    """(B, O, ...) -> (B·O, ...): B weights (or biases) as the rows of B groups."""
    return None if t is None else _leading(t, dim, size).flatten(0, 1)


def _by_groups(geometry: Geometry, size: int) -> Geometry:
    return dataclasses.replace(geometry, groups=size * geometry.groups)


def _vmap_convolution(function: type[torch.autograd.Function], info, in_dims, first: torch.Tensor,
                      weight: torch.Tensor, bias: torch.Tensor | None, geometry: Geometry):
    """vmap rule of :class:`Correlate` and :class:`CorrelateTranspose` (same operand layout).

    Only the input vmapped: the B batches of N images are one batch of B·N. The weight (or bias)
    vmapped: B convolutions with g groups each are one convolution with B·g groups, the images'
    channels side by side (eq. 2.1 never mixes groups)."""
    size = info.batch_size
    first_dim, weight_dim, bias_dim = in_dims[:3]
    if weight_dim is None and bias_dim is None:
        out = function.apply(first.movedim(first_dim, 0).flatten(0, 1), weight, bias, geometry)
        return out.unflatten(0, (size, out.shape[0] // size)), 0
    out = function.apply(_into_channels(first, first_dim, size), _into_rows(weight, weight_dim, size),
                         _into_rows(bias, bias_dim, size), _by_groups(geometry, size))
    return out.unflatten(1, (size, out.shape[1] // size)), 1


class Correlate(torch.autograd.Function):
    """y = correlate(x, w) + b: Conv2d forward (eq. 2.1); backward by eqs. (3.2)-(3.4)."""

    @staticmethod
    def forward(x, weight, bias, geometry: Geometry):
        return in_format(contract("correlate", x, weight, geometry, bias), x, weight)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, _, ctx.geometry = inputs
        kept = strategies.kept_columns()     # the forward's column matrix, where the weight gradient reuses it
        ctx.columns_source = None if kept is None else kept[1]
        ctx.save_for_backward(x, weight, *([] if kept is None else [kept[0]]))
        ctx.save_for_forward(x, weight)

    @staticmethod
    def backward(ctx, grad_output):
        x, weight, *columns = ctx.saved_tensors
        with strategies.reusing_columns(columns[0] if columns else None, ctx.columns_source):
            grads = conv2d_grads(grad_output, x, weight, ctx.geometry, ctx.needs_input_grad[:3])
        return (*grads, None)

    @staticmethod
    def jvp(ctx, x_tangent, weight_tangent, bias_tangent, _):
        x, weight = ctx.saved_tensors[:2]
        return _tangent([None if x_tangent is None else correlate(x_tangent, weight, None, ctx.geometry),
                         None if weight_tangent is None else correlate(x, weight_tangent, None, ctx.geometry),
                         None if bias_tangent is None else bias_tangent.view(1, -1, 1, 1)])

    @staticmethod
    def vmap(info, in_dims, x, weight, bias, geometry):
        return _vmap_convolution(Correlate, info, in_dims, x, weight, bias, geometry)


class CorrelateTranspose(torch.autograd.Function):
    """x = correlate_transpose(y, w) + b: ConvTranspose2d forward (eq. 4.1); backward by eq. (4.5)."""

    @staticmethod
    def forward(y, weight, bias, geometry: Geometry):
        return in_format(contract("correlate_transpose", y, weight, geometry, bias), y, weight)

    @staticmethod
    def setup_context(ctx, inputs, output):
        y, weight, _, ctx.geometry = inputs
        ctx.save_for_backward(y, weight)
        ctx.save_for_forward(y, weight)

    @staticmethod
    def backward(ctx, grad_output):
        y, weight = ctx.saved_tensors
        grads = conv_transpose2d_grads(grad_output, y, weight, ctx.geometry, ctx.needs_input_grad[:3])
        return (*grads, None)

    @staticmethod
    def jvp(ctx, y_tangent, weight_tangent, bias_tangent, _):
        y, weight = ctx.saved_tensors
        return _tangent([None if y_tangent is None else correlate_transpose(y_tangent, weight, None, ctx.geometry),
                         None if weight_tangent is None else correlate_transpose(y, weight_tangent, None,
                                                                  ctx.geometry),
                         None if bias_tangent is None else bias_tangent.view(1, -1, 1, 1)])

    @staticmethod
    def vmap(info, in_dims, y, weight, bias, geometry):
        return _vmap_convolution(CorrelateTranspose, info, in_dims, y, weight, bias, geometry)


class CorrelateWeight(torch.autograd.Function):
    """w = correlate_weight(x, y): the weight gradient (eq. 3.3), itself differentiable.

    B(x, w, y) is linear in each argument, so with ``ġ = ∂L/∂w``:
    ∂L/∂x = correlate_transpose(ȳ, ġ) and ∂L/∂y = correlate(x̄, ġ) (the bar, complex
    conjugation, is the identity on real tensors).
    """

    @staticmethod
    def forward(x, y, geometry: Geometry):
        return in_format(contract("correlate_weight", x, y, geometry), x, y)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, y, ctx.geometry = inputs
        ctx.save_for_backward(x, y)
        ctx.save_for_forward(x, y)

    @staticmethod
    def backward(ctx, grad_weight):
        x, y = ctx.saved_tensors
        need_x, need_y = ctx.needs_input_grad[:2]
        grad_x = correlate_transpose(y.conj(), grad_weight, None, ctx.geometry) if need_x else None
        grad_y = correlate(x.conj(), grad_weight, None, ctx.geometry) if need_y else None
        return grad_x, grad_y, None

    @staticmethod
    def jvp(ctx, x_tangent, y_tangent, _):
        x, y = ctx.saved_tensors
        return _tangent([None if x_tangent is None else correlate_weight(x_tangent, y, ctx.geometry),
                         None if y_tangent is None else correlate_weight(x, y_tangent, ctx.geometry)])

    @staticmethod
    def vmap(info, in_dims, x, y, geometry):
        """x or y vmapped: B weight gradients are one weight gradient with B·g groups."""
        size = info.batch_size
        x_dim, y_dim = in_dims[:2]
        out = CorrelateWeight.apply(_into_channels(x, x_dim, size), _into_channels(y, y_dim, size),
                                    _by_groups(geometry, size))
        return out.unflatten(0, (size, out.shape[0] // size)), 0


def _without_jvp(function: type[torch.autograd.Function]) -> type[torch.autograd.Function]:
    """The same Function with the default (absent) ``jvp``: what Dynamo can trace."""
    return type(function.__name__, (function,), {"jvp": staticmethod(torch.autograd.Function.jvp)})


_TRACEABLE_CORRELATE = _without_jvp(Correlate)
_TRACEABLE_CORRELATE_TRANSPOSE = _without_jvp(CorrelateTranspose)
_TRACEABLE_CORRELATE_WEIGHT = _without_jvp(CorrelateWeight)


def correlate(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, geometry: Geometry) -> torch.Tensor:
    """``Correlate.apply``; while torch.compile traces, the same Function without its ``jvp``. Where autograd
    will want the weight's gradient, the forward may keep its column matrix for it
    (:func:`strategies.keeping_columns`)."""
    if torch.compiler.is_compiling():
        return _TRACEABLE_CORRELATE.apply(x, weight, bias, geometry)
    if not _weight_gradient_follows(x, weight):
        return Correlate.apply(x, weight, bias, geometry)
    with strategies.keeping_columns():
        return Correlate.apply(x, weight, bias, geometry)


def _weight_gradient_follows(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether autograd records this call with the weight needing a gradient, on operands the kernels
    contract as they are (real single or double precision, no torch.func transform, Python free to step
    into the kernels): then the weight gradient's strategy may reuse the forward's columns."""
    return torch.is_grad_enabled() and weight.requires_grad and _contracted_as_they_are(x, weight)


def _contracted_as_they_are(*tensors: torch.Tensor) -> bool:
    """Real single or double precision, all of one dtype, no torch.func transform, and Python free to step
    into the kernels: the fast strategies run on these tensors themselves, so work can be shared between
    calls (the backward pair, the forward's kept columns)."""
    return (all(t.dtype in (torch.float32, torch.float64) and t.dtype == tensors[0].dtype for t in tensors)
            and not torch._C._are_functorch_transforms_active() and _kernels_reachable(*tensors))


def correlate_transpose(y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                        geometry: Geometry) -> torch.Tensor:
    """``CorrelateTranspose.apply``; while torch.compile traces, the same Function without its ``jvp``."""
    function = _TRACEABLE_CORRELATE_TRANSPOSE if torch.compiler.is_compiling() else CorrelateTranspose
    return function.apply(y, weight, bias, geometry)


def correlate_weight(x: torch.Tensor, y: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """``CorrelateWeight.apply``; while torch.compile traces, the same Function without its ``jvp``."""
    return (_TRACEABLE_CORRELATE_WEIGHT if torch.compiler.is_compiling() else CorrelateWeight).apply(x, y, geometry)


def _paired(op: str, grad_output: torch.Tensor, layer_input: torch.Tensor, weight: torch.Tensor,
            geometry: Geometry, needed) -> tuple | None:
    """Both gradients from one pass over grad_output (:func:`strategies.backward_pair`), where that
    is the same computation as the two Functions: both gradients needed, no graph to record
    through them (``create_graph`` off, no torch.func transform), real single or double precision,
    and Python free to step into the kernels (no torch.compile trace, no prototype vmap)."""
    if not (needed[0] and needed[1]) or torch.is_grad_enabled() \
            or not _contracted_as_they_are(grad_output, layer_input, weight):
        return None
    return strategies.backward_pair(op, grad_output, layer_input, weight, geometry, bias=needed[2])


def conv2d_grads(grad_output: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, geometry: Geometry,
                 needed=(True, True, True)):
    """(∂L/∂x, ∂L/∂w, ∂L/∂b) of Conv2d from ``grad_output = ∂L/∂y`` (eqs. 3.2-3.4).

    For complex tensors these are PyTorch's conjugate Wirtinger gradients: y is holomorphic in x
    with derivative w, so ∂L/∂x = correlate_transpose(∂L/∂y, w̄) and ∂L/∂w uses x̄. When both are
    needed and a strategy shares work between them, they are computed together
    (:func:`convbook.strategies.backward_pair`).
    """
    layout = suggested_format(x, weight)
    grad_x, grad_weight, grad_bias = _paired("conv2d", grad_output, x, weight, geometry, needed) or (None,) * 3
    if grad_x is None:
        grad_x = correlate_transpose(grad_output, weight.conj(), None, geometry) if needed[0] else None
        grad_weight = correlate_weight(x.conj(), grad_output, geometry) if needed[1] else None
    if grad_bias is None and needed[2]:
        grad_bias = sum_bias(grad_output)
    return (None if grad_x is None else grad_x.contiguous(memory_format=layout),
            None if grad_weight is None else grad_weight.contiguous(memory_format=layout),
            grad_bias)


def conv_transpose2d_grads(grad_output: torch.Tensor, y: torch.Tensor, weight: torch.Tensor,
                           geometry: Geometry, needed=(True, True, True)):
    """(∂L/∂input, ∂L/∂w, ∂L/∂b) of ConvTranspose2d (eq. 4.5): the input gradient is a Conv2d
    of ``grad_output`` with the same (for complex: conjugated) weight, the weight gradient a
    correlation of ``grad_output`` with the (conjugated) input."""
    layout = suggested_format(y, weight)
    grad_y, grad_weight, grad_bias = _paired("conv_transpose2d", grad_output, y, weight, geometry, needed) or (None,) * 3
    if grad_y is None:
        grad_y = correlate(grad_output, weight.conj(), None, geometry) if needed[0] else None
        grad_weight = correlate_weight(grad_output, y.conj(), geometry) if needed[1] else None
    if grad_bias is None and needed[2]:
        grad_bias = sum_bias(grad_output)
    return (None if grad_y is None else grad_y.contiguous(memory_format=layout),
            None if grad_weight is None else grad_weight.contiguous(memory_format=layout),
            grad_bias)
