"""Symbolic proofs on tiny cases: every closed form of the book against an independent truth.

Each check evaluates the *same* loop references as :mod:`convbook.reference` on arrays of sympy
symbols and compares a derived closed form with a truth computed without that formula -- sympy's
own differentiation of a symbolic loss, the definition by enumeration, or the transpose of an
explicit matrix -- by exact symbolic equality (``expand(a − b) == 0``), never numerically.

* :func:`conv2d_gradients`              eqs. (3.2)-(3.4) against ``sympy.diff`` of B(x, w, G) (3.1)
* :func:`grad_input_is_transposed_convolution`  eq. (3.4) is ``conv_transpose2d(G, w)``: the kernel
                                        flips, the stride dilates G, the padding crops
* :func:`grad_weight_from_the_adjoint_columns`  at stride 1 the weight gradient reads the same
                                        windows of G as the input gradient (chapter 7's pairs)
* :func:`depthwise_on_its_own_grid`     a stride-1 depthwise layer on its own grid is masked
                                        multiply-accumulates at constant offsets (chapter 7)
* :func:`im2col_from_phase_planes`      a strided layer's columns read from the phase planes of its
                                        input, tap phase by tap phase (chapter 7)
* :func:`shared_borders`                at stride 1 the shifted products read their zeros from the
                                        borders the rows and images share (chapter 7)
* :func:`channels_last_rows`            the forward and the weight gradient from a column matrix
                                        with one row per position, read from x in channels-last
                                        order (chapter 7)
* :func:`spectral_contractions`        the three contractions as products of spectra, frequency by
                                        frequency, with the no-wrap transform length (chapter 7)
* :func:`conv_transpose_matrix_is_transpose`    the matrix of ``conv_transpose2d`` is exactly Mᵀ,
                                        M the matrix of ``conv2d`` with the same weight (4.1)
* :func:`conv_transpose2d_gradients`    eq. (4.5) against ``sympy.diff``

Each returns :class:`Equality` records (claim, number of entries compared, all equal) that the
book's pages display; :func:`markdown_table` renders a list of them.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import sympy

from . import reference
from .index_map import (Geometry, conv_output_size, conv_transpose_output_size, effective_kernel_size,
                        input_position, same_padding, window)

Pair = tuple[int, int]


@dataclass(frozen=True)
class Case:
    """One tiny convolution. For :func:`conv2d_gradients` ``input_shape`` is x's (N, C, H, W) and
    ``weight_shape`` is (C_out, C_in/groups, kH, kW); for the transposed checks ``input_shape`` is the
    shape of the transposed convolution's input y and ``weight_shape`` (C_in, C_out/groups, kH, kW),
    as in ``torch.nn.ConvTranspose2d``."""

    input_shape: tuple[int, int, int, int]
    weight_shape: tuple[int, int, int, int]
    stride: Pair = (1, 1)
    padding: Pair = (0, 0)
    dilation: Pair = (1, 1)
    groups: int = 1
    output_padding: Pair = (0, 0)

    def describe(self, input_name: str = "x") -> str:
        parts = [f"{input_name} {self.input_shape}", f"w {self.weight_shape}", f"s={self.stride}", f"p={self.padding}",
                 f"d={self.dilation}", f"g={self.groups}"]
        if self.output_padding != (0, 0):
            parts.append(f"a={self.output_padding}")
        return ", ".join(parts)

    def geometry(self) -> dict:
        """stride, padding, dilation, groups as keyword arguments of the loop references."""
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)

    def conv_output_shape(self) -> tuple[int, int, int, int]:
        """Shape of conv2d(x) for x of ``input_shape`` (eq. 1.3)."""
        n, _, height, width = self.input_shape
        sizes = [conv_output_size(size, self.weight_shape[2 + i], self.stride[i], self.padding[i], self.dilation[i])
                 for i, size in enumerate((height, width))]
        return (n, self.weight_shape[0], *sizes)

    def transpose_output_shape(self) -> tuple[int, int, int, int]:
        """Shape of conv_transpose2d(y) for y of ``input_shape`` (eq. 4.2)."""
        n, _, height, width = self.input_shape
        sizes = [conv_transpose_output_size(size, self.weight_shape[2 + i], self.stride[i], self.padding[i],
                                            self.dilation[i], self.output_padding[i])
                 for i, size in enumerate((height, width))]
        return (n, self.weight_shape[1] * self.groups, *sizes)


CONV2D_CASES = {
    "stride 2, padding 1": Case((1, 2, 6, 5), (2, 2, 3, 2), stride=(2, 2), padding=(1, 1)),
    "dilation 2, groups 2": Case((1, 4, 4, 4), (4, 2, 2, 2), padding=(1, 1), dilation=(2, 2), groups=2),
}
"""The tiny Conv2d cases of chapter 3 -- a strided, padded, non-square kernel whose transposed
convolution needs output_padding 1; and a dilated, grouped, padded one."""

CONV_TRANSPOSE2D_CASES = {
    "stride 2, padding 1, output_padding 1": Case((1, 2, 3, 3), (2, 2, 3, 3), stride=(2, 2), padding=(1, 1),
                                                   output_padding=(1, 1)),
    "stride (2, 1), dilation 2, groups 2, output_padding (1, 0)": Case(
        (1, 4, 3, 3), (4, 1, 2, 3), stride=(2, 1), padding=(0, 1), dilation=(2, 2), groups=2, output_padding=(1, 0)),
}
"""The tiny ConvTranspose2d cases of chapter 4 (``input_shape`` is y's, weight (C_in, C_out/groups, kH, kW))."""


@dataclass(frozen=True)
class Equality:
    """The outcome of one symbolic comparison: ``entries`` pairs compared, ``all_equal`` if all are."""

    claim: str
    case: str
    entries: int
    all_equal: bool


def symbols(name: str, shape) -> sympy.MutableDenseNDimArray:
    """An array of distinct symbols ``name_i_j_...`` of the given shape."""
    shape = tuple(shape)
    array = sympy.MutableDenseNDimArray.zeros(*shape)
    for index in product(*(range(n) for n in shape)):
        array[index] = sympy.Symbol(f"{name}_{'_'.join(map(str, index))}")
    return array


def entries(array) -> list[sympy.Expr]:
    """The elements of a sympy array in row-major order."""
    return list(sympy.flatten(array.tolist())) if array.rank() > 0 else [array[()]]


def equality(claim: str, case: str, derived, truth) -> Equality:
    """Compare two arrays of the same shape entry by entry, exactly: ``expand(a − b) == 0``."""
    if tuple(derived.shape) != tuple(truth.shape):
        return Equality(claim, case, 0, False)
    pairs = list(zip(entries(derived), entries(truth)))
    return Equality(claim, case, len(pairs), all(sympy.expand(a - b) == 0 for a, b in pairs))


def gradient(loss: sympy.Expr, variables) -> sympy.MutableDenseNDimArray:
    """∂loss/∂v for every symbol v of ``variables``, by sympy's differentiation, in its shape."""
    grad = sympy.MutableDenseNDimArray.zeros(*variables.shape)
    for index in product(*(range(n) for n in variables.shape)):
        grad[index] = sympy.diff(loss, variables[index])
    return grad


def pairing(a, b) -> sympy.Expr:
    """⟨a, b⟩ = Σ a ⊙ b, expanded."""
    return sympy.expand(sum(p * q for p, q in zip(entries(a), entries(b))))


# --- Chapter 3: the gradients of Conv2d --------------------------------------------------------

def conv2d_symbols(case: Case):
    """Symbolic x, w and G = ∂L/∂y (shaped like conv2d's output) for ``case``."""
    return (symbols("x", case.input_shape), symbols("w", case.weight_shape),
            symbols("G", case.conv_output_shape()))


def conv2d_derivative(case: Case, x, w, grad_output, variables) -> sympy.MutableDenseNDimArray:
    """The truth: sympy's derivative of L = Σ G ⊙ conv2d(x, w) (bias-free) with respect to ``variables``."""
    return gradient(pairing(grad_output, reference.conv2d(x, w, None, **case.geometry())), variables)


def conv2d_gradients(case: Case) -> list[Equality]:
    """Eqs. (3.2)-(3.4) against sympy's derivative of the trilinear form (3.1):
    L = B(x, w, G) + Σ G·b = Σ G ⊙ conv2d(x, w, b), with x, w, b, G all symbols."""
    (x, w, grad_output), b = conv2d_symbols(case), symbols("b", case.weight_shape[:1])
    geometry, label = case.geometry(), case.describe()
    loss = pairing(grad_output, reference.conv2d(x, w, b, **geometry))
    return [
        equality("∂L/∂b = Σ G over n, i, j  (3.2)", label, reference.conv2d_grad_bias(grad_output), gradient(loss, b)),
        equality("∂L/∂w = correlation of x with G  (3.3)", label,
                 reference.conv2d_grad_weight(grad_output, x, case.weight_shape, **geometry), gradient(loss, w)),
        equality("∂L/∂x = gather of G·w  (3.4)", label,
                 reference.conv2d_grad_input(grad_output, w, case.input_shape, **geometry), gradient(loss, x)),
    ]


def grad_input_output_padding(case: Case) -> Pair:
    """The output_padding that makes conv_transpose2d(G) as large as x: rows of x beyond the last
    window's reach get zero gradient, and this many of them are kept (H − H_min, eq. 4.2)."""
    _, _, rows, cols = case.conv_output_shape()
    return tuple(case.input_shape[2 + i] - conv_transpose_output_size((rows, cols)[i], case.weight_shape[2 + i],
                                                                    case.stride[i], case.padding[i],
                                                                    case.dilation[i])
                 for i in range(2))


def grad_input_is_transposed_convolution(case: Case) -> list[Equality]:
    """∂L/∂x (sympy's derivative, and the gather (3.4)) equals ``conv_transpose2d(G, w)`` with the
    same stride, padding, dilation and groups -- the transposed convolution of chapter 4."""
    x, w, grad_output = conv2d_symbols(case)
    geometry, label = case.geometry(), case.describe()
    transposed = reference.conv_transpose2d(grad_output, w, None, case.stride, case.padding,
                                            grad_input_output_padding(case), case.groups, case.dilation)
    truth = conv2d_derivative(case, x, w, grad_output, x)
    gather = reference.conv2d_grad_input(grad_output, w, case.input_shape, **geometry)
    return [equality("conv_transpose2d(G, w) = ∂L/∂x (sympy.diff)", label, transposed, truth),
            equality("conv_transpose2d(G, w) = gather (3.4)", label, transposed, gather)]


def zero_insert(grad_output, stride: Pair):
    """G with ``s − 1`` zeros between neighbours: Ĝ[n, o, s·i, s·j] = G[n, o, i, j] (the stride of
    the forward becomes a dilation of G). Works on torch tensors and sympy arrays alike."""
    n_batch, channels, rows, cols = grad_output.shape
    spread = reference.zeros(grad_output, (n_batch, channels, stride[0] * (rows - 1) + 1, stride[1] * (cols - 1) + 1))
    for n, o, i, j in product(range(n_batch), range(channels), range(rows), range(cols)):
        spread[n, o, stride[0] * i, stride[1] * j] = grad_output[n, o, i, j]
    return spread


def flipped_weight(weight, groups: int):
    """w'[γ·C_in/g + c, o, u, v] = w[γ·C_out/g + o, c, k_H − 1 − u, k_W − 1 − v] for each group γ: the
    kernel rotated by 180° and, within each group, input and output channels exchanged."""
    out_channels, group_channels, kh, kw = weight.shape
    per_group = out_channels // groups
    flipped = reference.zeros(weight, (group_channels * groups, per_group, kh, kw))
    for g, o, c, u, v in product(range(groups), range(per_group), range(group_channels), range(kh), range(kw)):
        flipped[g * group_channels + c, o, u, v] = weight[g * per_group + o, c, kh - 1 - u, kw - 1 - v]
    return flipped


def flipped_padding(case: Case) -> tuple[Pair, Pair]:
    """Padding (before, after) of Ĝ for the stride-1 convolution that gives ∂L/∂x:
    ``d(k − 1) − p`` before and ``d(k − 1) − p + a`` after, a = H − H_min the rows no window
    reaches; negative amounts crop."""
    a = grad_input_output_padding(case)
    before = tuple(case.dilation[i] * (case.weight_shape[2 + i] - 1) - case.padding[i] for i in range(2))
    return before, tuple(before[i] + a[i] for i in range(2))


def grad_input_is_flipped_kernel_convolution(case: Case) -> Equality:
    """∂L/∂x (sympy's derivative) = conv2d(Ĝ, w', stride 1, padding d(k − 1) − p, dilation d,
    groups): zero-inserted G (:func:`zero_insert`), flipped kernel (:func:`flipped_weight`)."""
    x, w, grad_output = conv2d_symbols(case)
    before, after = flipped_padding(case)
    derived = reference.conv2d(zero_insert(grad_output, case.stride), flipped_weight(w, case.groups), None,
                               (1, 1), before, case.dilation, case.groups, padding_after=after)
    truth = conv2d_derivative(case, x, w, grad_output, x)
    return equality("conv2d(zero-inserted G, flipped w) = ∂L/∂x (sympy.diff)", case.describe(), derived, truth)


def grad_weight_is_convolution_with_stride_and_dilation_swapped(case: Case) -> Equality:
    """∂L/∂w (sympy's derivative) = conv2d(x', G', stride d, padding p, dilation s, groups), cropped
    to k × k, where x' and G' exchange batch and channel axes: in ∂L/∂w[u] = Σ_i G[i]·x[s·i + d·u − p]
    the tap u moves by d and the kernel index i by s, so stride and dilation change places."""
    x, w, grad_output = conv2d_symbols(case)
    n_batch, channels = case.input_shape[:2]
    out_channels, group_channels, kh, kw = case.weight_shape
    groups, per_group = case.groups, out_channels // case.groups
    inputs = sympy.MutableDenseNDimArray.zeros(group_channels, groups * n_batch, *case.input_shape[2:])
    for n, c, h, v in product(range(n_batch), range(channels), *(range(size) for size in case.input_shape[2:])):
        inputs[c % group_channels, (c // group_channels) * n_batch + n, h, v] = x[n, c, h, v]
    kernel = sympy.MutableDenseNDimArray.zeros(out_channels, n_batch, *grad_output.shape[2:])
    for n, o, i, j in product(range(n_batch), range(out_channels), *(range(size) for size in grad_output.shape[2:])):
        kernel[o, n, i, j] = grad_output[n, o, i, j]
    swapped = reference.conv2d(inputs, kernel, None, case.dilation, case.padding, case.stride, groups)
    derived = sympy.MutableDenseNDimArray.zeros(*case.weight_shape)
    for o, c, u, v in product(range(out_channels), range(group_channels), range(kh), range(kw)):
        derived[o, c, u, v] = swapped[c, o, u, v]
    truth = conv2d_derivative(case, x, w, grad_output, w)
    return equality("conv2d(x, G, stride d, dilation s) = ∂L/∂w (sympy.diff)", case.describe(), derived, truth)


def grad_weight_from_the_adjoint_columns(case: Case) -> Equality:
    """At stride 1, ∂L/∂w (sympy's derivative) is the weight gradient of the input gradient's own
    correlation -- conv2d(G, w', stride 1, padding d(k − 1) − p, dilation d, groups), w' the flipped
    kernel -- taken with x as that correlation's output gradient, and flipped back (chapter 7,
    eq. perf-pair): ∂L/∂w[o,c,u,v] = Σ x[n,κ(o,c),h,ℓ]·G̃[n,o,h + p − d·u, ℓ + p − d·v]. Both gradients
    therefore read the same windows of G."""
    if case.stride != (1, 1):
        raise ValueError("the identity is the stride-1 one; strided layers split into phases")
    x, w, grad_output = conv2d_symbols(case)
    before, _ = flipped_padding(case)
    flipped_shape = flipped_weight(w, case.groups).shape
    adjoint = reference.conv2d_grad_weight(x, grad_output, flipped_shape, (1, 1), before, case.dilation, case.groups)
    derived = flipped_weight(adjoint, case.groups)
    truth = conv2d_derivative(case, x, w, grad_output, w)
    return equality("flip(∂/∂w' of the adjoint's correlation, x as its G) = ∂L/∂w (sympy.diff)", case.describe(),
                    derived, truth)


def depthwise_on_its_own_grid(case: Case, masked: bool = True) -> Equality:
    """Chapter 7, eq. (perf-depthwise-flat): a stride-1 depthwise correlation whose output grid is its
    input grid, computed as convbook does it -- on each plane flattened to one row of H·W, every tap of
    :func:`convbook.strategies.flat_taps` adds ``w · x_δ[q + off]`` over its positions ``first ≤ q < end``,
    with ``x_δ = x · m_δ`` zero in the columns ℓ where ``ℓ − δ`` is no column -- against the loop
    reference: the masked columns are exactly the padding a shift past the end of a row would read.
    ``masked=False`` leaves the masks out (the border columns then differ)."""
    from .strategies import flat_taps       # imports torch: only where a chapter-7 check needs it
    (n, c, height, width), (kh, kw) = case.input_shape, case.weight_shape[2:]
    geometry = Geometry((kh, kw), (1, 1), case.padding, case.dilation, c, (height, width), (height, width))
    if case.stride != (1, 1) or case.groups != c or case.conv_output_shape()[2:] != (height, width):
        raise ValueError("the identity is for depthwise layers at stride 1 whose output grid is the input grid")
    x, w = symbols("x", case.input_shape), symbols("w", case.weight_shape)
    flat = [[[x[i, k, q // width, q % width] for q in range(height * width)] for k in range(c)] for i in range(n)]
    derived = sympy.MutableDenseNDimArray.zeros(n, c, height, width)
    for shift, taps in flat_taps(geometry).items():
        mask = [int(not masked or 0 <= q % width - shift < width) for q in range(height * width)]
        for tap, offset, first, end in taps:
            for i, k, q in product(range(n), range(c), range(first, end)):
                derived[i, k, q // width, q % width] += (w[k, 0, tap // kw, tap % kw]
                                                         * mask[q + offset] * flat[i][k][q + offset])
    truth = reference.conv2d(x, w, None, **case.geometry())
    claim = "w · (x ⊙ m_δ)[q + off]" if masked else "w · x[q + off], no masks"
    return equality(f"Σ over flat_taps of {claim} = conv2d(x, w), depthwise", case.describe(),
                    derived, truth)



PHASE_PLANE_CASES = {
    "7 × 7, stride 2, padding 3 (the stem's geometry)": Case((1, 1, 9, 8), (2, 1, 7, 7), stride=(2, 2), padding=(3, 3)),
    "stride (2, 3), dilation (3, 2), groups 2": Case((1, 4, 9, 8), (2, 2, 3, 4), stride=(2, 3), padding=(1, 2),
                                                     dilation=(3, 2), groups=2),
}
"""Tiny strided cases for :func:`im2col_from_phase_planes`: several taps per phase, uneven strides and dilations."""


def im2col_from_phase_planes(case: Case) -> Equality:
    """Chapter 7, strided windows from phase planes: with the phase planes ``P_(a,b)[r, q] = x_pad[s·r + a, s·q + b]``,
    ``x_pad[s·i + d·u] = P_(du mod s)[i + ⌊du/s⌋]``. The column matrix is built as convbook builds it -- tap phase by
    tap phase (:func:`convbook.strategies.taps_by_phase`), every entry read from a plane, never from x_pad -- and the
    forward ``y = W · X_col`` compared with the loop reference."""
    from .strategies import taps_by_phase       # imports torch: only where a chapter-7 check needs it
    (n, c, height, width), (o, cg, kh, kw) = case.input_shape, case.weight_shape
    (sh, sw), (dh, dw), (top, left) = case.stride, case.dilation, case.padding
    rows_out, cols_out = case.conv_output_shape()[2:]
    x, w = symbols("x", case.input_shape), symbols("w", case.weight_shape)

    def padded(i, k, h, l):
        h, l = h - top, l - left
        return x[i, k, h, l] if 0 <= h < height and 0 <= l < width else 0

    def plane(a, b, i, k, r, q):
        return padded(i, k, sh * r + a, sw * q + b)

    columns = {}
    for a, us in taps_by_phase(kh, sh, dh).items():
        for b, vs in taps_by_phase(kw, sw, dw).items():
            for u, v, i, k, r, q in product(us, vs, range(n), range(c), range(rows_out), range(cols_out)):
                columns[i, k, u, v, r, q] = plane(a, b, i, k, r + dh * u // sh, q + dw * v // sw)
    og = o // case.groups
    derived = sympy.MutableDenseNDimArray.zeros(n, o, rows_out, cols_out)
    for i, oo, r, q in product(range(n), range(o), range(rows_out), range(cols_out)):
        derived[i, oo, r, q] = sum(w[oo, k, u, v] * columns.get((i, oo // og * cg + k, u, v, r, q), 0)
                                   for k, u, v in product(range(cg), range(kh), range(kw)))
    truth = reference.conv2d(x, w, None, **case.geometry())
    return equality("W · X_col, X_col read from the phase planes P_(du mod s) at i + ⌊du/s⌋ = conv2d(x, w)",
                    case.describe(), derived, truth)


SHARED_BORDER_CASES = {
    "3 × 3, padding 1, 2 images": Case((2, 2, 3, 4), (2, 2, 3, 3), padding=(1, 1)),
    "padding (2, 0), dilation (1, 2), groups 2": Case((2, 2, 3, 5), (2, 1, 3, 2), padding=(2, 0), dilation=(1, 2),
                                                      groups=2),
    "padding larger than the kernel": Case((2, 1, 2, 3), (1, 1, 2, 2), padding=(3, 3)),
}
"""Tiny stride-1 cases for :func:`shared_borders`: wraps past rows, images and the guard."""


def shared_borders(case: Case, extra_trim: int = 0) -> Equality:
    """Chapter 7, shifted products on shared borders (stride 1): each channel's images laid end to end on a grid
    of R × Q, with R = H_out + d_h(k_h − 1) − min(p_top, p_bottom, d_h(k_h − 1)) (Q likewise) and x at row p_top,
    column p_left of each image, then zeros: the guard. Output (n, i, j) at tap (u, v) reads column
    ``t + d_h·u·Q + d_w·v`` of its channel, t = n·R·Q + i·Q + j -- past a row's end into the next row's zeros, past
    an image's bottom into the next image's, past the last image into the guard -- and the forward
    ``Σ_(u,v) W[:, :, u, v] · P[:, t + off(u, v)]`` is compared with the loop reference. The columns are counted
    by ``convbook.strategies.plane_span``. ``extra_trim`` shrinks R and Q by one more than the rule allows
    (the products then read x where they should read zeros)."""
    from .strategies import plane_span       # imports torch: only where a chapter-7 check needs it
    (n, c, height, width), (o, cg, kh, kw) = case.input_shape, case.weight_shape
    (top, left), (dh, dw) = case.padding, case.dilation
    rows_out, cols_out = case.conv_output_shape()[2:]
    if case.stride != (1, 1):
        raise ValueError("the borders are shared at stride 1")
    spans = (dh * (kh - 1), dw * (kw - 1))
    bottom, right = rows_out + spans[0] - top - height, cols_out + spans[1] - left - width
    rows = rows_out + spans[0] - min(top, bottom, spans[0]) - extra_trim
    cols = cols_out + spans[1] - min(left, right, spans[1]) - extra_trim
    x, w = symbols("x", case.input_shape), symbols("w", case.weight_shape)
    length = n * rows * cols + rows * cols            # the images, then more than enough zeros for the guard
    planes = [[0] * length for _ in range(c)]
    for i, k, h, l in product(range(n), range(c), range(height), range(width)):
        planes[k][i * rows * cols + (h + top) * cols + l + left] = x[i, k, h, l]
    span = plane_span(n, rows, cols, Geometry((kh, kw), (1, 1), (top, left), (dh, dw), case.groups,
                                              (height, width), (rows_out, cols_out)))
    og = o // case.groups
    derived = sympy.MutableDenseNDimArray.zeros(n, o, rows_out, cols_out)
    for i, oo, r, q in product(range(n), range(o), range(rows_out), range(cols_out)):
        t = i * rows * cols + r * cols + q
        assert t < span
        derived[i, oo, r, q] = sum(w[oo, k, u, v] * planes[oo // og * cg + k][t + dh * u * cols + dw * v]
                                   for k, u, v in product(range(cg), range(kh), range(kw)))
    truth = reference.conv2d(x, w, None, **case.geometry())
    claim = "Σ_(u,v) W_(u,v) · P[t + d·u·Q + d·v] on shared zero borders = conv2d(x, w)"
    if extra_trim:
        claim += f", R and Q {extra_trim} smaller than the rule"
    return equality(claim, case.describe(), derived, truth)


CHANNELS_LAST_CASES = {
    "padding 1, 2 images": Case((2, 2, 3, 3), (2, 2, 2, 2), padding=(1, 1)),
    "stride (2, 1), dilation (1, 2), padding (1, 2), groups 2": Case((1, 4, 4, 5), (2, 2, 2, 2), stride=(2, 1),
                                                                   padding=(1, 2), dilation=(1, 2), groups=2),
}
"""Tiny cases for :func:`channels_last_rows`: a batch of two, and every geometry parameter at once."""


def channels_last_rows(case: Case) -> list[Equality]:
    """Chapter 7, eq. (perf-channels-last): with one row per output position and group,
    ``X_rows[γ][(n,i,j), (u,v,c)] = x_cl[n, s·i + d·u − p, s·j + d·v − p, γ·C_g + c]`` (x read in channels-last
    order, ``x_cl[n, h, l, c] = x[n, c, h, l]``, zero outside) and ``W_rows[γ][o, (u,v,c)] = w[γ·O_g + o, c, u, v]``,
    the forward is ``y[n, γ·O_g + o, i, j] = (X_rows[γ] · W_rows[γ]ᵀ)[(n,i,j), o]`` and the weight gradient
    ``∂L/∂w[γ·O_g + o, c, u, v] = Σ_n (G[n,γ] · X_rows[γ][n])[o, (u,v,c)]``, the rows of image n and G[n,γ]
    (O_g × positions). Checked against the loop reference and against sympy's derivative of Σ G ⊙ y."""
    (n, c, height, width), (o, cg, kh, kw) = case.input_shape, case.weight_shape
    (sh, sw), (dh, dw), (top, left), groups = case.stride, case.dilation, case.padding, case.groups
    rows_out, cols_out = case.conv_output_shape()[2:]
    og = o // groups
    x, w, grad_output = conv2d_symbols(case)

    def x_cl(i, h, l, k):
        return x[i, k, h, l] if 0 <= h < height and 0 <= l < width else 0

    positions = list(product(range(n), range(rows_out), range(cols_out)))
    taps = list(product(range(kh), range(kw), range(cg)))
    rows = {g: sympy.Matrix([[x_cl(i, input_position(r, u, sh, top, dh), input_position(q, v, sw, left, dw), g * cg + k)
                               for u, v, k in taps] for i, r, q in positions]) for g in range(groups)}
    weight_rows = {g: sympy.Matrix([[w[g * og + oo, k, u, v] for u, v, k in taps] for oo in range(og)])
                   for g in range(groups)}
    derived = sympy.MutableDenseNDimArray.zeros(n, o, rows_out, cols_out)
    grad = sympy.MutableDenseNDimArray.zeros(o, cg, kh, kw)
    for g in range(groups):
        product_rows = rows[g] * weight_rows[g].T
        for row, (i, r, q) in enumerate(positions):
            for oo in range(og):
                derived[i, g * og + oo, r, q] = product_rows[row, oo]
        for i in range(n):
            image = slice(i * rows_out * cols_out, (i + 1) * rows_out * cols_out)
            g_rows = sympy.Matrix([[grad_output[i, g * og + oo, r, q] for r, q in product(range(rows_out), range(cols_out))]
                                   for oo in range(og)])
            contribution = g_rows * rows[g][image, :]
            for oo, (column, (u, v, k)) in product(range(og), enumerate(taps)):
                grad[g * og + oo, k, u, v] += contribution[oo, column]
    truth = reference.conv2d(x, w, None, **case.geometry())
    return [equality("X_rows · W_rowsᵀ, rows (n,i,j), columns (u,v,c) read channels-last = conv2d(x, w)",
                     case.describe(), derived, truth),
            equality("Σ_n G[n] · X_rows[n] = ∂L/∂w (sympy's derivative)", case.describe(), grad,
                     conv2d_derivative(case, x, w, grad_output, w))]


# --- Chapter 7: Winograd's minimal filtering -----------------------------------------------------

WINOGRAD_CASES = {
    "one 4 × 4 tile, 2 → 2 channels": Case((1, 2, 4, 4), (2, 2, 3, 3)),
    "padding 1, 5 × 4 outputs (the tiles overhang)": Case((2, 1, 5, 4), (1, 1, 3, 3), padding=(1, 1)),
}
"""Tiny 3 × 3, stride-1 cases for F(2 × 2, 3 × 3), one of a whole tile and one with an odd output whose last
tiles reach past the image."""


def winograd_tiles(case: Case) -> list[Equality]:
    """Chapter 7, eqs. (perf-winograd) and (perf-winograd-weight), with the matrices of
    :mod:`convbook.winograd`. On the 4 × 4 tiles ``d[n, c, t]`` of the padded input at stride 2 (zeros past
    its end), ``y_t[n, o] = Aᵀ [Σ_c (G w[o, c] Gᵀ) ⊙ (Bᵀ d[n, c, t] B)] A`` is the forward (the outputs past
    the edge cropped), and with the output-gradient tiles ``Ḡ_t[n, o]`` (zeros past the edge)
    ``∂L/∂w[o, c] = Gᵀ [Σ_{n,t} (A Ḡ_t[n, o] Aᵀ) ⊙ (Bᵀ d[n, c, t] B)] G`` is the weight gradient: checked
    against the loop reference and against sympy's derivative of Σ G ⊙ y."""
    from . import winograd
    b_t, g_m, a_t = (sympy.Matrix([[sympy.nsimplify(e) for e in row] for row in m])
                     for m in (winograd.B_T, winograd.G, winograd.A_T))
    (n, c, height, width), (o, _, _, _) = case.input_shape, case.weight_shape
    top, left = case.padding
    rows_out, cols_out = case.conv_output_shape()[2:]
    th, tw = -(-rows_out // 2), -(-cols_out // 2)
    x, w, grad_output = conv2d_symbols(case)

    def tile(i, k, ti, tj):
        return sympy.Matrix(4, 4, lambda r, q: x[i, k, 2 * ti + r - top, 2 * tj + q - left]
                            if 0 <= 2 * ti + r - top < height and 0 <= 2 * tj + q - left < width else 0)

    def grad_tile(i, oo, ti, tj):
        return sympy.Matrix(2, 2, lambda a, b: grad_output[i, oo, 2 * ti + a, 2 * tj + b]
                            if 2 * ti + a < rows_out and 2 * tj + b < cols_out else 0)

    u = {(oo, k): g_m * sympy.Matrix(3, 3, lambda r, q: w[oo, k, r, q]) * g_m.T for oo in range(o) for k in range(c)}
    v = {(i, k, ti, tj): b_t * tile(i, k, ti, tj) * b_t.T
         for i in range(n) for k in range(c) for ti in range(th) for tj in range(tw)}
    derived = sympy.MutableDenseNDimArray.zeros(n, o, rows_out, cols_out)
    grad_u = {key: sympy.zeros(4, 4) for key in u}
    for i, oo, ti, tj in product(range(n), range(o), range(th), range(tw)):
        m = sum((u[oo, k].multiply_elementwise(v[i, k, ti, tj]) for k in range(c)), sympy.zeros(4, 4))
        y_tile = a_t * m * a_t.T
        for a, b in product(range(2), range(2)):
            if 2 * ti + a < rows_out and 2 * tj + b < cols_out:
                derived[i, oo, 2 * ti + a, 2 * tj + b] = y_tile[a, b]
        grad_m = a_t.T * grad_tile(i, oo, ti, tj) * a_t
        for k in range(c):
            grad_u[oo, k] += grad_m.multiply_elementwise(v[i, k, ti, tj])
    grad = sympy.MutableDenseNDimArray.zeros(o, c, 3, 3)
    for (oo, k), gu in grad_u.items():
        gw = g_m.T * gu * g_m
        for r, q in product(range(3), range(3)):
            grad[oo, k, r, q] = gw[r, q]
    truth = reference.conv2d(x, w, None, **case.geometry())
    return [equality("Aᵀ [Σ_c U ⊙ V] A on 4 × 4 tiles at stride 2 = conv2d(x, w)", case.describe(), derived, truth),
            equality("Gᵀ [Σ (A Ḡ Aᵀ) ⊙ V] G = ∂L/∂w (sympy's derivative)", case.describe(), grad,
                     conv2d_derivative(case, x, w, grad_output, w))]


# --- Chapter 7: the convolution theorem -------------------------------------------------------

SPECTRAL_CASES = {
    "padding (1, 0), 2 channels": Case((1, 2, 3, 2), (2, 2, 2, 2), padding=(1, 0)),
    "stride (2, 1), dilation (1, 2), padding (0, 1), groups 2": Case(
        (1, 2, 4, 3), (2, 1, 2, 2), stride=(2, 1), padding=(0, 1), dilation=(1, 2), groups=2),
}
"""Tiny cases whose transform lengths (4 or 2) make every root of unity exact (ω = i or −1)."""


def _root(size: int, power: int) -> sympy.Expr:
    """ω^power with ω = e^(2πi/size), as cos + i·sin (exact for the lengths of :data:`SPECTRAL_CASES`)."""
    angle = 2 * sympy.pi * (power % size) / size
    return sympy.cos(angle) + sympy.I * sympy.sin(angle)


def _spectrum(plane, sizes, sign: int = -1, positions=None) -> dict:
    """{(f_h, f_w): Σ_{a,b} plane[a][b] · ω_h^(sign·f_h·h_a) · ω_w^(sign·f_w·ℓ_b)} with the entries at
    positions (h_a, ℓ_b) -- their indices, or the given ``positions`` (rows, columns): for a real plane
    the DFT (sign −1) or its conjugate (sign +1); for a kernel at the taps' offsets, its tap spectrum."""
    rows, cols = positions or (range(len(plane)), range(len(plane[0])))
    return {(fh, fw): sum(plane[a][b] * _root(sizes[0], sign * fh * rows[a]) * _root(sizes[1], sign * fw * cols[b])
                          for a in range(len(plane)) for b in range(len(plane[0])))
            for fh in range(sizes[0]) for fw in range(sizes[1])}


def _inverse(hat: dict, sizes, rows: int, cols: int, offsets=(0, 0), step=(1, 1)) -> list:
    """(1/S_h S_w) Σ_f hat[f] · ω^(f·(step·i + offset)) for i < rows, j < cols."""
    scale = sympy.Rational(1, sizes[0] * sizes[1])
    return [[scale * sum(value * _root(sizes[0], fh * (step[0] * i + offsets[0]))
                         * _root(sizes[1], fw * (step[1] * j + offsets[1])) for (fh, fw), value in hat.items())
             for j in range(cols)] for i in range(rows)]


def spectral_contractions(case: Case, shorten: int = 0) -> list[Equality]:
    """Chapter 7, eq. (perf-fft): the three contractions as products of spectra, frequency by frequency,
    against the loop reference (forward) and sympy's derivatives (the two gradients), exactly. The tap
    spectrum ``Ĝ[f] = Σ_u w[u] ω^(f·m_u)`` takes its offsets ``m_u = d·u − p`` from the index map
    (:func:`convbook.index_map.input_position` at i = 0) and the lengths from :func:`convbook.spectral.transform_size`;
    ``shorten`` makes both lengths that much shorter, so that some sums wrap around."""
    from .spectral import transform_size          # imports torch: only where a chapter-7 check needs it
    x, w, grad = conv2d_symbols(case)
    (n_images, channels, height, width), (out_channels, per_group, kh, kw) = case.input_shape, case.weight_shape
    out_rows, out_cols = case.conv_output_shape()[2:]
    sizes = tuple(transform_size(*dims) - shorten for dims in zip(
        (height, width), (out_rows, out_cols), (kh, kw), case.stride, case.padding, case.dilation))
    outs_per_group = out_channels // case.groups
    group_of = [(o // outs_per_group) * per_group for o in range(out_channels)]   # first input channel of o's group
    offsets = [[input_position(0, u, 1, case.padding[a], case.dilation[a]) for u in range(k)]
               for a, k in enumerate((kh, kw))]

    plane = lambda t, i, c, rows, cols: [[t[i, c, h, l] for l in range(cols)] for h in range(rows)]
    x_hat = {(i, c): _spectrum(plane(x, i, c, height, width), sizes) for i in range(n_images) for c in range(channels)}
    stretched = zero_insert(grad, case.stride)     # ỹ: G with s − 1 zeros between its entries
    g_hat = {(i, o, s): _spectrum(plane(stretched, i, o, *stretched.shape[2:]), sizes, s)
             for i in range(n_images) for o in range(out_channels) for s in (-1, 1)}   # DFT of ỹ (−1), conjugate (+1)
    kernel = {(o, c, s): _spectrum(plane(w, o, c, kh, kw), sizes, s, offsets)   # Ĝ (+1) and its conjugate (−1)
              for o in range(out_channels) for c in range(per_group) for s in (1, -1)}
    frequencies = list(x_hat[0, 0])

    forward = sympy.MutableDenseNDimArray.zeros(n_images, out_channels, out_rows, out_cols)
    grad_input = sympy.MutableDenseNDimArray.zeros(*case.input_shape)
    grad_weight = sympy.MutableDenseNDimArray.zeros(*case.weight_shape)
    for i, o in product(range(n_images), range(out_channels)):
        y_hat = {f: sum(x_hat[i, group_of[o] + c][f] * kernel[o, c, 1][f] for c in range(per_group)) for f in frequencies}
        for r, row in enumerate(_inverse(y_hat, sizes, out_rows, out_cols, step=case.stride)):
            for q, value in enumerate(row):
                forward[i, o, r, q] = value
    for i, c in product(range(n_images), range(channels)):
        group, local = divmod(c, per_group)
        os_ = range(group * outs_per_group, (group + 1) * outs_per_group)
        back = {f: sum(g_hat[i, o, -1][f] * kernel[o, local, -1][f] for o in os_) for f in frequencies}
        for h, row in enumerate(_inverse(back, sizes, height, width)):
            for l, value in enumerate(row):
                grad_input[i, c, h, l] = value
    for o, c in product(range(out_channels), range(per_group)):
        products = {f: sum(g_hat[i, o, 1][f] * x_hat[i, group_of[o] + c][f] for i in range(n_images)) for f in frequencies}
        for u, v in product(range(kh), range(kw)):
            grad_weight[o, c, u, v] = _inverse(products, sizes, 1, 1, (offsets[0][u], offsets[1][v]))[0][0]
    label = case.describe() + (f", transform {sizes[0]}×{sizes[1]}" if shorten == 0 else
                               f", transform shortened to {sizes[0]}×{sizes[1]}")
    return [
        equality("y = every s-th entry of IDFT(X̂ · Ĝ)  (perf-fft)", label, forward,
                 reference.conv2d(x, w, None, **case.geometry())),
        equality("∂L/∂x = IDFT(Ŷ̃ · conj Ĝ), cropped (sympy.diff)", label, grad_input,
                 conv2d_derivative(case, x, w, grad, x)),
        equality("∂L/∂w = IDFT(Σ_n conj Ŷ̃ · X̂) at the offsets (sympy.diff)", label, grad_weight,
                 conv2d_derivative(case, x, w, grad, w)),
    ]


# --- Chapter 4: the transposed convolution -----------------------------------------------------

def linear_map_matrix(outputs, inputs) -> sympy.Matrix:
    """The matrix of a linear map from its symbolic image: entry (r, c) = ∂ output_r / ∂ input_c."""
    return sympy.Matrix(entries(outputs)).jacobian(entries(inputs))


def conv_and_transpose_matrices(case: Case) -> tuple[sympy.Matrix, sympy.Matrix]:
    """(M, T): M the matrix of x ↦ conv2d(x, w) for x of the transposed output's shape, T the matrix
    of y ↦ conv_transpose2d(y, w), both read off the loop references applied to symbols, with the
    same symbolic weight w. conv2d keeps its first H_in × W_in outputs: all of them when the output
    padding is below the stride (eq. 4.3), fewer when a dilation allows a ≥ s."""
    w = symbols("w", case.weight_shape)
    y, x = symbols("y", case.input_shape), symbols("x", case.transpose_output_shape())
    rows, cols = case.input_shape[2:]
    image = reference.conv2d(x, w, None, **case.geometry())[:, :, :rows, :cols]
    transposed = reference.conv_transpose2d(y, w, None, case.stride, case.padding, case.output_padding,
                                            case.groups, case.dilation)
    return linear_map_matrix(image, x), linear_map_matrix(transposed, y)


def conv_transpose_matrix_is_transpose(case: Case) -> Equality:
    """The matrix T of conv_transpose2d is exactly Mᵀ, M the matrix of conv2d (:func:`conv_and_transpose_matrices`)."""
    conv, transposed = conv_and_transpose_matrices(case)
    equal = conv.shape == transposed.T.shape and transposed == conv.T
    return Equality(f"matrix of conv_transpose2d = Mᵀ ({conv.rows}×{conv.cols} M)", case.describe("y"),
                    conv.rows * conv.cols, equal)


def conv_transpose2d_gradients(case: Case) -> list[Equality]:
    """Eq. (4.5) against sympy's derivative of L = Σ G ⊙ conv_transpose2d(y, w, b): the input
    gradient is ``conv2d(G, w)`` (its first H_in × W_in outputs, see :func:`conv_and_transpose_matrices`),
    the weight gradient the correlation of G with y, the bias gradient Σ G."""
    y, w = symbols("y", case.input_shape), symbols("w", case.weight_shape)
    b, grad_output = symbols("b", (case.weight_shape[1] * case.groups,)), symbols("G", case.transpose_output_shape())
    geometry, label = case.geometry(), case.describe("y")
    loss = pairing(grad_output, reference.conv_transpose2d(y, w, b, case.stride, case.padding, case.output_padding,
                                                           case.groups, case.dilation))
    return [
        equality("∂L/∂y = conv2d(G, w)  (4.5a)", label,
                 reference.conv2d(grad_output, w, None, **geometry)[:, :, :y.shape[2], :y.shape[3]], gradient(loss, y)),
        equality("∂L/∂w = correlation of G with y  (4.5b)", label,
                 reference.conv2d_grad_weight(y, grad_output, case.weight_shape, **geometry), gradient(loss, w)),
        equality("∂L/∂b = Σ G over n, h, w  (4.5c)", label, reference.conv2d_grad_bias(grad_output), gradient(loss, b)),
    ]


def markdown_table(results: list[Equality]) -> str:
    """One row per comparison: claim, case, entries compared, all equal."""
    lines = ["| claim | case | entries compared | all equal |", "|---|---|---|---|"]
    lines += [f"| {r.claim} | {r.case} | {r.entries} | {r.all_equal} |" for r in results]
    return "\n".join(lines)


# --- Chapter 1: sizes by enumeration -----------------------------------------------------------

SIZE_GRID = dict(size=range(1, 9), kernel_size=range(1, 5), stride=range(1, 4),
                 padding=(0, 1, 2, (0, 1), (1, 0), (1, 2)), dilation=range(1, 4))
"""Chapter 1's tiny configurations; a padding is one number for both sides or a pair (before, after)."""


def before_after(padding: int | Pair) -> Pair:
    """A padding as (before, after): one number pads both sides alike."""
    return (padding, padding) if isinstance(padding, int) else tuple(padding)


def size_cases(grid: dict = SIZE_GRID) -> list[tuple]:
    """Every (H, k, s, padding, d) of ``grid`` whose dilated kernel (1.2) fits in the padded input:
    the configurations PyTorch accepts (it raises for the others)."""
    cases = []
    for size, k, s, padding, d in product(*(grid[name] for name in ("size", "kernel_size", "stride", "padding",
                                                                     "dilation"))):
        if size + sum(before_after(padding)) >= effective_kernel_size(k, d):
            cases.append((size, k, s, padding, d))
    return cases


def valid_window_count(size: int, kernel_size: int, stride: int = 1, padding: int | Pair = 0,
                       dilation: int = 1) -> int:
    """The number of output positions i = 0, 1, … whose whole window -- every tap's position by the
    index map (1.1) -- lies in the padded input [−p_before, H + p_after), counted one by one."""
    before, after = before_after(padding)
    candidates = range(size + before + after + 1)  # from i = H + p_b + p_a on, even tap 0 is past the end
    return sum(all(-before <= h < size + after for h in window(i, kernel_size, stride, before, dilation))
               for i in candidates)


def output_size_by_enumeration(grid: dict = SIZE_GRID) -> Equality:
    """Eq. (1.3) against counting: on every case of ``grid`` the number of windows inside the padded
    input (:func:`valid_window_count`) equals ``conv_output_size``."""
    cases = size_cases(grid)
    agree = all(valid_window_count(*case) == conv_output_size(*case) for case in cases)
    return Equality("windows inside the padded input = ⌊(H + p_b + p_a − d(k−1) − 1)/s⌋ + 1  (1.3)",
                    f"{len(cases)} configurations (H ≤ {max(grid['size'])}, k ≤ {max(grid['kernel_size'])}, "
                    f"s ≤ {max(grid['stride'])}, d ≤ {max(grid['dilation'])})", len(cases), agree)


def solved_output_size() -> tuple[sympy.Rel, sympy.Rel, sympy.Expr]:
    """Eq. (1.3) derived by sympy: the condition "the last tap of output i is inside the padded
    input", ``s·i + d(k−1) − p_b ≤ H + p_a − 1`` (from the index map (1.1) at u = k − 1), solved
    for i; outputs i = 0 … ⌊bound⌋ qualify, so there are ⌊bound⌋ + 1 of them.
    Returns (condition, solution, number of outputs)."""
    size, k, s, d = sympy.symbols("H k s d", integer=True, positive=True)
    before, after = sympy.symbols("p_b p_a", integer=True, nonnegative=True)
    i = sympy.Symbol("i", integer=True, nonnegative=True)
    condition = input_position(i, k - 1, s, before, d) <= size + after - 1
    solution = sympy.solve(condition, i)
    return condition, solution, sympy.floor(solution.rhs) + 1


def output_size_by_solving(grid: dict = SIZE_GRID) -> list[Equality]:
    """The solved bound is the one of eq. (1.3), symbolically, and ⌊bound⌋ + 1 -- sympy's floor of
    the exact rational -- equals ``conv_output_size`` on every case of ``grid``."""
    _, solution, count = solved_output_size()
    names = {symbol.name: symbol for symbol in count.free_symbols}
    size, k, s, d, before, after = (names[n] for n in ("H", "k", "s", "d", "p_b", "p_a"))
    formula = (size + before + after - (d * (k - 1) + 1)) / s
    cases = size_cases(grid)
    values = []
    for h, kk, ss, padding, dd in cases:
        pb, pa = before_after(padding)
        values.append(count.subs({size: h, k: kk, s: ss, d: dd, before: pb, after: pa}))
    return [Equality("solve(s·i + d(k−1) − p_b ≤ H + p_a − 1) gives i ≤ (H + p_b + p_a − d(k−1) − 1)/s",
                     "symbolic H, k, s, p_b, p_a, d", 1, sympy.simplify(solution.rhs - formula) == 0),
            Equality("⌊bound⌋ + 1 (sympy.floor) = conv_output_size  (1.3)", f"{len(cases)} configurations",
                     len(cases), all(v == conv_output_size(*case) for v, case in zip(values, cases)))]


def same_padding_by_enumeration(grid: dict = SIZE_GRID) -> Equality:
    """Eq. (1.4): with stride 1 and the (before, after) padding of ``same_padding``, the number of
    windows inside the padded input (counted) is H, for every H, k, d of ``grid``."""
    cases = list(product(grid["size"], grid["kernel_size"], grid["dilation"]))
    agree = all(valid_window_count(h, k, 1, same_padding(k, d), d) == h for h, k, d in cases)
    return Equality("'same' padding (⌊d(k−1)/2⌋ before, the rest after) keeps H  (1.4)",
                    f"{len(cases)} (H, k, d)", len(cases), agree)


# --- Chapter 2: channel groups -----------------------------------------------------------------

def groups_are_separate_convolutions(case: Case) -> Equality:
    """Eq. (2.1) with g groups is g independent convolutions: output channels
    γ·C_out/g … (γ+1)·C_out/g − 1 of ``conv2d(x, w, groups=g)`` equal ``conv2d`` (groups = 1) of
    input channels γ·C_in/g … (γ+1)·C_in/g − 1 with the same block of w, for every group γ."""
    x, w, b = symbols("x", case.input_shape), symbols("w", case.weight_shape), symbols("b", case.weight_shape[:1])
    geometry, groups = case.geometry(), case.groups
    grouped = reference.conv2d(x, w, b, **geometry)
    inputs, outputs = case.input_shape[1] // groups, case.weight_shape[0] // groups
    separate = sympy.MutableDenseNDimArray.zeros(*grouped.shape)
    for group in range(groups):
        block = slice(group * outputs, (group + 1) * outputs)
        part = reference.conv2d(x[:, group * inputs:(group + 1) * inputs, :, :], w[block, :, :, :], b[block],
                                **{**geometry, "groups": 1})
        separate[:, block, :, :] = part
    return equality(f"groups={groups}: {groups} separate convolutions", case.describe(), grouped, separate)
