"""The three contractions of a convolution, vectorised with basic tensor operations.

A 2-D convolution is one trilinear form (book eq. 3.1)

    B(x, w, y) = Σ_{n,g,o,c,i,j,u,v} y[n,g,o,i,j] · w[g,o,c,u,v] · x[n,g,c, s·i + d·u − p, s·j + d·v − p]

(channels split into g groups; x read as zero outside the image). Each of its three partial
derivatives is one of the operations this module implements:

* ``correlate``            y = ∂B/∂y:  Conv2d forward                     (eq. 2.1)
* ``correlate_transpose``  x = ∂B/∂x:  ConvTranspose2d forward, and the
                                       input gradient of Conv2d          (eqs. 3.4, 4.1)
* ``correlate_weight``     w = ∂B/∂w:  the weight gradient of both       (eq. 3.3)

All take batched 4-D tensors and a :class:`~convbook.index_map.Geometry`; none loops over
batch, channels or positions (only over kernel taps); none calls a native convolution.

Each contraction exists twice. ``correlate_plain``, ``correlate_transpose_plain`` and
``correlate_weight_plain`` are the *plain vectorised* versions: windows as a strided view and
one ``einsum`` -- the equations as code, chapters 2-4. ``correlate``, ``correlate_transpose``
and ``correlate_weight`` (what autograd calls) compute the same sums with the fastest of the
strategies in :mod:`convbook.strategies`, chosen from the shapes (chapter 7);
``convbook.explain`` says which and why.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .index_map import Geometry


def pad_to_extent(x: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """x with ``p`` zeros before and as many rows/columns after as the windows need
    (or cropped, where the last rows are never read)."""
    (top, left), (rows, cols) = geometry.padding, geometry.extent()
    bottom, right = rows - top - x.shape[2], cols - left - x.shape[3]
    if (top, left, bottom, right) == (0, 0, 0, 0):
        return x
    return F.pad(x, (left, right, top, bottom))


def windows(x_padded: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """All windows of the padded input as a view of shape (N, C, H_out, W_out, kH, kW).

    Element [n, c, i, j, u, v] is x_padded[n, c, s·i + d·u, s·j + d·v]: the index map (eq. 1.1)
    written as strides -- moving one output step moves ``s`` rows, one tap moves ``d`` rows.
    Nothing is copied.
    """
    (sh, sw), (dh, dw) = geometry.stride, geometry.dilation
    sn, sc, srow, scol = x_padded.stride()
    n, c = x_padded.shape[:2]
    return x_padded.as_strided((n, c, *geometry.output_size, *geometry.kernel_size),
                               (sn, sc, sh * srow, sw * scol, dh * srow, dw * scol),
                               x_padded.storage_offset())


def by_group(t: torch.Tensor, dim: int, groups: int) -> torch.Tensor:
    """Split dimension ``dim`` (channels) into (groups, channels per group) -- a view. Sizes are
    explicit so that zero channels still split correctly."""
    return t.unflatten(dim, (groups, t.shape[dim] // groups))


def correlate_plain(x: torch.Tensor, weight: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """Conv2d forward without bias, eq. (2.1):

        y[n,g,o,i,j] = Σ_{c,u,v} w[g,o,c,u,v] · x[n,g,c, s·i + d·u − p, s·j + d·v − p].

    Windows as a strided view, then one contraction with groups as a batch dimension.
    """
    g = geometry.groups
    patches = by_group(windows(pad_to_extent(x, geometry), geometry), 1, g)
    y = torch.einsum("ngcijuv,gocuv->ngoij", patches, by_group(weight, 0, g))
    return y.flatten(1, 2)


def correlate_transpose_plain(y: torch.Tensor, weight: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """The adjoint of :func:`correlate_plain` (ConvTranspose2d forward; Conv2d's input gradient), eq. (3.4):

        x[n,g,c,h,w] = Σ_{o,i,j,u,v : s·i + d·u − p = h, s·j + d·v − p = w} w[g,o,c,u,v] · y[n,g,o,i,j].

    One contraction gives every tap's contribution ``Σ_o w[g,o,c,u,v] y[n,g,o,i,j]`` (a column
    per tap); each tap's column is then added into the rows s·i + d·u of a zero image by a
    strided slice (col2im), and the padding is cropped away.
    """
    g = geometry.groups
    (sh, sw), (dh, dw) = geometry.stride, geometry.dilation
    (kh, kw), (top, left) = geometry.kernel_size, geometry.padding
    (rows_out, cols_out), (height, width) = geometry.output_size, geometry.input_size
    columns = torch.einsum("ngoij,gocuv->ngcuvij", by_group(y, 1, g), by_group(weight, 0, g))
    columns = columns.flatten(1, 2)
    rows, cols = geometry.extent()
    image = y.new_zeros(y.shape[0], columns.shape[1], max(rows, top + height), max(cols, left + width))
    for u in range(kh):
        for v in range(kw):
            image[:, :, dh * u: dh * u + sh * (rows_out - 1) + 1: sh,
                  dw * v: dw * v + sw * (cols_out - 1) + 1: sw] += columns[:, :, u, v]
    return image[:, :, top: top + height, left: left + width].contiguous()


def correlate_weight_plain(x: torch.Tensor, y: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """The weight gradient of both convolutions, eq. (3.3):

        w[g,o,c,u,v] = Σ_{n,i,j} y[n,g,o,i,j] · x[n,g,c, s·i + d·u − p, s·j + d·v − p],

    a correlation of the input with the output-side tensor: the same windows as
    :func:`correlate_plain`, contracted over batch and positions instead of channels and taps.
    """
    g = geometry.groups
    patches = by_group(windows(pad_to_extent(x, geometry), geometry), 1, g)
    weight = torch.einsum("ngcijuv,ngoij->gocuv", patches, by_group(y, 1, g))
    return weight.flatten(0, 1)


def correlate(x: torch.Tensor, weight: torch.Tensor, geometry: Geometry,
              bias: torch.Tensor | None = None) -> torch.Tensor:
    """Conv2d forward (eq. 2.1), plus ``bias`` on the channels when given, by the strategy
    :func:`convbook.strategies.choose` picks."""
    from . import strategies
    return strategies.run("correlate", x, weight, geometry, bias=bias)


def correlate_transpose(y: torch.Tensor, weight: torch.Tensor, geometry: Geometry,
                        bias: torch.Tensor | None = None) -> torch.Tensor:
    """The adjoint (eqs. 3.4, 4.1), plus ``bias`` on the channels when given (ConvTranspose2d's forward), by
    the strategy :func:`convbook.strategies.choose` picks."""
    from . import strategies
    return strategies.run("correlate_transpose", y, weight, geometry, bias=bias)


def correlate_weight(x: torch.Tensor, y: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """The weight gradient (eq. 3.3) by the strategy :func:`convbook.strategies.choose` picks."""
    from . import strategies
    return strategies.run("correlate_weight", x, y, geometry)
