"""Exact sympy proofs for complex convolution (book appendix "Complex convolution").

Every complex entry is ``z = a + i·b`` with *real* symbols a, b, so sympy can differentiate a
real loss with respect to a and b separately -- which is what PyTorch's complex gradient is
(eq. C.2): ``grad z = ∂L/∂a + i·∂L/∂b = 2·∂L/∂z̄``. The loss that back-propagates a given
``G = grad y`` is ``L = Re Σ Ḡ ⊙ y`` (its gradient with respect to y is exactly G). Each claim is
checked entry by entry with the loop references of :mod:`convbook.reference`, which run
unchanged on arrays of complex symbolic expressions.
"""
from __future__ import annotations

from itertools import product

import sympy

from . import reference
from .symbolic import Case, Equality, entries, equality

COMPLEX_CONV2D_CASES = {
    "stride 2, padding 1": Case((1, 2, 4, 3), (2, 2, 2, 2), stride=(2, 2), padding=(1, 1)),
    "dilation (2, 1), groups 2": Case((1, 2, 4, 3), (2, 1, 2, 2), padding=(1, 0), dilation=(2, 1), groups=2),
}
"""Tiny complex Conv2d cases (x, w as in ``torch.nn.Conv2d``)."""

COMPLEX_CONV_TRANSPOSE2D_CASES = {
    "stride 2, groups 2, output_padding (1, 0)": Case((1, 2, 2, 2), (2, 1, 2, 2), stride=(2, 2), padding=(1, 0),
                                                       groups=2, output_padding=(1, 0)),
}
"""A tiny complex ConvTranspose2d case (``input_shape`` is y's, weight (C_in, C_out/groups, kH, kW))."""


def complex_symbols(name: str, shape) -> tuple[sympy.MutableDenseNDimArray, ...]:
    """(z, a, b): arrays of ``z = a + i·b`` with distinct real symbols ``name_re_…`` and ``name_im_…``."""
    shape = tuple(shape)
    z, a, b = (sympy.MutableDenseNDimArray.zeros(*shape) for _ in range(3))
    for index in product(*(range(n) for n in shape)):
        suffix = "_".join(map(str, index))
        a[index] = sympy.Symbol(f"{name}_re_{suffix}", real=True)
        b[index] = sympy.Symbol(f"{name}_im_{suffix}", real=True)
        z[index] = a[index] + sympy.I * b[index]
    return z, a, b


def conjugate(array: sympy.MutableDenseNDimArray) -> sympy.MutableDenseNDimArray:
    """z̄ entry by entry."""
    out = sympy.MutableDenseNDimArray.zeros(*array.shape)
    for index in product(*(range(n) for n in array.shape)):
        out[index] = sympy.conjugate(array[index])
    return out


def real_loss(grad_output, output) -> sympy.Expr:
    """L = Re Σ Ḡ ⊙ y, whose PyTorch gradient with respect to y is G."""
    return sympy.expand(sum(sympy.conjugate(g) * y + g * sympy.conjugate(y)
                            for g, y in zip(entries(grad_output), entries(output))) / 2)


def pytorch_gradient(loss: sympy.Expr, real_part, imaginary_part) -> sympy.MutableDenseNDimArray:
    """PyTorch's gradient of a real ``loss`` with respect to z = a + i·b: ∂L/∂a + i·∂L/∂b (eq. C.2)."""
    grad = sympy.MutableDenseNDimArray.zeros(*real_part.shape)
    for index in product(*(range(n) for n in real_part.shape)):
        grad[index] = sympy.diff(loss, real_part[index]) + sympy.I * sympy.diff(loss, imaginary_part[index])
    return grad


def conv2d_complex_gradients(case: Case) -> list[Equality]:
    """Eqs. (C.4)-(C.6): the gradients of complex conv2d are the real formulas (3.2)-(3.4) with the
    *other* factor conjugated; the last row shows that without the conjugate the input gradient
    is wrong."""
    (x, x_re, x_im), (w, w_re, w_im) = complex_symbols("x", case.input_shape), complex_symbols("w", case.weight_shape)
    (b, b_re, b_im), (grad_output, _, _) = (complex_symbols("b", case.weight_shape[:1]),
                                           complex_symbols("G", case.conv_output_shape()))
    geometry, label = case.geometry(), case.describe()
    loss = real_loss(grad_output, reference.conv2d(x, w, b, **geometry))
    grad_x = pytorch_gradient(loss, x_re, x_im)
    return [
        equality("grad x = gather of G·w̄  (C.4)", label,
                 reference.conv2d_grad_input(grad_output, conjugate(w), case.input_shape, **geometry), grad_x),
        equality("grad w = correlation of x̄ with G  (C.5)", label,
                 reference.conv2d_grad_weight(grad_output, conjugate(x), case.weight_shape, **geometry),
                 pytorch_gradient(loss, w_re, w_im)),
        equality("grad b = Σ G  (C.6)", label, reference.conv2d_grad_bias(grad_output),
                 pytorch_gradient(loss, b_re, b_im)),
        equality("grad x = gather of G·w, unconjugated (expected: False)", label,
                 reference.conv2d_grad_input(grad_output, w, case.input_shape, **geometry), grad_x),
    ]


def conv_transpose2d_complex_gradients(case: Case) -> list[Equality]:
    """Eq. (4.5) with conjugates: grad y = conv2d(G, w̄), grad w = correlation of G with ȳ, grad b = Σ G."""
    (y, y_re, y_im), (w, w_re, w_im) = complex_symbols("y", case.input_shape), complex_symbols("w", case.weight_shape)
    out_channels = case.weight_shape[1] * case.groups
    (b, b_re, b_im), (grad_output, _, _) = (complex_symbols("b", (out_channels,)),
                                           complex_symbols("G", case.transpose_output_shape()))
    geometry, label = case.geometry(), case.describe("y")
    loss = real_loss(grad_output, reference.conv_transpose2d(y, w, b, case.stride, case.padding,
                                                             case.output_padding, case.groups, case.dilation))
    return [
        equality("grad y = conv2d(G, w̄)  (C.4)", label,
                 reference.conv2d(grad_output, conjugate(w), None, **geometry)[:, :, :y.shape[2], :y.shape[3]],
                 pytorch_gradient(loss, y_re, y_im)),
        equality("grad w = correlation of G with ȳ  (C.5)", label,
                 reference.conv2d_grad_weight(conjugate(y), grad_output, case.weight_shape, **geometry),
                 pytorch_gradient(loss, w_re, w_im)),
        equality("grad b = Σ G  (C.6)", label, reference.conv2d_grad_bias(grad_output),
                 pytorch_gradient(loss, b_re, b_im)),
    ]


def conv2d_tangent(case: Case) -> Equality:
    """Eq. (C.7): d/dt conv2d(x + t·ẋ, w + t·ẇ, b + t·ḃ) at t = 0 is conv2d(ẋ, w) + conv2d(x, ẇ) + ḃ."""
    t = sympy.Symbol("t", real=True)
    (x, _, _), (w, _, _) = complex_symbols("x", case.input_shape), complex_symbols("w", case.weight_shape)
    (x_dot, _, _), (w_dot, _, _) = (complex_symbols("xdot", case.input_shape),
                                    complex_symbols("wdot", case.weight_shape))
    (b_dot, _, _) = complex_symbols("bdot", case.weight_shape[:1])
    geometry = case.geometry()
    moved = reference.conv2d(x + t * x_dot, w + t * w_dot, t * b_dot, **geometry)
    derivative = moved.applyfunc(lambda e: sympy.diff(e, t).subs(t, 0))
    tangent = (reference.conv2d(x_dot, w, b_dot, **geometry) + reference.conv2d(x, w_dot, None, **geometry))
    return equality("tangent = conv2d(ẋ, w) + conv2d(x, ẇ) + ḃ  (C.7)", case.describe(), tangent, derivative)


def conv2d_from_real_parts(case: Case) -> Equality:
    """Eq. (C.8): conv2d(x, w) = conv2d(x_r, w_r) − conv2d(x_i, w_i) + i·(conv2d(x_r, w_i) + conv2d(x_i, w_r))."""
    (x, x_re, x_im), (w, w_re, w_im) = complex_symbols("x", case.input_shape), complex_symbols("w", case.weight_shape)
    geometry = case.geometry()
    conv = lambda p, q: reference.conv2d(p, q, None, **geometry)  # noqa: E731
    parts = conv(x_re, w_re) - conv(x_im, w_im) + sympy.I * (conv(x_re, w_im) + conv(x_im, w_re))
    return equality("four real convolutions  (C.8)", case.describe(), parts, conv(x, w))
