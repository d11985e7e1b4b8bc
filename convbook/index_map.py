"""The index map and the size arithmetic of 2-D convolution (book chapter 1).

Every other part of convbook -- the vectorised kernels, the loop references, the sympy checks
and the figures -- reads positions and sizes from this module, so that the text, the pictures
and the code cannot disagree.

Notation (one spatial dimension; rows and columns are independent)::

    H  input size          k  kernel size       s  stride
    p  padding             d  dilation          a  output padding (transposed only)

The index map (eq. 1.1): output position ``i`` and kernel tap ``u`` read input position

    h = s·i + d·u − p.
"""
from __future__ import annotations

from dataclasses import dataclass

Pair = tuple[int, int]


def input_position(out: int, tap: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """The index map, eq. (1.1): ``h = s·i + d·u − p``."""
    return stride * out + dilation * tap - padding


def effective_kernel_size(kernel_size: int, dilation: int = 1) -> int:
    """Span of a dilated kernel, eq. (1.2): ``d·(k − 1) + 1``."""
    return dilation * (kernel_size - 1) + 1


def conv_output_size(size: int, kernel_size: int, stride: int = 1, padding: int | Pair = 0,
                     dilation: int = 1) -> int:
    """Output size of a convolution, eq. (1.3): ``⌊(H + 2p − d(k − 1) − 1)/s⌋ + 1``.

    ``padding`` is either one number added on both sides or a pair (before, after).
    """
    before, after = (padding, padding) if isinstance(padding, int) else padding
    return (size + before + after - effective_kernel_size(kernel_size, dilation)) // stride + 1


def conv_transpose_output_size(size: int, kernel_size: int, stride: int = 1, padding: int = 0,
                               dilation: int = 1, output_padding: int = 0) -> int:
    """Output size of a transposed convolution, eq. (4.2): ``(H − 1)s − 2p + d(k − 1) + a + 1``."""
    return (size - 1) * stride - 2 * padding + dilation * (kernel_size - 1) + output_padding + 1


def same_padding(kernel_size: int, dilation: int = 1) -> Pair:
    """Padding (before, after) that keeps the size at stride 1, eq. (1.4).

    The total ``d(k − 1)`` is split as PyTorch splits it: the extra row or column of an odd
    total goes after (bottom, right).
    """
    total = dilation * (kernel_size - 1)
    return total // 2, total - total // 2


def window_extent(output_size: int, kernel_size: int, stride: int = 1, dilation: int = 1) -> int:
    """How many (padded) input positions the windows of ``output_size`` outputs touch:
    the last one reads ``s(H_out − 1) + d(k − 1)``, so the extent is that plus one."""
    return stride * (output_size - 1) + effective_kernel_size(kernel_size, dilation)


def window(out: int, kernel_size: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> list[int]:
    """The input positions read by output position ``out``: eq. (1.1) for every tap ``u``."""
    return [input_position(out, u, stride, padding, dilation) for u in range(kernel_size)]


@dataclass(frozen=True)
class Geometry:
    """Everything the three contractions need to know about one convolution.

    A convolution relates a *large* tensor x (size ``input_size``) to a *small* tensor y (size
    ``output_size``) through a kernel w: ``y[i] = Σ_u w[u] · x[s·i + d·u − p]``. Conv2d computes y
    from x; its adjoint, the transposed convolution, computes x from y; both share this
    geometry. ``padding`` is the padding *before* (top, left); positions that the index map
    sends outside ``[0, input_size)`` read zeros.
    """

    kernel_size: Pair
    stride: Pair
    padding: Pair
    dilation: Pair
    groups: int
    input_size: Pair
    output_size: Pair

    def extent(self) -> Pair:
        """Rows and columns of (padded) input that the windows of y touch."""
        return tuple(window_extent(o, k, s, d) for o, k, s, d in
                     zip(self.output_size, self.kernel_size, self.stride, self.dilation))


def output_padding_for_size(requested, input_shape: tuple[int, ...],
                            kernel_size: Pair, stride: Pair, padding: Pair, dilation: Pair) -> list[int]:
    """The ``output_padding`` that makes a transposed convolution produce ``requested`` rows and
    columns (eq. 4.4): ``a = H_req − H_min`` with ``H_min`` from eq. (4.2) at ``a = 0``; valid
    sizes are ``H_min … H_min + s − 1``. Same rules and messages as ``torch.nn.ConvTranspose2d``.
    """
    batched = len(input_shape) == 4
    non_spatial = 2 if batched else 1
    if len(requested) == non_spatial + 2:
        requested = requested[non_spatial:]
    if len(requested) != 2:
        raise ValueError(f"ConvTranspose2D: for {len(input_shape)}D input, output_size must have 2 "
                         f"or {non_spatial + 2} elements (got {len(requested)})")
    spatial = input_shape[non_spatial:]
    min_sizes = [conv_transpose_output_size(spatial[i], kernel_size[i], stride[i], padding[i], dilation[i])
                 for i in range(2)]
    max_sizes = [min_sizes[i] + stride[i] - 1 for i in range(2)]
    for i in range(2):
        if not min_sizes[i] <= requested[i] <= max_sizes[i]:
            import torch
            raise ValueError(f"requested an output size of {requested}, but valid sizes range "
                             f"from {min_sizes} to {max_sizes} (for an input of {torch.Size(spatial)})")
    return [requested[i] - min_sizes[i] for i in range(2)]
