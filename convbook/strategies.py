"""Fast, exact strategies for the three contractions, and the dispatcher that picks one (book chapter 7).

Every strategy computes exactly the same sums as the plain versions of :mod:`convbook.kernels`
(eqs. 2.1, 3.3, 3.4) -- only the order of memory traffic and the shape of the matrix products
change. Notation: x (N, C, H, W) the large side, y (N, O, H_out, W_out) the small side, w
(O, C/g, k_h, k_w), g groups, s stride, d dilation, p padding before; per group C_g = C/g and
O_g = O/g; K = C_g·k_h·k_w; L = H_out·W_out.

Strategies (``name: equation``):

* ``im2col`` -- copy the windows into a column matrix, then one matrix product per group:
  ``Y[n,g] = W[g] · X_col[n,g]``,  ``X_col[n,g][(c,u,v),(i,j)] = x[n,g,c, s·i+d·u−p, s·j+d·v−p]``.
* ``im2col_folded`` -- the same with the batch folded into the columns (``Y[g] = W[g] · X_col[g]``
  with columns (n,i,j)): one large product instead of N small ones when L is small.
* ``channels_last`` -- im2col with the column matrix transposed, one row per output position, copied
  from a channels-last padded copy of x: ``Y_rows[g] = X_rows[g] · W_rows[g]ᵀ`` with
  ``X_rows[g][(n,i,j),(u,v,c)] = x_pad[n, s·i + d·u, s·j + d·v, g·C_g + c]``, multiplied by oneDNN's inner
  product (:func:`products.linear`), then copied back to NCHW. Not picked by :func:`choose` (chapter 7,
  *Channels last*: not reliably faster, and a float32 sum in one chain); ``forced("channels_last")`` runs it.
* ``shifted`` -- no column matrix: the padded input, split into s² phase planes and flattened,
  is multiplied once per tap at a constant offset:
  ``Y[g] += W[g,:,:,u,v] · P_{du mod s}[g][:, off(u,v) + ·]`` with ``off = ⌊du/s⌋·R + ⌊dv/s⌋``.
* ``row_shifted`` -- im2col along the rows only: the k_w column taps copied,
  ``X_a[(c,v),(n,r,j)] = x_pad[n,c, s_h·r + a, s_w·j + d_w·v]``, and the k_h row taps stacked into one
  product whose shifted parts are added up:
  ``Y[g] = Σ_u (W[g,:,:,u,:] · X_{du mod s_h}[g])[:, ⌊du/s_h⌋·W_out + ·]``.
* ``depthwise`` -- one input channel per group: a multiply-accumulate per tap,
  ``y[n,c] = Σ_{u,v} w[c,u,v] · x[n,c, s·i+d·u−p, s·j+d·v−p]``. Where the output grid is the input
  grid (stride 1, "same" padding) on the image itself, each plane one flat row, tap (u, v) a constant
  offset and the columns a shift would wrap masked: ``y[n,c,q] = Σ w[c,u,v] · (x ⊙ m_δ)[n,c,q + off]``;
  otherwise on the flattened phase planes (as in ``shifted``), block of channels by block (planes
  built, passed over and copied out while in the cache); its weight
  gradient is ``shifted`` with O_g = C_g = 1 (a dot product per channel and tap), run block of channels
  by block; at stride 1 its adjoint is the ``phase``: one depthwise correlation with the flipped kernel.
* ``col2im`` (adjoint) -- one product ``X_col = Wᵀ · Y`` then each tap's column added into the
  rows ``s·i + d·u − p`` of the image (only the rows that land inside it); ``col2im_folded`` the
  same with the batch folded into the product's columns.
* ``phase`` (adjoint) -- the sub-pixel decomposition: output rows ``h + p ≡ r (mod s)`` receive
  only the taps with ``d·u ≡ r``, and from them ``x_r[m] = Σ_u W_uᵀ · y[m − ⌊du/s⌋]``: s² stride-1
  correlations, each by the forward dispatcher, with no zeros inserted.
* ``fft`` -- the convolution theorem (:mod:`convbook.spectral`): the images' spectra, one small
  matrix product per frequency, ``Ŷ[f] = X̂[f] · Ĝ[f]`` (adjoint ``X̂ = Ŷ̃ · Ĝᴴ``, weight gradient
  ``Ŵ = Σ_n Ŷ̃ᴴ · X̂`` read back at the taps), with a transform long enough that nothing wraps. Its
  cost hardly grows with the kernel; a non-finite entry in its result sends the call to the direct
  strategy (the transform would spread one inf or NaN to every output, where the sums put it
  only in the windows that hold it).
* ``winograd`` -- Winograd's minimal filtering F(2 × 2, 3 × 3) (:mod:`convbook.winograd`), for 3 × 3 kernels at
  stride 1: on the 4 × 4 tiles d of the padded input at stride 2, ``Y_tile = Aᵀ [U[ξ,ν] · V[ξ,ν]] A`` with
  ``U = G w Gᵀ`` and ``V = Bᵀ d B``, 16 products of depth C_g, 2.25 times fewer multiplications; the weight
  gradient by the adjoint, ``∂L/∂U[ξ,ν] = (A Ḡ Aᵀ)[ξ,ν] · V[ξ,ν]ᵀ``, ``∂L/∂w = Gᵀ (∂L/∂U) G``. Forced on
  another geometry it runs im2col; a non-finite result is computed again by im2col.
* ``plain`` -- the plain vectorised version of :mod:`convbook.kernels` (einsum).

Pairs (``correlate_pair``): a backward that needs both gradients reads grad_output's windows
twice -- im2col, shifted, row_shifted and depthwise then build its columns (or planes) once and run
both products on them (:func:`backward_pair`, book eq. perf-pair). Where nothing pairs, an im2col forward
whose weight gradient will contract the same column matrix keeps it for the backward (:func:`keeping_columns`).

:func:`choose` picks one from the shapes and says why; :func:`explain` does so for a public call;
``with forced("shifted"):`` overrides the choice on this thread. The im2col and col2im products go through
``products.bmm`` (:mod:`convbook.products`): ``torch.bmm``, or oneDNN's inner product where they are wide.
"""
from __future__ import annotations

import math
import sys
import threading
from collections.abc import Callable
from contextlib import contextmanager
from functools import partial

import torch

from . import kernels, products, spectral, winograd, workspace
from .index_map import Geometry, input_position

CONTRACTIONS = ("correlate", "correlate_transpose", "correlate_weight", "correlate_pair")
"""The three contractions of eqs. (2.1), (3.4), (3.3), and the backward pair: a correlation and
the weight gradient that reads the same large side, computed together (:func:`backward_pair`)."""


# --------------------------------------------------------------------------------------------
# Small helpers: sizes, clipped tap ranges, padded and phase-split copies
# --------------------------------------------------------------------------------------------

def _split(geometry: Geometry, weight: torch.Tensor) -> tuple[int, int, int]:
    """(g, O_g, C_g) from the weight (O, C_g, k_h, k_w)."""
    g = geometry.groups
    return g, weight.shape[0] // g, weight.shape[1]


def _taps_by_group(weight: torch.Tensor, g: int, transpose: bool) -> torch.Tensor:
    """The weight as one (g, O_g, C_g) matrix per tap -- shape (k_h, k_w, g, O_g, C_g) -- or its
    transpose (k_h, k_w, g, C_g, O_g); contiguous, so each tap is a dense matrix."""
    o, cg, kh, kw = weight.shape
    taps = weight.reshape(g, o // g, cg, kh, kw).permute(3, 4, 0, 1, 2)
    return (taps.transpose(-1, -2) if transpose else taps).contiguous()


def _inside(size: int, count: int, step: int, start: int) -> tuple[int, int]:
    """The range [lo, hi) of m in [0, count) whose position ``step·m + start`` lies in [0, size)."""
    lo = max(0, -(start // step))
    hi = min(count, (size - 1 - start) // step + 1)
    return lo, max(lo, hi)


def _strided(lo: int, hi: int, step: int, start: int) -> slice:
    """Positions ``step·m + start`` for m in [lo, hi) as a slice (hi > lo)."""
    first = step * lo + start
    return slice(first, first + step * (hi - lo - 1) + 1, step)


def _phase_planes(x: torch.Tensor, geometry: Geometry, name: str, capacity: int = 0, border: bool = True,
                  parts: int = 1, shared: bool = False):
    """The padded input split into stride phases, channel-major and flattened:

        planes[a][b][c, n·R·Q + r·Q + q] = x_pad[n, c, s_h·r + a, s_w·q + b],   x_pad[.., t, ..] = x[.., t − p, ..]

    for the phases a = d·u mod s_h (b likewise) that some tap reads, with R = H_out + max ⌊d·u/s_h⌋
    rows and Q = W_out + max ⌊d·v/s_w⌋ columns, so tap (u, v) of output (n, i, j) is element
    ``n·R·Q + i·Q + j + off(u, v)`` of its plane, ``off = ⌊d·u/s_h⌋·Q + ⌊d·v/s_w⌋`` (eq. 1.1 with the
    stride absorbed into the phase). Returns (planes indexed by phase, R, Q); zeros where the
    index map falls outside x.

    Block by block of channels (depthwise), the buffer holds ``capacity`` channels and the blocks use
    its first ones; with ``border=False`` only the window inside x is copied -- the zeros around it
    are the previous block's, written by the call with ``border=True``.

    With ``parts`` P > 1 the images are laid out in P parts of M = N/P, part by part (:func:`_parts`):
    ``planes[a][b][p·C + c, m·R·Q + r·Q + q]`` holds image n = p·M + m -- so the P·g groups of all
    parts are one batch of matrices with a single stride, one per thread (:func:`correlate_shifted`).

    ``shared`` (stride 1): consecutive rows share their zero columns, and consecutive images their zero
    rows -- R and Q shrink by ``min(p_top, p_bottom, d_h·(k_h − 1))`` and ``min(p_left, p_right, d_w·(k_w − 1))``
    (the outputs keep R ≥ H_out rows and Q ≥ W_out columns of their own). A tap that reads past
    the right end of a row lands on the next row's left zeros, one past the bottom of an image on the
    next image's top zeros (the next channel's, after the last image), and a few zeros after the last
    channel (the buffer's guard) serve the last one. Fewer columns to multiply: 29 × 29 instead of
    30 × 30 per 28 × 28 image at padding 1, the wrapped columns a product computes and drops (see
    :func:`plane_span`) from 13% of those it keeps to 6% (four images per part). Measured (training step,
    paired against the unshared planes, 21 rounds): grp8_128_28 0.94 of the time, dil2_64_56 0.98,
    T_g4_64_k4s2 0.99.
    """
    n, c, height, width = x.shape
    (kh, kw), (sh, sw), (dh, dw) = geometry.kernel_size, geometry.stride, geometry.dilation
    (top, left), (rows_out, cols_out) = geometry.padding, geometry.output_size
    row_phases = sorted({dh * u % sh for u in range(kh)})
    col_phases = sorted({dw * v % sw for v in range(kw)})
    rows, cols = rows_out + dh * (kh - 1) // sh, cols_out + dw * (kw - 1) // sw
    guard = 0
    if shared and (sh, sw) == (1, 1):
        trim_rows = max(0, min(top, rows - top - height, rows - rows_out))   # (R ≥ H_out, Q ≥ W_out: the
        trim_cols = max(0, min(left, cols - left - width, cols - cols_out))  # outputs keep a grid of their own)
        rows, cols = rows - trim_rows, cols - trim_cols
        guard = trim_rows * cols + trim_cols
    windows = [[(*_inside(height, rows, sh, a - top), *_inside(width, cols, sw, b - left)) for b in col_phases]
               for a in row_phases]
    shape = (len(row_phases), len(col_phases), parts, max(c, capacity), n // parts, rows, cols)
    flat, kept = workspace.framed_buffer(name, (math.prod(shape) + guard,), (shape, tuple(map(tuple, windows))),
                                         x.dtype, x.device)
    if guard:
        flat[flat.numel() - guard:].zero_()
    planes = flat[:flat.numel() - guard].view(shape)
    planes, x_cm = planes[:, :, :, :c], x.unflatten(0, (parts, n // parts)).transpose(1, 2)
    for ia, a in enumerate(row_phases):
        for ib, b in enumerate(col_phases):
            r0, r1, q0, q1 = windows[ia][ib]
            _frame(planes[ia, ib], (r0, r1, q0, q1),
                   lambda: x_cm[..., _strided(r0, r1, sh, a - top), _strided(q0, q1, sw, b - left)],
                   border and not kept)
    phase_of = {(a, b): planes[ia, ib].reshape(parts * c, -1) for ia, a in enumerate(row_phases)
                for ib, b in enumerate(col_phases)}
    return phase_of, rows, cols


def plane_span(images: int, rows: int, cols: int, geometry: Geometry) -> int:
    """L' = (M − 1)·R·Q + (H_out − 1)·Q + W_out: how many columns of a block of M images' phase planes
    (R × Q each, :func:`_phase_planes`) a shifted product computes -- from the first output to the last,
    the ones that wrap a row end or an image's bottom included (they are computed and dropped)."""
    rows_out, cols_out = geometry.output_size
    return (images - 1) * rows * cols + (rows_out - 1) * cols + cols_out


def _shifted_sources(planes: dict, geometry: Geometry, cols: int, groups: int, span: int) -> list:
    """[(u, v, S)] for every tap, ``S[γ, c, t] = P_(du mod s_h, dv mod s_w)[γ·C_g + c, off(u,v) + t]``
    with ``off = ⌊d·u/s_h⌋·Q + ⌊d·v/s_w⌋`` and t < L' = ``span``: each tap's shifted columns of the
    phase planes of :func:`_phase_planes` as one (g, C_g, L') view (a single ``as_strided``)."""
    (kh, kw), (sh, sw), (dh, dw) = geometry.kernel_size, geometry.stride, geometry.dilation
    sources = []
    for u in range(kh):
        for v in range(kw):
            plane = planes[dh * u % sh, dw * v % sw]
            per_group, row = plane.shape[0] // groups, plane.stride(0)
            offset = plane.storage_offset() + (dh * u // sh) * cols + dw * v // sw
            sources.append((u, v, plane.as_strided((groups, per_group, span), (per_group * row, row, 1), offset)))
    return sources


def taps_by_phase(taps: int, step: int, dilation: int) -> dict[int, list[int]]:
    """{phase a: the taps u with d·u ≡ a (mod s)}; within a phase, consecutive taps are equally spaced
    and so are their offsets ⌊d·u/s⌋."""
    phases = {}
    for u in range(taps):
        phases.setdefault(dilation * u % step, []).append(u)
    return phases


def _row_phases(geometry: Geometry) -> dict[int, list[int]]:
    """:func:`taps_by_phase` of the kernel's rows."""
    return taps_by_phase(geometry.kernel_size[0], geometry.stride[0], geometry.dilation[0])


def _row_planes(x: torch.Tensor, geometry: Geometry, name: str):
    """The input's column windows copied (im2col along the rows only), row phases kept apart:

        rows[a][(c, v), n·R·W_out + r·W_out + j] = x_pad[n, c, s_h·r + a, s_w·j + d_w·v]

    for the row phases a = d_h·u mod s_h that some tap reads, R = H_out + max ⌊d_h·u/s_h⌋. Row tap u
    of output (n, i, j) is then column ``n·R·W_out + i·W_out + j + ⌊d_h·u/s_h⌋·W_out`` of its phase:
    a constant offset per row tap. Returns ({phase: (C·k_w, N·R·W_out) matrix}, R). One padded
    copy of x (reading R rows per phase), then one strided copy per phase.
    """
    n, c = x.shape[:2]
    (kh, kw), (sh, sw), dw = geometry.kernel_size, geometry.stride, geometry.dilation[1]
    (rows_out, cols_out), phases = geometry.output_size, _row_phases(geometry)
    rows = rows_out + geometry.dilation[0] * (kh - 1) // sh
    padded = _padded(x, geometry, "padded", (max(geometry.extent()[0], sh * (rows - 1) + max(phases) + 1),
                                              geometry.extent()[1]))
    sn, sc, srow, scol = padded.stride()
    planes = workspace.buffer(name, (len(phases), c, kw, n, rows, cols_out), x.dtype, x.device)
    for index, a in enumerate(phases):
        planes[index].copy_(padded.as_strided((c, kw, n, rows, cols_out), (sc, dw * scol, sn, sh * srow, sw * scol),
                                              padded.storage_offset() + a * srow))
    return {a: planes[index].view(c * kw, -1) for index, a in enumerate(phases)}, rows


FRAME_ZERO_LIMIT = 1 << 22
"""A frame of at most this many elements is zeroed whole before its window is copied in: one
contiguous pass beats the strided fills of its border strips, which touch one short run per image
row (measured: the frame 2-3× faster on 7×7 to 28×28 maps, a little on 56×56; slower from about
2²² elements)."""


def _frame(target: torch.Tensor, window: tuple[int, int, int, int], source: Callable[[], torch.Tensor],
           border: bool = True) -> None:
    """``target[..., r0:r1, q0:q1] = source()`` and zeros around it: the whole target zeroed first
    when it is small (:data:`FRAME_ZERO_LIMIT`), otherwise only the border strips. With
    ``border=False`` only the window is written: the zeros are already there (a buffer reused block
    by block, whose first block was framed with ``border=True``)."""
    r0, r1, q0, q1 = window
    empty = r1 == r0 or q1 == q0
    if not border:
        if not empty:
            target[..., r0:r1, q0:q1].copy_(source())
        return
    if empty or target.numel() <= FRAME_ZERO_LIMIT:
        target.zero_()
    else:
        target[..., :r0, :].zero_()
        target[..., r1:, :].zero_()
        target[..., r0:r1, :q0].zero_()
        target[..., r0:r1, q1:].zero_()
    if not empty:
        target[..., r0:r1, q0:q1].copy_(source())


def _padded(x: torch.Tensor, geometry: Geometry, name: str, extent: tuple[int, int] | None = None) -> torch.Tensor:
    """x padded to the extent its windows read (or ``extent`` rows and columns), in a reused buffer
    (NCHW) -- or x itself when no zero is needed: the windows are strided views that never read
    past their extent, so rows and columns they do not reach need no cropping copy."""
    (top, left), (rows, cols) = geometry.padding, extent or geometry.extent()
    n, c, height, width = x.shape
    if (top, left) == (0, 0) and rows <= height and cols <= width:
        return x
    r0, r1 = _inside(height, rows, 1, -top)
    q0, q1 = _inside(width, cols, 1, -left)
    padded, kept = workspace.framed_buffer(name, (n, c, rows, cols), (r0, r1, q0, q1), x.dtype, x.device)
    _frame(padded, (r0, r1, q0, q1), lambda: x[:, :, r0 - top: r1 - top, q0 - left: q1 - left], border=not kept)
    return padded


COLUMN_BUDGET = 4
"""A column buffer holds at most this many times the largest operand (elements): a bound on the
extra memory that still leaves few, large products (each product is a parallel region; fewer
regions matter on a busy machine)."""

COLUMN_LIMIT = 1 << 22
"""...and at most this many elements (16 MiB of float32), whatever the operands: on the large layers
of the benchmark this lowers the peak memory of a training step (56×56 ResNet layers: from about 2.1
to 1.9 times PyTorch's) with no measurable change in time."""


TILING_COLUMNS = 1 << 21
"""Where the taps tile the image (:func:`taps_tile_the_image`), a block's column matrix holds at most this many
elements (8 MiB of float32, a quarter of the benchmark machine's L3 cache) instead of :data:`COLUMN_LIMIT`. Its
columns are then the image itself rearranged -- space to depth, no entry copied twice -- and its products
are shallow (K = C_g·s_h·s_w), so the step is a chain of passes over memory: the copy into the columns and
the two products of the backward pair, the product, bias and interleaving copy of col2im. In blocks of
this size each pass finds the block in the cache. Measured (T_64_32_k2s2's training step, six paired runs
against one block of all 8 images with the bias added apart): in two blocks of 4 images, with the bias folded
into col2im's product (:func:`correlate_transpose_col2im`) and summed by the backward pair
(:func:`backward_pair`), 0.90-0.93 of the time; with the bias changes alone, 0.94-0.99."""


def taps_tile_the_image(geometry: Geometry) -> bool:
    """Whether the taps tile the image: k = s, d = 1, p = 0 and H = s·H_out (likewise along the columns), so
    each input position lies in exactly one window (``x[s·i + u, s·j + v]`` is tap (u, v) of window (i, j))."""
    return (geometry.kernel_size == geometry.stride and geometry.dilation == (1, 1) and geometry.padding == (0, 0)
            and geometry.input_size == tuple(s * m for s, m in zip(geometry.stride, geometry.output_size)))


def _column_limit(geometry: Geometry) -> int:
    return TILING_COLUMNS if taps_tile_the_image(geometry) else COLUMN_LIMIT


def _blocks(batch: int, rows: int, per_image: int, *sizes: int, limit: int = COLUMN_LIMIT):
    """(n0, n1, r0, r1): images n0:n1 and output rows r0:r1 of each block of an im2col loop.

    A block's column matrix holds at most ``min(COLUMN_BUDGET × max(sizes), limit)`` elements (``limit``:
    :data:`COLUMN_LIMIT`, or :data:`TILING_COLUMNS` by :func:`_column_limit`):
    as many whole images as fit, spread evenly -- or, when one image does not fit (large kernels,
    large images), one image at a time in bands of output rows. A chunk of several images holds a multiple
    of the thread count where it can (``workspace.image_chunks``).
    """
    budget = min(COLUMN_BUDGET * max(sizes), limit)
    if per_image <= budget:
        for n0, n1 in workspace.image_chunks(batch, budget // max(1, per_image)):
            yield n0, n1, 0, rows
        return
    bands = -(-rows // max(1, budget // max(1, per_image // rows)))
    band = -(-rows // bands)
    for n0 in range(batch):
        for r0 in range(0, rows, band):
            yield n0, n0 + 1, r0, min(rows, r0 + band)


def _multiply(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, accumulate: bool) -> None:
    """out (=|+=) a @ b for (g, m, k) @ (g, k, n) in place; ``addmm_`` when g = 1."""
    beta = 1 if accumulate else 0
    if out.shape[0] == 1:
        out[0].addmm_(a[0], b[0], beta=beta)
    else:
        out.baddbmm_(a, b, beta=beta)


# --------------------------------------------------------------------------------------------
# correlate: Conv2d forward (eq. 2.1)
# --------------------------------------------------------------------------------------------

def correlate_im2col(x: torch.Tensor, weight: torch.Tensor, geometry: Geometry, fold_batch: bool,
                     partner: torch.Tensor | None = None, channel_sums: torch.Tensor | None = None):
    """im2col: ``Y[n,g] = W[g] · X_col[n,g]`` with ``X_col[(c,u,v),(i,j)] = x_pad[c, s·i + d·u, s·j + d·v]``.

    The windows are strided views (:func:`_windows`); copying them into a reused buffer
    makes them one dense (K × L) matrix, and the product runs at matrix-multiply speed. The
    work is done in blocks of images, or of output rows for large kernels (:func:`_blocks`), so
    the buffer stays within a few times the operands' size. With
    ``fold_batch`` the columns of a chunk are (n, i, j) and one product serves all its images.

    With a ``partner`` b (N, O, H_out, W_out) the same columns also give the weight gradient
    ``G[g] = Σ_n B[n,g] · X_col[n,g]ᵀ = correlate_weight(x, b)`` (eq. 3.3), and the result is the
    pair (y, G): the column matrix, the expensive copy, is built once for both products. Inside
    :func:`keeping_columns`, a forward whose weight gradient will contract these same columns keeps them
    for it instead (:func:`kept_columns`).

    ``channel_sums`` (C,), when given, receives ``Σ_{n,h,w} x[n,c,h,w]``, each image summed at its first
    block, while that block of x is in the cache: for the backward pair, where x is grad_output, the bias
    gradient (eq. 3.2, :func:`backward_pair`).
    """
    g, og, cg = _split(geometry, weight)
    n, (kh, kw), (rows_out, cols_out) = x.shape[0], geometry.kernel_size, geometry.output_size
    k, positions = cg * kh * kw, rows_out * cols_out
    windows = _windows(x, geometry)
    w = weight.reshape(g, og, k)
    y = x.new_empty(n, g * og, rows_out, cols_out)
    grad = None if partner is None else x.new_empty(g, og, k)
    blocks = list(_blocks(n, rows_out, g * k * positions, x.numel(), y.numel(), weight.numel(),
                          limit=_column_limit(geometry)))
    keep = partner is None and _keeps(blocks, x, weight, geometry, fold_batch)
    for index, (n0, n1, r0, r1) in enumerate(blocks):
        cols, nb, band = _columns(windows, (n0, n1, r0, r1), geometry, fold_batch, keep), n1 - n0, (r1 - r0) * cols_out
        if channel_sums is not None and r0 == 0:
            channel_sums.add_(x[n0:n1].sum((0, 2, 3)))
        if keep:
            _local.kept = (cols, _source(x, geometry, fold_batch))
        if fold_batch:
            parts, m = cols.shape[0], nb // cols.shape[0]
            target = y[n0:n1, :, r0:r1].unflatten(0, (parts, m)).unflatten(2, (g, og)).flatten(-2)
            target.copy_(_product(w, cols).unflatten(-1, (m, band)).permute(0, 3, 1, 2, 4))
        elif band == positions:
            _product_into(y[n0:n1].view(nb, g, og, positions), w, cols)
        else:
            _product_into(y[n0].view(g, og, positions)[:, :, r0 * cols_out: r1 * cols_out], w, cols[0])
        if grad is not None:
            _weight_product(grad, cols, partner, (n0, n1, r0, r1), fold_batch, accumulate=index > 0)
    return y if grad is None else (y, grad.view(g * og, cg, kh, kw))


@contextmanager
def keeping_columns():
    """Inside the block, a forward on this thread whose weight gradient will contract the very same column
    matrix -- ``Y[n,g] = W[g] · X_col[n,g]`` forward, ``G[g] = Σ_n Y'[n,g] · X_col[n,g]ᵀ`` backward (eqs. 2.1,
    3.3), both by im2col (or both by im2col_folded), the matrix built whole (one block of ``_blocks``), and no
    backward pair (:func:`choose_pair`) -- builds it in a fresh tensor rather than the scratch buffer and leaves it
    to :func:`kept_columns`. The backward then passes it back (:func:`reusing_columns`) and skips the copy. Used
    by Conv2d's autograd Function when the weight needs a gradient (:mod:`convbook.autograd`). Measured (training
    step, paired, new/old): r18_64_128s2 0.90-0.95, r18_stem 0.91-1.01; the matrix lives until the backward, so
    the peak extra memory of the stem's step went from 1.14 to 1.84 times native's, r18_64_128s2's from 1.50
    to 2.14."""
    previous = getattr(_local, "keep", False), getattr(_local, "kept", None)
    _local.keep, _local.kept = True, None
    try:
        yield
    finally:
        _local.keep, _local.kept = previous


def kept_columns() -> tuple[torch.Tensor, tuple] | None:
    """(column matrix, what it was built from) that a forward inside :func:`keeping_columns` kept, or None;
    handed out once."""
    kept, _local.kept = getattr(_local, "kept", None), None
    return kept


@contextmanager
def reusing_columns(columns: torch.Tensor | None, source: tuple | None):
    """Inside the block, a weight gradient by im2col on this thread whose input and geometry are the
    ``source`` of :func:`kept_columns` uses ``columns`` instead of copying them again (nothing when None)."""
    previous = getattr(_local, "reuse", None)
    _local.reuse = None if columns is None else (columns, source)
    try:
        yield
    finally:
        _local.reuse = previous


def _source(x: torch.Tensor, geometry: Geometry, fold_batch: bool) -> tuple:
    """What a column matrix was built from: x's memory, layout and version, the geometry and the layout of
    the columns."""
    return (x.data_ptr(), x.shape, x.stride(), x.dtype, x.device, x._version, geometry, fold_batch)


def _keeps(blocks: list, x: torch.Tensor, weight: torch.Tensor, geometry: Geometry, fold_batch: bool) -> bool:
    """Whether this im2col forward keeps its columns (:func:`keeping_columns`)."""
    if not getattr(_local, "keep", False) or len(blocks) != 1:
        return False
    n, c, o = x.shape[0], x.shape[1], weight.shape[0]
    name = "im2col_folded" if fold_batch else "im2col"
    return choose("correlate_weight", n, c, o, geometry)[0] == name and choose_pair("conv2d", n, c, o, geometry)[0] is None


def _reused(x: torch.Tensor, geometry: Geometry, fold_batch: bool) -> torch.Tensor | None:
    """The columns :func:`reusing_columns` passes for this weight gradient, or None."""
    reuse = getattr(_local, "reuse", None)
    return reuse[0] if reuse is not None and reuse[1] == _source(x, geometry, fold_batch) else None


POSITIONS_MAJOR_DEPTH = 8
"""A product ``W · X_col`` that contracts at least this many times as many entries (K = C_g·k_h·k_w) as it
has rows (O_g) is written positions-major (:func:`_product_into`). Re-measured on the layers that reach it
now, the rule switched in alternate rounds of one process (training step, with against without): dil2_64_56
0.94-0.96 of the time, r18_512_7 0.98-0.99 (two runs each), T_128_64_k4s2 0.99-1.04 (six)."""


def _batched(w: torch.Tensor, cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``w`` (…, O_g, K) repeated over the leading dimensions of ``cols`` (…, K, L) -- a stride-0 view, no copy
    when there is one group -- and both as stacks of matrices for one ``torch.bmm``: (B, O_g, K), (B, K, L).

    One ``torch.bmm`` rather than ``torch.matmul(w, cols, out=...)``: matmul broadcasts by expanding ``w``,
    multiplies into a temporary and copies that into ``out`` -- into a transposed ``out`` (positions-major) a
    copy whose inner loop reads the temporary one channel row (12.5 KB) apart, a new page for every number.
    That copy is what slowed in chapter 7's "slow phase" of the machine. Measured, the forward of r18_64_56
    over a minute of paired rounds: 1.67 times native's time where the matmul version took 2.56 (its slow
    rounds), and the same (1.55-1.6) where it was fast.
    """
    count = math.prod(cols.shape[:-2])
    rows, depth = w.shape[-2:]
    return (w.expand(*cols.shape[:-2], rows, depth).reshape(count, rows, depth),
            cols.reshape(count, depth, cols.shape[-1]))


def _product_into(target: torch.Tensor, w: torch.Tensor, cols: torch.Tensor) -> None:
    """``target = w @ cols`` for (…, O_g, K) @ (…, K, L) into ``target`` (…, O_g, L), one batched product
    (:func:`_batched`).

    The matrix library here (MKL on the benchmark's AMD EPYC) multiplies a few output channels by
    many positions about 1.3-1.5 times as fast when the result is laid out positions-major -- (L, O_g),
    the channels of one position side by side -- as when it is channel-major like y. Where the
    product is deep enough (:data:`POSITIONS_MAJOR_DEPTH`) that this gain outweighs one transposing
    copy of the result (≈1 ns per entry), it is written so into a scratch buffer and copied into
    ``target``; otherwise straight into ``target``. (Measured: the forward of r18_64_56 (K = 9·O_g) and
    r18_128_28 (K = 9·O_g) 5-13% faster, r18_64_128s2's (K = 4.5·O_g) 5-10% slower.)"""
    rows, depth = w.shape[-2:]
    if depth < POSITIONS_MAJOR_DEPTH * rows and target.is_contiguous():
        w_all, cols_all = _batched(w, cols)
        products.bmm(w_all, cols_all, out=target.view(w_all.shape[0], rows, -1))
        return
    target.copy_(_product(w, cols))


def _product(w: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``w @ cols`` for (…, O_g, K) @ (…, K, L) by one batched product (:func:`_batched`) into the reused
    "product" buffer, returned as a (…, O_g, L) view: channel-major, or -- where the product is deep enough
    (:data:`POSITIONS_MAJOR_DEPTH`, see :func:`_product_into`) -- a transposed view of a positions-major
    (…, L, O_g) product. The caller copies it into place (a band of rows, or folded images)."""
    w_all, cols_all = _batched(w, cols)
    (rows, depth), lead, length = w.shape[-2:], cols.shape[:-2], cols.shape[-1]
    if depth < POSITIONS_MAJOR_DEPTH * rows:
        scratch = workspace.buffer("product", (w_all.shape[0], rows, length), cols.dtype, cols.device)
        products.bmm(w_all, cols_all, out=scratch)
        return scratch.view(*lead, rows, length)
    scratch = workspace.buffer("product", (w_all.shape[0], length, rows), cols.dtype, cols.device)
    torch.bmm(cols_all.transpose(1, 2), w_all.transpose(1, 2), out=scratch)
    return scratch.view(*lead, length, rows).transpose(-1, -2)


PHASE_WINDOWS = 4
"""A strided im2col copies its windows from the input's phase planes (:func:`_windows`), and col2im sums
each phase grid in a contiguous buffer (:func:`_add_taps`), when the kernel has at least this many taps
per phase on average, ``k_h·k_w ≥ 4·s_h·s_w`` -- the column matrix is then
at least 4 times the input, so the extra pass that splits the input costs little. Measured (the column
copies alone): the stem's 7 × 7 stride 2 0.8 ms instead of 2.0, 64 channels 7 × 7 stride 2 at 56 × 56
4.1 instead of 7.5, 5 × 5 stride 2 0.9 instead of 1.1; 3 × 3 stride 2 (2.25 taps per phase) mixed,
up to 1.5 times slower. Paired against the old code: the stem's forward 0.87, input gradient (col2im's
buffered grids) 0.94, weight gradient 0.86, training step 0.89 of the time."""


def _many_taps_per_phase(geometry: Geometry) -> bool:
    """Stride > 1 and ``k_h·k_w ≥ PHASE_WINDOWS·s_h·s_w``: work on whole phases (:func:`_windows`, :func:`_add_taps`)."""
    (kh, kw), (sh, sw) = geometry.kernel_size, geometry.stride
    return (sh, sw) != (1, 1) and kh * kw >= PHASE_WINDOWS * sh * sw


def _windows(x: torch.Tensor, geometry: Geometry) -> list[tuple[slice, slice, torch.Tensor]]:
    """The windows of x as views ``[(U, V, view)]``, ``view[n, c, u', v', i, j] = x_pad[n, c, s·i + d·u, s·j + d·v]``
    for the taps u = U[u'], v = V[v'] (slices of the kernel): what :func:`_columns` copies.

    One view of the padded input covers every tap (:func:`kernels.windows`). At stride s > 1 it steps s
    entries along each row, and copying it reads every s-th entry; where the taps are many per phase
    (:data:`PHASE_WINDOWS`) the input is split into its phase planes first (:func:`_phase_planes`, one
    strided pass over x), and each pair of phases (a, b) gives one view of its taps ``d·u ≡ a, d·v ≡ b
    (mod s)`` whose rows are contiguous runs of a plane, so the column matrix is copied from whole rows.
    """
    (kh, kw), (sh, sw), (dh, dw) = geometry.kernel_size, geometry.stride, geometry.dilation
    if not _many_taps_per_phase(geometry):
        view = kernels.windows(_padded(x, geometry, "padded"), geometry).permute(0, 1, 4, 5, 2, 3)
        return [(slice(None), slice(None), view)]
    n, c = x.shape[:2]
    rows_out, cols_out = geometry.output_size
    planes, rows, cols = _phase_planes(x, geometry, "planes")
    views = []
    for a, us in taps_by_phase(kh, sh, dh).items():
        for b, vs in taps_by_phase(kw, sw, dw).items():
            plane = planes[a, b]                                          # (C, N·R·Q)
            du, dv = (us[1] - us[0] if len(us) > 1 else 1), (vs[1] - vs[0] if len(vs) > 1 else 1)
            view = plane.as_strided((n, c, len(us), len(vs), rows_out, cols_out),
                                    (rows * cols, plane.stride(0), dh * du // sh * cols, dw * dv // sw, cols, 1),
                                    plane.storage_offset() + dh * us[0] // sh * cols + dw * vs[0] // sw)
            views.append((slice(us[0], us[-1] + 1, du), slice(vs[0], vs[-1] + 1, dv), view))
    return views


def _columns(windows: list, block: tuple[int, int, int, int], geometry: Geometry, fold_batch: bool,
             fresh: bool = False) -> torch.Tensor:
    """One block's column matrix (:func:`_blocks`), ``X_col[(c,u,v), ·] = x_pad[c, s·i + d·u, s·j + d·v]``
    copied from the window views of :func:`_windows` into the reused buffer (a ``fresh`` tensor, to be kept:
    :func:`keeping_columns`): (parts, g, K, m·band) with columns (n, i, j) when ``fold_batch`` (the block's
    images in :func:`_parts` parts of m), else (nb, g, K, band)."""
    n0, n1, r0, r1 = block
    (kh, kw), groups, cols_out = geometry.kernel_size, geometry.groups, geometry.output_size[1]
    nb, c, rows, first = n1 - n0, windows[0][2].shape[1], r1 - r0, windows[0][2]
    cg, parts = c // groups, _parts(nb) if fold_batch else nb
    m = nb // parts
    allocate = (lambda _, shape, dtype, device: torch.empty(shape, dtype=dtype, device=device)) if fresh else workspace.buffer
    if fold_batch:
        cols = allocate("columns", (parts, groups, cg, kh, kw, m, rows, cols_out), first.dtype, first.device)
        target = cols.view(parts, c, kh, kw, m, rows, cols_out).permute(0, 4, 1, 2, 3, 5, 6)
    else:
        cols = allocate("columns", (nb, groups, cg, kh, kw, rows, cols_out), first.dtype, first.device)
        target = cols.view(nb, 1, c, kh, kw, rows, cols_out)
    for us, vs, view in windows:
        source = view[n0:n1, :, :, :, r0:r1].unflatten(0, (parts, m))
        if _pairs(source):
            _deinterleave(target[:, :, :, us, vs], source)
        else:
            target[:, :, :, us, vs].copy_(source)
    return cols.view(parts, groups, cg * kh * kw, m * rows * cols_out)


def _pairs(source: torch.Tensor) -> bool:
    """Whether the window view ``source`` (…, k_h, k_w, H_out, W_out) reads each image row as pairs: k_w = 2 taps
    side by side (stride 1) that the next column steps over (stride 2) -- the taps tile the rows in pairs, as
    at k = s = 2 -- in float32 on a little-endian machine, laid out so that each pair is one 64-bit integer
    (``Tensor.view(torch.int64)``: every other stride and the offset even)."""
    others = source.stride()[:-3] + source.stride()[-2:]
    return (source.dtype == torch.float32 and sys.byteorder == "little" and source.shape[-3] == 2
            and source.stride(-3) == 1 and source.stride(-1) == 2 and source.storage_offset() % 2 == 0
            and all(s % 2 == 0 for s in others))


def _deinterleave(target: torch.Tensor, source: torch.Tensor) -> None:
    """``target[..., v, i, j] = source[..., v, i, j]`` for v = 0, 1 where the pairs (v = 0, v = 1) lie side by
    side in memory (:func:`_pairs`): the inverse of :func:`_interleave`. A copy of the v = 0 entries reads every
    other number, one at a time. Read as 64-bit integers the row is one pair per step, and a narrowing copy
    into 32-bit integers keeps each pair's low half -- on a little-endian machine the v = 0 entry, bit for bit
    -- in a loop that runs along j. The v = 1 entries are then copied as they are (T_64_32_k2s2's columns of
    grad_output: about 0.7 of the time of the strided copy alone; its training step 0.97-1.00 of the time, the
    two copies switched in alternate rounds of one process, six runs -- a few percent at most)."""
    pairs = source.movedim(-3, -1).view(torch.int64).squeeze(-1)
    target.select(-3, 0).view(torch.int32).copy_(pairs)
    target.select(-3, 1).copy_(source.select(-3, 1))


def _parts(images: int) -> int:
    """Into how many parts a chunk of ``images`` is split when its columns are folded (n, i, j): one per
    thread where they divide evenly, else 1. Each part is one product of a batched ``torch.bmm``, which
    the matrix library gives to one thread, and every copy into or out of the folded buffers is one
    operation over all parts, laid out part by part, which PyTorch splits between its threads in the same
    way -- so a thread reads back only what it wrote. Reading what the *other* core wrote was what slowed
    in chapter 7's slow phase: a copy of 8 MB that reads the other core's half took 1.08 ms instead of
    0.29 while a copy of its own half stayed at 0.27 (the machine section)."""
    return workspace.thread_parts(images)


WEIGHT_ROWS_LONGER = True
"""Compute the weight gradient's per-image products as ``X_col · Yᵀ`` -- K rows of result, in a scratch
buffer added transposed into the gradient -- wherever K = C_g·k_h·k_w exceeds O_g, rather than as
``Y · X_colᵀ`` with O_g rows. Both contract the same positions; MKL on the benchmark's AMD EPYC runs
the long-rows orientation faster. Measured (training step, paired, new/old): r18_64_56 0.96,
r18_128_28 0.92, dil2_64_56 0.89, r18_stem 0.94, T_128_64_k4s2 0.90, T_64_32_k2s2 0.93 -- against a second copy
of the package in the process, a method since found biased by up to 10% (chapter 7, *The machine*). Switched in
alternate rounds of one process instead, on the layers that reach it now (two runs each): r18_stem 0.94-0.95,
T_128_64_k4s2 0.98-1.02, T_64_32_k2s2 0.98-1.00, r18_64_128s2 1.00."""


def _weight_product(grad: torch.Tensor, cols: torch.Tensor, y: torch.Tensor, block: tuple[int, int, int, int],
                    fold_batch: bool, accumulate: bool) -> None:
    """``grad[g] (+)= Y[g] · X_col[g]ᵀ`` for one block of :func:`_columns`: y's block copied channel-major
    to match folded columns, or against per-image columns one batched product over the block's images (no
    copy of y) whose per-image results are then summed -- where K > O_g as ``(X_col[g] · Y[g]ᵀ)ᵀ``
    (:data:`WEIGHT_ROWS_LONGER`). One product per image split across the threads (``addmm_``) measured as
    fast on a quiet machine but slowed with the rest in the slow phase: r18_64_56's step 1.63-1.70 times
    native's in those rounds, 1.42 with the batched product."""
    n0, n1, r0, r1 = block
    groups, cols_out = grad.shape[0], y.shape[3]
    if fold_batch:
        # the "product" slot is free here: correlate_im2col has copied its product into the result
        parts = cols.shape[0]
        y_cm = workspace.buffer("product", (parts, y.shape[1], (n1 - n0) // parts, r1 - r0, cols_out), y.dtype, y.device)
        y_cm.copy_(y[n0:n1, :, r0:r1].unflatten(0, (parts, -1)).transpose(1, 2))
        if parts == 1:
            _multiply(grad, y_cm.view(groups, grad.shape[1], -1), cols[0].transpose(1, 2), accumulate)
            return
        partial = workspace.buffer("weight_rows", (parts, *grad.shape), grad.dtype, grad.device)
        torch.bmm(y_cm.view(parts * groups, grad.shape[1], -1), cols.flatten(0, 1).transpose(1, 2),
                  out=partial.view(parts * groups, *grad.shape[1:]))
        grad.add_(partial.sum(0)) if accumulate else torch.sum(partial, 0, out=grad)
        return
    og, depth = grad.shape[1:]
    nb, band = n1 - n0, (r1 - r0) * cols_out
    rows = y[n0:n1].reshape(nb * groups, og, -1)[:, :, r0 * cols_out: r1 * cols_out]
    cols = cols.reshape(nb * groups, depth, band)
    if WEIGHT_ROWS_LONGER and depth > og:
        partial = workspace.buffer("weight_rows", (nb, groups, depth, og), grad.dtype, grad.device)
        products.bmm(cols, rows.transpose(1, 2), out=partial.view(nb * groups, depth, og))
        total = (partial[0] if nb == 1 else partial.sum(0)).transpose(1, 2)
    else:
        partial = workspace.buffer("weight_rows", (nb, groups, og, depth), grad.dtype, grad.device)
        products.bmm(rows, cols.transpose(1, 2), out=partial.view(nb * groups, og, depth))
        total = partial[0] if nb == 1 else partial.sum(0)
    grad.add_(total) if accumulate else grad.copy_(total)


# --------------------------------------------------------------------------------------------
# channels_last: the windows copied position by position, one inner product
# --------------------------------------------------------------------------------------------

CHANNELS_LAST_ROWS = 384
"""A block of :func:`correlate_channels_last` holds enough whole images for at least this many rows
(positions) in its product: on 7 × 7 maps (49 positions an image) a product of one or two images is too
short to run at speed (measured, r18_512_7's forward: 1.28 times native's time in blocks of 2 images,
1.20 of 4, 1.16 of 8)."""

CHANNELS_LAST_COLUMNS = 1 << 21
"""...and otherwise as many images as fit in this many column entries (8 MiB of float32) -- at least one per
thread; where those are more, one band of their output rows at a time. Columns that stay in the cache
between the copy and the product pay: r18_64_56's forward (7.2 MB of columns an image) took 1.35 times
native's time one image at a time, 1.52 two at a time and 1.6 all eight; its training step, two images a
block, 1.09-1.11 times as long as one image a block (in a run where that ran well), 1.03-1.07 in bands of 2²¹."""


def _padded_channels_last(x: torch.Tensor, geometry: Geometry, name: str) -> torch.Tensor:
    """x padded to the extent its windows read, laid out channels-last in a reused buffer: (N, rows, cols, C),
    ``x_pad[n, r, q, c] = x[n, c, r − p_h, q − p_w]`` (zero outside x)."""
    (top, left), (rows, cols) = geometry.padding, geometry.extent()
    n, c, height, width = x.shape
    r0, r1 = _inside(height, rows, 1, -top)
    q0, q1 = _inside(width, cols, 1, -left)
    padded, kept = workspace.framed_buffer(name, (n, rows, cols, c), (r0, r1, q0, q1), x.dtype, x.device)
    _frame(padded.permute(0, 3, 1, 2), (r0, r1, q0, q1), lambda: x[:, :, r0 - top: r1 - top, q0 - left: q1 - left],
           border=not kept)
    return padded


def _channels_last_blocks(x: torch.Tensor, geometry: Geometry):
    """(n0, n1, r0, r1, X_rows) for each block of images n0:n1 and output rows r0:r1 (:data:`CHANNELS_LAST_ROWS`,
    :data:`CHANNELS_LAST_COLUMNS`): the block's windows copied into the reused "columns" buffer as one row per
    position and group, ``X_rows[g][(n,i,j), (u,v,c)] = x_pad[n, s·i + d·u, s·j + d·v, g·C_g + c]``
    (:func:`_padded_channels_last`; the windows a view by :func:`kernels.windows`), X_rows (g, rows, K).

    A block holds a multiple of the thread count of images where the batch allows (in bands of output rows when
    they are many), and its images are padded with the block: the padding copy, the column copy and the copy
    into y each split at image boundaries, so a thread copies the images it padded -- the rule of the machine
    section (the product's rows oneDNN splits its own way). With one image per block and the whole batch padded
    at once, r18_64_56's and dil2_64_56's training steps measured about 1.4 times native's in some benchmark
    runs and 2.0-2.3 in others, where the column copy took four times as long."""
    n, c, groups = x.shape[0], x.shape[1], geometry.groups
    (kh, kw), (rows_out, cols_out) = geometry.kernel_size, geometry.output_size
    cg, positions = c // groups, rows_out * cols_out
    depth = cg * kh * kw
    per_row, threads = cols_out * depth * groups, torch.get_num_threads()
    images = threads if n >= threads > 1 else 1
    if images * positions * depth * groups <= CHANNELS_LAST_COLUMNS:
        images = max(images, -(-CHANNELS_LAST_ROWS // positions), CHANNELS_LAST_COLUMNS // (positions * depth * groups))
        images -= images % threads if images >= threads > 1 else 0
        chunks = -(-n // images)
        images = -(-n // chunks)
        if n >= threads > 1:
            images = -(-images // threads) * threads
        band = rows_out
    else:
        band = max(1, CHANNELS_LAST_COLUMNS // (images * per_row))
    blocks = [(n0, min(n, n0 + images), r0, min(rows_out, r0 + band))
              for n0 in range(0, n, images) for r0 in range(0, rows_out, band)]
    padded_images = None
    for n0, n1, r0, r1 in blocks:
        if padded_images != (n0, n1):
            padded = _padded_channels_last(x[n0:n1], geometry, "padded")
            windows = kernels.by_group(kernels.windows(padded.permute(0, 3, 1, 2), geometry), 1, groups)
            windows, padded_images = windows.permute(1, 0, 3, 4, 5, 6, 2), (n0, n1)   # (g, n, H_out, W_out, k_h, k_w, C_g)
        cols = workspace.buffer("columns", (groups, n1 - n0, r1 - r0, cols_out, kh, kw, cg), x.dtype, x.device)
        cols.copy_(windows[:, :, r0:r1])
        yield n0, n1, r0, r1, cols.view(groups, -1, depth)


def _rows_weight(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """w (O, C_g, k_h, k_w) as (g, O_g, k_h·k_w·C_g), the order of a row of :func:`_channels_last_blocks`."""
    return kernels.by_group(weight.permute(0, 2, 3, 1), 0, groups).flatten(2).contiguous()


def _add_weight_rows(grad: torch.Tensor, b: torch.Tensor, block: tuple, cols: torch.Tensor) -> None:
    """``grad[g] (O_g, k_h·k_w·C_g) += Σ_n B[n,g] · X_rows[g][n]`` over one block's images, B[n,g] the block's
    rows of b's group g (O_g, band) and X_rows[g][n] (band, k_h·k_w·C_g) its columns: one ``torch.bmm`` over the
    block's images (each thread multiplies the images whose columns it copied), summed after."""
    n0, n1, r0, r1 = block
    groups, og, depth = grad.shape
    rows = b[n0:n1].flatten(2)[:, :, r0 * b.shape[3]: r1 * b.shape[3]]
    per_image = cols.view(groups, n1 - n0, -1, depth)
    partial = workspace.buffer("weight_rows", (n1 - n0, og, depth), grad.dtype, grad.device)
    for g in range(groups):
        torch.bmm(rows[:, g * og:(g + 1) * og], per_image[g], out=partial)
        grad[g].add_(partial[0] if n1 - n0 == 1 else partial.sum(0))


def _from_weight_rows(grad: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """The weight gradient (O, C_g, k_h, k_w) from its rows (g, O_g, k_h·k_w·C_g) (:func:`_rows_weight`)."""
    groups, og, depth = grad.shape
    kh, kw = geometry.kernel_size
    return grad.view(groups * og, kh, kw, depth // (kh * kw)).permute(0, 3, 1, 2).contiguous()


def correlate_channels_last(x: torch.Tensor, weight: torch.Tensor, geometry: Geometry,
                            partner: torch.Tensor | None = None):
    """channels_last: ``Y_rows[g] = X_rows[g] · W_rows[g]ᵀ`` with one row per output position,
    ``X_rows[g][(n,i,j),(u,v,c)] = x_pad[n, s·i + d·u, s·j + d·v, g·C_g + c]`` and
    ``W_rows[g][o,(u,v,c)] = w[g·O_g + o, c, u, v]``; then ``y[n, g·O_g + o, i, j] = Y_rows[g][(n,i,j), o]``.

    im2col with the column matrix transposed: x is copied once into a channels-last padded buffer, so
    each row of X_rows is k_h·k_w runs of C_g contiguous channels; the product is oneDNN's inner product
    (:func:`products.linear`, the kernel of ``nn.Linear``) -- the positions as its batch, W_rows as its
    weight -- which multiplied these shapes faster than ``torch.bmm`` multiplies im2col's channel-major
    ones (64 × 576 by 576 × 3 136: 196 GFLOP/s against 132-141); its positions-major result costs one
    transposing copy into y. Done in blocks of images (:func:`_channels_last_blocks`). The dispatcher does not
    pick it: in full benchmark runs alternating with the im2col code it was no faster overall -- r18_64_56's
    training step 1.43-1.81 times native's against im2col's 1.42-1.50, the 7 × 7 and 14 × 14 layers 2-5%
    faster -- and its float32 sums are less accurate. In float32 the inner
    product sums each window's K products in one chain, where MKL and PyTorch's own convolution split the
    sum: the output is about 1.7-3.6 times as far from the exact answer, normwise, as PyTorch's (a 3 × 3 layer
    on 64 channels: 6.5e-7 to 1.1e-6 against 2.6e-7 to 4.0e-7) -- within the bound of a K-term sum in any
    order (``tests/test_products.py``).

    With a ``partner`` b (N, O_b, H_out, W_out) the same rows give the weight gradient
    ``G[g] = Σ_n B[n,g] · X_rows[g][n] = correlate_weight(x, b)`` (eq. 3.3), and the result is the pair (y, G).
    """
    n, groups = x.shape[0], geometry.groups
    (rows_out, cols_out), og = geometry.output_size, weight.shape[0] // groups
    w_rows = _rows_weight(weight, groups)
    y = x.new_empty(n, weight.shape[0], rows_out, cols_out)
    grad = None if partner is None else x.new_zeros(groups, partner.shape[1] // groups, w_rows.shape[2])
    for n0, n1, r0, r1, cols in _channels_last_blocks(x, geometry):
        for g in range(groups):
            product = products.linear(cols[g], w_rows[g])
            y[n0:n1, g * og:(g + 1) * og, r0:r1].copy_(product.view(n1 - n0, r1 - r0, cols_out, og).permute(0, 3, 1, 2))
        if grad is not None:
            _add_weight_rows(grad, partner, (n0, n1, r0, r1), cols)
    return y if grad is None else (y, _from_weight_rows(grad, geometry))


def correlate_weight_channels_last(x: torch.Tensor, y: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """channels_last weight gradient: ``G[g] = Σ_n Y[n,g] · X_rows[g][n]``, the rows of
    :func:`correlate_channels_last`, one ``torch.bmm`` per block and group (:func:`_add_weight_rows`);
    ``∂L/∂w[g·O_g + o, c, u, v] = G[g][o, (u,v,c)]``."""
    groups, (kh, kw) = geometry.groups, geometry.kernel_size
    grad = x.new_zeros(groups, y.shape[1] // groups, x.shape[1] // groups * kh * kw)
    y = y.contiguous()
    for n0, n1, r0, r1, cols in _channels_last_blocks(x, geometry):
        _add_weight_rows(grad, y, (n0, n1, r0, r1), cols)
    return _from_weight_rows(grad, geometry)


def correlate_shifted(x: torch.Tensor, weight: torch.Tensor, geometry: Geometry, partner: torch.Tensor | None = None,
                      into: torch.Tensor | None = None, bias: torch.Tensor | None = None):
    """Shifted matrix products: ``Y[g] = Σ_{u,v} W[g,:,:,u,v] · P_{(du mod s_h, dv mod s_w)}[g][:, off(u,v) : off(u,v) + L']``.

    Flattening the padded phase planes (:func:`_phase_planes`) turns every tap's window into a
    contiguous column range at a constant offset, so no column matrix is built: k_h·k_w products
    of (O_g × C_g) by (C_g × L') with L' ≈ N·R·Q, accumulated in place. Columns that wrap around
    a row end are computed and dropped (a few percent of the work). With a ``partner`` b the same
    planes also give ``correlate_weight(x, b)`` (:func:`_weight_taps`), and the result is the pair.

    The planes hold the images in one part per thread (:func:`_parts`), each tap's products of all parts
    and groups are one batched product, and the layout copy into y splits at the same part boundary: each
    thread reads back what it wrote. Measured (150 s of paired rounds): grp8_128_28's training step 0.87
    of the old time in the rounds of chapter 7's slow phase, the same in the fast ones. A ``bias`` is added in
    that copy (:data:`ADDS_BIAS`).
    """
    g, og, cg = _split(geometry, weight)
    n, (kh, kw) = x.shape[0], geometry.kernel_size
    rows_out, cols_out = geometry.output_size
    parts = _parts(n)
    m = n // parts
    planes, rows, cols = _phase_planes(x, geometry, "planes", parts=parts, shared=True)
    span = plane_span(m, rows, cols, geometry)
    taps = _taps_by_group(weight, g, transpose=False)
    if parts > 1:
        taps = taps.unsqueeze(2).expand(kh, kw, parts, g, og, cg).reshape(kh, kw, parts * g, og, cg)
    out = workspace.buffer("product", (parts * g, og, span), x.dtype, x.device)
    sources = _shifted_sources(planes, geometry, cols, parts * g, span)
    for u, v, source in sources:
        _multiply(out, taps[u, v], source, accumulate=(u, v) != (0, 0))
    y = out.as_strided((parts, m, g * og, rows_out, cols_out), (g * og * span, rows * cols, span, cols, 1))
    result = x.new_empty(n, g * og, rows_out, cols_out) if into is None else into  # never the buffer
    if bias is None:
        result.unflatten(0, (parts, m)).copy_(y)
    else:
        torch.add(y, bias.view(-1, 1, 1), out=result.unflatten(0, (parts, m)))
    if partner is None:
        return result
    return result, _weight_taps(sources, partner, geometry, rows, cols, span, blocked=False, parts=parts)


def correlate_row_shifted(x: torch.Tensor, weight: torch.Tensor, geometry: Geometry, partner: torch.Tensor | None = None):
    """Row-shifted products: ``Z[g,u] = W[g,:,:,u,:] · X_{du mod s_h}[g]`` for all row taps u of a phase
    in one product, then ``Y[g] = Σ_u Z[g,u][:, ⌊du/s_h⌋·W_out + ·]``, with the column-tap matrices
    ``X_a[(c,v), (n,r,j)] = x_pad[n, c, s_h·r + a, s_w·j + d_w·v]`` (:func:`_row_planes`).

    Halfway between im2col and shifted: only the k_w column taps are copied (a matrix k_w times
    the input, not k_h·k_w times), and each row tap is a constant column offset into it. The row
    taps are stacked into the rows of one (k_h·O_g × C_g·k_w) by (C_g·k_w × L') product, which
    reads the column matrix once, and the shifted partial results are added up through strided
    views that also drop the rows straddling two images (k_h additions: a reduction over the
    strided tap dimension runs slower). The product is written positions-major -- (L', k_h·O_g), as
    in :func:`_product_into` -- so the additions run over contiguous runs of O_g channels, and one
    transposing copy puts their sum into y (lk7_32_64 and lk11_32_64: forward and training step
    4-13% faster in paired runs). In chunks of images (:func:`_blocks`). With a ``partner`` b
    the same column-tap matrices also give ``correlate_weight(x, b)`` (:func:`_row_weight_products`),
    and the result is the pair.
    """
    g, og, cg = _split(geometry, weight)
    n, (kh, kw), sh, dh = x.shape[0], geometry.kernel_size, geometry.stride[0], geometry.dilation[0]
    (rows_out, cols_out), phases = geometry.output_size, _row_phases(geometry)
    rows = rows_out + dh * (kh - 1) // sh
    grouped = weight.reshape(g, og, cg, kh, kw)
    stacked = {a: grouped[:, :, :, taps].permute(0, 3, 1, 2, 4).reshape(g, len(taps) * og, cg * kw)
               for a, taps in phases.items()}
    y = x.new_empty(n, g * og, rows_out, cols_out)
    grads = None if partner is None else {a: x.new_empty(g, len(taps) * og, cg * kw) for a, taps in phases.items()}
    per_image = rows * cols_out * max(len(phases) * kw * x.shape[1], kh * g * og)
    for block, (n0, n1, _, _) in enumerate(_blocks(n, 1, per_image, x.numel(), y.numel(), weight.numel())):
        planes, _ = _row_planes(x[n0:n1], geometry, "planes")
        nb, width, target = n1 - n0, (n1 - n0) * rows * cols_out, y[n0:n1].view(n1 - n0, g, og, rows_out, cols_out)
        total = workspace.buffer("sum", (nb, g, rows_out, cols_out, og), x.dtype, x.device)     # positions-major y
        for index, (a, taps) in enumerate(phases.items()):
            first, step, count = dh * taps[0] // sh, (dh * (taps[1] - taps[0]) // sh if len(taps) > 1 else 0), len(taps)
            partials = workspace.buffer("product", (g, width, count, og), x.dtype, x.device)
            _multiply(partials.view(g, width, -1).transpose(1, 2), stacked[a], planes[a].view(g, cg * kw, width),
                      accumulate=False)
            # shifted[t, n, g, i, j, o] = partials[g, n·R·W + (i + first + t·step)·W + j, t, o]
            shifted = partials.as_strided(
                (count, nb, g, rows_out, cols_out, og),
                ((step * cols_out * count + 1) * og, rows * cols_out * count * og, width * count * og,
                 cols_out * count * og, count * og, 1),
                partials.storage_offset() + first * cols_out * count * og)
            for t in range(count):
                if index == 0 and t == 0:
                    total.copy_(shifted[0])
                else:
                    total += shifted[t]
        target.copy_(total.permute(0, 1, 4, 2, 3))
        if grads is not None:
            _row_weight_products(grads, planes, partner[n0:n1], geometry, accumulate=block > 0)
    return y if grads is None else (y, _row_weight_assembled(grads, geometry, g, og, cg))


DEPTHWISE_BLOCK = 1 << 18
"""Elements of phase plane per block of channels in :func:`correlate_depthwise` (1 MiB of float32):
a block's planes and partial sums stay in the cache through all k_h·k_w passes."""


def correlate_depthwise(x: torch.Tensor, weight: torch.Tensor, geometry: Geometry, partner: torch.Tensor | None = None):
    """Depthwise (one input and one output channel per group): k_h·k_w multiply-accumulates.
    Where the output grid is the input grid (stride 1, "same" padding) they run on the image itself
    (:func:`_depthwise_same_grid`); otherwise,
    ``y[c] = Σ_{u,v} w[c,0,u,v] · P_{(du mod s_h, dv mod s_w)}[c][off(u,v) : off(u,v) + L']`` on the
    flattened phase planes of :func:`_phase_planes` -- no product has anything to contract, so
    elementwise passes are the whole work. On the planes each pass runs over one long row per
    channel (not the short rows of a window view), and everything goes block of channels by block
    (:data:`DEPTHWISE_BLOCK`): a block's planes are built, passed over k_h·k_w times and copied out
    while they stay in the cache.

    With a ``partner`` b (N, C, H_out, W_out) the same shifted planes also give the weight gradient
    ``∂w[c,0,u,v] = B[c] · P[c][off(u,v) : off(u,v) + L']`` (eq. 3.3; b laid out on the planes' grid,
    zeros where a flattened row wraps), k_h·k_w dot products per channel while the block is in the
    cache, and the result is the pair (y, ∂w)."""
    if _on_its_own_grid(geometry):
        return _depthwise_side_by_side(x, weight, geometry, partner)
    (kh, kw), (sh, sw), (dh, dw) = geometry.kernel_size, geometry.stride, geometry.dilation
    n, c, (rows_out, cols_out) = x.shape[0], x.shape[1], geometry.output_size
    rows, cols = rows_out + dh * (kh - 1) // sh, cols_out + dw * (kw - 1) // sw
    span = plane_span(n, rows, cols, geometry)
    taps = weight.reshape(c, kh * kw, 1)
    y = x.new_empty(n, c, rows_out, cols_out)
    grad = None if partner is None else x.new_empty(kh * kw, c, 1, 1)
    step = max(1, DEPTHWISE_BLOCK // (n * rows * cols))
    for c0 in range(0, c, step):
        c1, first = min(c, c0 + step), c0 == 0
        planes, _, _ = _phase_planes(x[:, c0:c1], geometry, "planes", capacity=min(c, step), border=first)
        if first:  # the later blocks' planes are prefixes of the first's buffer: the same views serve
            sources = [source[:, 0] for _, _, source in _shifted_sources(planes, geometry, cols, c1 - c0, span)]
            # ... and as (b, L', 1) columns for the dot products (:func:`_dot_operands`)
            columns = [_dot_operands(source)[1] for source in sources] if partner is not None else []
        shifted, dot_columns = ((sources, columns) if c1 - c0 == len(sources[0]) else
                                ([t[:c1 - c0] for t in sources], [t[:c1 - c0] for t in columns]))
        out = workspace.buffer("product", (c1 - c0, span), x.dtype, x.device)
        block = taps[c0:c1].unbind(1)
        for t, source in enumerate(shifted):
            if t == 0:
                torch.mul(source, block[0], out=out)
            else:
                out.addcmul_(source, block[t])
        if partner is not None:
            spread = workspace.buffer("spread", (min(c, step), n, rows, cols), x.dtype, x.device)[:c1 - c0]
            _frame(spread, (0, rows_out, 0, cols_out), lambda: partner[:, c0:c1].transpose(0, 1), border=first)
            row = _dot_operands(spread.view(c1 - c0, -1)[:, :span])[0]
            for dot, column in zip(grad[:, c0:c1].unbind(0), dot_columns):
                dot.baddbmm_(row, column, beta=0)
        y[:, c0:c1].copy_(out.as_strided((c1 - c0, n, rows_out, cols_out), (span, rows * cols, cols, 1))
                          .transpose(0, 1))
    if grad is None:
        return y
    return y, grad.view(kh, kw, c).permute(2, 0, 1).reshape(c, 1, kh, kw)


SAME_GRID_BLOCK = 1 << 20
"""Elements of image per block in :func:`_depthwise_same_grid` (4 MiB of float32): a block of the images
side by side (:func:`_depthwise_side_by_side`), so each thread's share -- one image's channels, 1.6 MB for
dw_128_56 -- stays in its core's caches through all passes."""


def _depthwise_side_by_side(x: torch.Tensor, weight: torch.Tensor, geometry: Geometry, partner: torch.Tensor | None):
    """:func:`_depthwise_same_grid` with as many images side by side as there are threads: x (N, C, H, W) read
    as (N/T, T·C, H, W) -- T images one image of T·C channels, the kernel repeated T times -- and the T
    images' weight gradients summed at the end. Every pass then covers T whole images, and PyTorch splits it
    between its T threads at the image boundaries, as it splits the bias addition and the next layer's
    operations: each thread reads what it wrote, and there are T times fewer passes to launch. (One image at
    a time each pass split the image's channels between the threads instead -- what slowed in chapter 7's
    slow phase.) Measured on dw_128_56's training step, a minute of paired rounds: 1.42-1.54 times native's
    time where one image at a time took 1.77-1.95."""
    n, c, threads = x.shape[0], x.shape[1], torch.get_num_threads()
    if threads == 1 or n % threads:
        return _depthwise_same_grid(x, weight, geometry, partner)
    side = lambda t: t.contiguous().view(n // threads, threads * c, *t.shape[2:])  # noqa: E731
    result = _depthwise_same_grid(side(x), weight.repeat(threads, 1, 1, 1), geometry,
                                  None if partner is None else side(partner))
    if partner is None:
        return result.view(x.shape)
    return result[0].view(x.shape), result[1].view(threads, *weight.shape).sum(0)


def _on_its_own_grid(geometry: Geometry) -> bool:
    """Stride 1 and an output grid that is the input grid ("same" padding): :func:`flat_taps` apply."""
    return geometry.stride == (1, 1) and geometry.output_size == geometry.input_size


def flat_taps(geometry: Geometry) -> dict[int, list[tuple[int, int, int, int]]]:
    """The taps of a stride-1 correlation whose output grid is its input grid, on each plane flattened
    to one row of H·W (book eq. perf-depthwise-flat): ``{δ: [(tap, off, first, end)]}``, tap ``u·k_w + v``
    in column group ``δ = d_w·v − p_w``, at offset ``off = (d_h·u − p_h)·W + δ``, so that
    ``y[q] += w[tap] · x_δ[q + off]`` for ``first ≤ q < end`` -- the positions whose row
    ``h + d_h·u − p_h`` lies in the image -- where ``x_δ`` is x with the columns ℓ for which ``ℓ − δ`` is
    not a column zeroed (a shift past the end of a row reads them, in the next or previous row). The
    group δ = 0 comes first, with the tap at offset 0 (if any) at its head; taps that read only padding
    are left out."""
    (kh, kw), (dh, dw), (top, left) = geometry.kernel_size, geometry.dilation, geometry.padding
    height, width = geometry.input_size
    length, groups = height * width, {}
    for u in range(kh):
        for v in range(kw):
            rise, shift = input_position(0, u, 1, top, dh), input_position(0, v, 1, left, dw)
            if abs(rise) < height and abs(shift) < width:
                offset = rise * width + shift
                groups.setdefault(shift, []).append((u * kw + v, offset, max(0, -offset), min(length, length - offset)))
    return {shift: sorted(groups[shift], key=lambda tap: tap[1] != 0) for shift in sorted(groups, key=abs)}


_SAME_SIZE_INTEGER = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _depthwise_same_grid(x: torch.Tensor, weight: torch.Tensor, geometry: Geometry, partner: torch.Tensor | None):
    """Depthwise at stride 1 with the output on the input grid: no padded copy, no layout copy. On
    the image flattened to rows of H·W per (n, c), tap (u, v) is the constant offset of
    :func:`flat_taps`, ``y[n,c,p] = Σ_{u,v} w[c,0,u,v] · x_δ[n,c, p + off(u,v)]`` over the positions
    whose row stays inside, where ``x_δ`` is x with the columns ``w'`` for which ``w' − δ`` is not a
    column zeroed (``x_δ = x · m_δ``, computed as an AND of the bits, so that the zeros are exact
    even where x holds inf or NaN): a shift by δ reads them only by wrapping into the next or
    previous row, where the padding should be. Image by image, block of channels by block
    (:data:`SAME_GRID_BLOCK`), the result is written straight into y, and the masked copy of a
    column group is made once in the cache and read by its k_h taps.

    With a ``partner`` b (N, C, H, W) the weight gradient comes with it, a dot product per tap while
    the block is in the cache: ``∂w[c,0,u,v] = Σ_n Σ_p b[n,c,p] · x_δ[n,c,p + off(u,v)]``."""
    n, c, (height, width) = x.shape[0], x.shape[1], geometry.input_size
    length, groups = height * width, flat_taps(geometry)
    blocks = -(-c * length // SAME_GRID_BLOCK)
    step = -(-c // blocks)
    planes, out = x.contiguous(), x.new_empty(n, c, height, width)
    kernel = weight.reshape(c, -1).t().unsqueeze(2)                                       # (k_h·k_w, C, 1)
    # m_δ as a bit mask on x's bits (all ones or all zeros per column): an AND zeroes a column
    # exactly, where a multiply by 0 would turn an inf there into a NaN that the wrapped reads spread
    bits, column = _SAME_SIZE_INTEGER[x.element_size()], torch.arange(width, device=x.device)
    masks = {shift: torch.where((column >= shift) & (column < width + shift), -1, 0).to(bits).repeat(height)
             for shift in groups if shift}
    seeded = 0 in groups and groups[0][0][1] == 0                  # a tap at offset 0 covers every position
    grad = None if partner is None else x.new_zeros(weight.shape[2] * weight.shape[3], c, 1, 1)
    partners = None if partner is None else partner.contiguous()
    for c0 in range(0, c, step):
        b = min(c, c0 + step) - c0
        masked = workspace.buffer("masked", (b, length), x.dtype, x.device)
        # the block's views for all n images, each window's n views made by one call (_image_rows)
        sources, targets = _image_rows(planes, c0, b, 0, length), _image_rows(out, c0, b, 0, length)
        passes = [(masks.get(shift), [(kernel[tap, c0:c0 + b], seeded and offset == 0,
                                       None if grad is None else grad[tap, c0:c0 + b],
                                       _flat_tap_views(planes, out, partners, masked, c0, b, shift, offset, first, end))
                                      for tap, offset, first, end in group])
                  for shift, group in groups.items()]
        for image in range(n):
            if not seeded:
                targets[image].zero_()
            for mask, taps in passes:
                if mask is not None:
                    torch.bitwise_and(sources[image].view(bits), mask, out=masked.view(bits))
                for w, seed, dot, views in taps:
                    read, write, row, column = views[image]
                    torch.mul(read, w, out=write) if seed else write.addcmul_(read, w)
                    if dot is not None:                                 # (b, 1, L') @ (b, L', 1)
                        dot.baddbmm_(row, column)
    return out if grad is None else (out, grad.view(*weight.shape[2:], c).permute(2, 0, 1).reshape(c, 1, *weight.shape[2:]))


def _flat_tap_views(planes: torch.Tensor, out: torch.Tensor, partners: torch.Tensor | None, masked: torch.Tensor,
                    c0: int, b: int, shift: int, offset: int, first: int, end: int) -> list:
    """One tap of :func:`_depthwise_same_grid` on channels c0 : c0 + b, per image: (read, write, dot
    row, dot column) -- x_δ at positions ``first + off : end + off`` (x itself for δ = 0, else the
    block's masked copy, the same view for every image), y at ``first : end``, and the partner's
    rows and x_δ's columns for the weight gradient's dot products (None without a partner)."""
    n = planes.shape[0]
    if shift == 0:
        reads = _image_rows(planes, c0, b, first + offset, end + offset)
        columns = (None,) * n if partners is None else _image_rows(planes, c0, b, first + offset, end + offset, "column")
    else:
        read = masked[:, first + offset:end + offset]
        reads, columns = (read,) * n, (None if partners is None else _dot_operands(read)[1],) * n
    rows = (None,) * n if partners is None else _image_rows(partners, c0, b, first, end, "row")
    return list(zip(reads, _image_rows(out, c0, b, first, end), rows, columns))


def _image_rows(planes: torch.Tensor, c0: int, b: int, first: int, end: int, dot: str | None = None) -> tuple:
    """Channels c0 : c0 + b, positions first : end of every image of ``planes`` (N, C, H, W), each
    (n, c) plane flattened to one row of H·W: n views (b, end − first) made by one call -- or, with
    ``dot``, the (b, 1, L') "row" or (b, L', 1) "column" operands of :func:`_dot_operands`."""
    n, c, height, width = planes.shape
    length, size, start = height * width, end - first, planes.storage_offset() + c0 * height * width + first
    window = planes.as_strided((n, b, size), (c * length, length, 1), start)
    return (window if dot is None else _dot_operands(window)[dot == "column"]).unbind(0)


def _dot_operands(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., b, L) rows as (..., b, 1, L) and as (..., b, L, 1), for b dot products by one batched
    product (b, 1, L) @ (b, L, 1). The size-1 dimensions carry the row stride: with the strides a
    plain ``unsqueeze`` gives, the library takes a path about 90 times slower for these shapes."""
    *lead, length = rows.shape
    *outer, stride = rows.stride()[:-1]
    offset = rows.storage_offset()
    return (rows.as_strided((*lead, 1, length), (*outer, stride, stride, 1), offset),
            rows.as_strided((*lead, length, 1), (*outer, stride, 1, stride), offset))


# --------------------------------------------------------------------------------------------
# correlate_transpose: ConvTranspose2d forward and Conv2d input gradient (eqs. 3.4, 4.1)
# --------------------------------------------------------------------------------------------

def _tap_ranges(size: int, count: int, step: int, dilation: int, pad: int, taps: int) -> dict:
    """{tap u: (phase a, k0, k1, m0, m1)}: tap u of outputs m in [m0, m1) lands on the image positions
    ``s·m + d·u − p`` inside [0, size), which are positions k0 ≤ k < k1 of the phase grid
    ``a, a + s, a + 2s, ...`` (taps that land nowhere are left out)."""
    ranges = {}
    for u in range(taps):
        m0, m1 = _inside(size, count, step, dilation * u - pad)
        if m1 > m0:
            first = step * m0 + dilation * u - pad
            ranges[u] = (first % step, first // step, first // step + m1 - m0, m0, m1)
    return ranges


def _add_taps(image: torch.Tensor, columns: torch.Tensor, geometry: Geometry, weights=None) -> None:
    """col2im: ``image[:, :, s·i + d·u − p, s·j + d·v − p] = Σ_{u,v} columns[:, :, u, v, i, j]`` (times
    ``weights[:, u, v]`` when given) over the (i, j) that land inside the image -- eq. (3.4)'s scatter,
    with no padded image to crop afterwards.

    ``image`` may start uninitialised. It splits into s_h·s_w phase grids (positions ≡ (a, b) mod s);
    in each, the first tap that covers the whole grid is *written* (a copy) and the others added. Only
    when some grid has no such tap is the image zeroed first (one contiguous pass; zeroing that grid
    alone would be a slower strided one). Stride 2, k = 3: every grid has a covering tap, so no pass
    zeroes the image and the (even, even) grid is a single copy; k = s (2 × 2 upsampling): copies only.
    Where the taps are many per phase (:data:`PHASE_WINDOWS`: the stem's 7 × 7 stride 2 has 9-16 per grid)
    each grid is summed in a contiguous buffer and copied into the image once, so the adds write whole
    rows instead of every s-th entry.
    """
    (kh, kw), (sh, sw), (dh, dw) = geometry.kernel_size, geometry.stride, geometry.dilation
    (top, left), (rows_out, cols_out) = geometry.padding, geometry.output_size
    height, width = image.shape[-2:]
    if taps_tile_the_image(geometry):
        _tile(image, columns, weights)
        return
    row_taps = _tap_ranges(height, rows_out, sh, dh, top, kh)
    col_taps = _tap_ranges(width, cols_out, sw, dw, left, kw)
    plan = []                                                    # (grid, its taps, covering tap or None)
    for a in range(min(sh, height)):
        for b in range(min(sw, width)):
            grid = image[..., a::sh, b::sw]
            taps = [(u, v) for u in row_taps if row_taps[u][0] == a for v in col_taps if col_taps[v][0] == b]
            whole = (0, grid.shape[-2]), (0, grid.shape[-1])
            cover = next((t for t in taps if (row_taps[t[0]][1:3], col_taps[t[1]][1:3]) == whole), None)
            plan.append((grid, taps, cover))
    buffered = _many_taps_per_phase(geometry)
    if not buffered and any(cover is None for _, _, cover in plan):
        image.zero_()
    for grid, taps, cover in plan:
        target = workspace.buffer("grid", grid.shape, image.dtype, image.device) if buffered else grid
        if buffered and cover is None:
            target.zero_()
        for u, v in sorted(taps, key=lambda t: t != cover):      # the covering tap first
            (_, k0, k1, m0, m1), (_, l0, l1, n0, n1) = row_taps[u], col_taps[v]
            part, first = target[..., k0:k1, l0:l1], (u, v) == cover
            if weights is None:
                source = columns[..., u, v, m0:m1, n0:n1]
                part.copy_(source) if first else part.add_(source)
            else:
                source, w = columns[:, :, m0:m1, n0:n1], weights[:, :, u, v]
                torch.mul(source, w, out=part) if first else part.addcmul_(source, w)
        if buffered:
            grid.copy_(target)


def _tile(image: torch.Tensor, columns: torch.Tensor, weights=None) -> None:
    """:func:`_add_taps` where the taps tile the image (k = s, d = 1, p = 0, H = s·H_out): each position
    ``s·i + u`` is written by exactly one tap, so col2im is a depth-to-space copy,
    ``image[:, :, i, u, j, v] = columns[:, :, u, v, i, j]`` with the image viewed (N, C, H_out, s_h, W_out, s_w)
    -- one pass writing whole rows, where one strided copy per tap wrote every s-th entry (T_64_32_k2s2's
    forward: 0.88 of the time, paired rounds)."""
    c, rows_out, cols_out = image.shape[-3], *columns.shape[-2:]
    target = image.unflatten(-1, (cols_out, -1)).unflatten(-3, (rows_out, -1))
    lead = columns.dim() - 4
    source = columns.permute(*range(lead), lead + 2, lead, lead + 3, lead + 1)      # (…, i, u, j, v)
    if weights is None and target.shape[-1] == 2 and image.dtype in (torch.float32, torch.float64):
        _interleave(target, source[..., 0], source[..., 1])
    elif weights is None:
        target.copy_(source)
    else:
        kh, kw = weights.shape[2:4]
        torch.mul(columns[:, :, :, None, :, None], weights.reshape(1, c, 1, kh, 1, kw), out=target)


def _interleave(target: torch.Tensor, even: torch.Tensor, odd: torch.Tensor) -> None:
    """``target[..., i, u, j, 0] = even[..., i, u, j]``, ``target[..., i, u, j, 1] = odd[..., i, u, j]``:
    :func:`_tile` for s_w = 2, where each image row alternates two taps. A copy into the (…, 2) view writes
    two entries per innermost step (the loop runs over v, of length 2); read as complex numbers the row
    is one entry per step, ``even + i·odd``, and ``torch.complex`` writes it in a loop along j
    (T_64_32_k2s2's col2im: 0.52 of the copy's time, in cache)."""
    torch.complex(even, odd, out=torch.view_as_complex(target))   # (…, i, u, j): the pair (v = 0, v = 1)


def correlate_transpose_col2im(y: torch.Tensor, weight: torch.Tensor, geometry: Geometry, fold_batch: bool,
                               bias: torch.Tensor | None = None) -> torch.Tensor:
    """col2im: ``X_col[n,g] = W[g]ᵀ · Y[n,g]`` (one product per chunk of images), then each tap's
    column added into its rows of the image by strided slices (:func:`_add_taps`). With
    ``fold_batch`` the columns are (n, i, j), ``X_col[g] = W[g]ᵀ · Y[g]``: one wide product for the
    chunk instead of one thin product per image (small images), after a channel-major copy of y.

    A ``bias`` b (ConvTranspose2d's) is added to the result, ``x[n,c] += b[c]``. Where the taps tile the
    image (:func:`taps_tile_the_image`) every position receives exactly one tap, so it is added to the product
    instead, ``X_col[(c,u,v), ·] += b[c]``, while the block is in the cache (T_64_32_k2s2's forward: 0.92-0.94
    of the time of an add over the image, measured alone)."""
    g, og, cg = _split(geometry, weight)
    n, (kh, kw), (rows_out, cols_out) = y.shape[0], geometry.kernel_size, geometry.output_size
    k, positions, tiled = cg * kh * kw, rows_out * cols_out, taps_tile_the_image(geometry)
    w_t = weight.reshape(g, og, k).transpose(1, 2)
    image = y.new_empty(n, g * cg, *geometry.input_size)
    for n0, n1, _, _ in _blocks(n, 1, g * k * positions, y.numel(), image.numel(), weight.numel(),
                                limit=_column_limit(geometry)):
        nb = n1 - n0
        parts = _parts(nb) if fold_batch else nb
        m = nb // parts
        if fold_batch:
            part = workspace.buffer("product", (parts, g * og, m, positions), y.dtype, y.device)
            part.copy_(y[n0:n1].reshape(parts, m, g * og, positions).transpose(1, 2))
        else:
            part = y[n0:n1]
        cols = workspace.buffer("columns", (parts, g, k, m * positions), y.dtype, y.device)
        products.bmm(*_batched(w_t, part.reshape(parts, g, og, m * positions)), out=cols.view(parts * g, k, -1))
        if bias is not None and tiled:
            cols.view(parts, g * cg, kh * kw, m * positions).add_(bias.view(1, -1, 1, 1))
        taps = cols.view(parts, g * cg, kh, kw, m, rows_out, cols_out).permute(0, 4, 1, 2, 3, 5, 6)
        _add_taps(image[n0:n1].unflatten(0, (parts, m)), taps, geometry)
    if bias is not None and not tiled:
        image.add_(bias.view(1, -1, 1, 1))
    return image


def _phase_problem(geometry: Geometry, a: int, b: int, rows: tuple[int, int], cols: tuple[int, int]):
    """Phase (a, b) of the adjoint as a stride-1 *correlation* of y: (row taps, column taps, its Geometry).

    Rows t = h + p = s·m + a of the padded image receive the taps u_j with d·u_j ≡ a (mod s), which
    are σ = s/gcd(d, s) apart; their offsets ⌊d·u_j/s⌋ = q_0 + j·δ are δ = d/gcd(d, s) apart, so

        x[s·m + a − p] = Σ_j W_{u_j}ᵀ · y[m − q_0 − j·δ]                                   (phase)

    is a correlation of y with the *reversed* taps u_{J−1}, …, u_0 at dilation δ, read from padding
    q_0 + (J − 1)·δ before -- shifted by the first row m_0 that lands inside x.
    """
    (kh, kw), (sh, sw), (dh, dw) = geometry.kernel_size, geometry.stride, geometry.dilation
    taps, sizes, pads, dilations = [], [], [], []
    for k, s, d, phase, (m0, m1) in ((kh, sh, dh, a, rows), (kw, sw, dw, b, cols)):
        chosen = [u for u in range(k) if d * u % s == phase]
        delta = d // math.gcd(d, s)
        taps.append(chosen[::-1])
        sizes.append(m1 - m0)
        pads.append(d * chosen[0] // s + (len(chosen) - 1) * delta - m0 if chosen else 0)
        dilations.append(delta)
    sub = Geometry(kernel_size=(len(taps[0]), len(taps[1])), stride=(1, 1), padding=tuple(pads),
                   dilation=tuple(dilations), groups=geometry.groups, input_size=geometry.output_size,
                   output_size=tuple(sizes))
    return taps[0], taps[1], sub


def _progression(taps: list[int]) -> slice:
    """The descending arithmetic progression ``taps`` (one phase's taps, reversed) as an ascending slice."""
    step = taps[0] - taps[1] if len(taps) > 1 else 1
    return slice(taps[-1], taps[0] + 1, step)


def correlate_transpose_phase(y: torch.Tensor, weight: torch.Tensor, geometry: Geometry,
                              partner: torch.Tensor | None = None):
    """Sub-pixel (phase) decomposition: the adjoint at stride s is s_h·s_w stride-1 *correlations*
    of y (:func:`_phase_problem`), one per output phase, each computed by the forward dispatcher
    (im2col, shifted, ...) and written to the rows ``s·m + a − p`` of x. No zeros are inserted
    between the entries of y, so no multiply is wasted; at stride 1 there is one phase, and the
    adjoint is the correlation of the padded y with the flipped, transposed kernel.

    With a ``partner`` x (the layer's input) each phase's correlation also gives the weight
    gradient of its taps (:func:`run_pair`): substituting h = s·m + a − p in eq. (3.3),
    ``∂L/∂w[γ·O_g + o, c, u_{J−1−j}, v_{L−1−l}] = G̃[γ·C_g + c, o, j, l]`` with
    ``G̃ = correlate_weight(y, x_(a,b))`` in the phase's geometry and ``x_(a,b)`` the rows and
    columns of x in phase (a, b); the result is then the pair (x, ∂L/∂w).
    """
    g, og, cg = _split(geometry, weight)
    (sh, sw), (top, left), (height, width) = geometry.stride, geometry.padding, geometry.input_size
    grouped = weight.reshape(g, og, cg, *geometry.kernel_size)
    single = (sh, sw) == (1, 1)
    image = None if single else y.new_empty(y.shape[0], g * cg, height, width)
    grad = None if partner is None or single else weight.new_zeros(grouped.shape)   # (one phase: all taps)
    for a in range(sh):
        rows = _inside(height, -(-(height + top) // sh), sh, a - top)
        for b in range(sw):
            cols = _inside(width, -(-(width + left) // sw), sw, b - left)
            if rows[1] == rows[0] or cols[1] == cols[0]:
                continue
            row_taps, col_taps, sub = _phase_problem(geometry, a, b, rows, cols)
            where = (slice(None), slice(None), _strided(*rows, sh, a - top), _strided(*cols, sw, b - left))
            if not row_taps or not col_taps:
                image[where].zero_()                 # (at stride 1 every tap is in the one phase)
                continue
            taps = (slice(None), slice(None), slice(None), _progression(row_taps), _progression(col_taps))
            kernel = grouped[taps].flip(3, 4).transpose(1, 2).reshape(g * cg, og, *sub.kernel_size)
            if partner is None:
                phase = run("correlate", y, kernel, sub, into=None if single else image[where])
            else:
                phase, kernel_grad = run_pair(y, kernel, partner[where], sub)
                kernel_grad = kernel_grad.reshape(g, cg, og, *sub.kernel_size).transpose(1, 2).flip(3, 4)
                if single:
                    grad = kernel_grad
                else:
                    grad[taps] = kernel_grad
                    image[where].copy_(phase)
            if single:
                image = phase
    return image if partner is None else (image, grad.reshape(weight.shape))


def correlate_transpose_depthwise(y: torch.Tensor, weight: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """Depthwise adjoint: ``x[n,c, s·i + d·u − p, ·] += w[c,0,u,v] · y[n,c,i,j]`` tap by tap, a
    multiply-accumulate into strided slices of the image."""
    image = y.new_empty(y.shape[0], y.shape[1], *geometry.input_size)
    _add_taps(image, y, geometry, weights=weight.reshape(1, weight.shape[0], *geometry.kernel_size, 1, 1))
    return image


# --------------------------------------------------------------------------------------------
# correlate_weight: the weight gradient (eq. 3.3)
# --------------------------------------------------------------------------------------------

def correlate_weight_im2col(x: torch.Tensor, y: torch.Tensor, geometry: Geometry, fold_batch: bool) -> torch.Tensor:
    """im2col: ``W[g] = Σ_n Y[n,g] · X_col[n,g]ᵀ``, one product per image contracting its positions
    against its column matrix. With ``fold_batch`` the columns are (n, i, j) and one product per
    chunk of images contracts batch and positions at once (small images), after a channel-major
    copy of y. The columns the forward kept (:func:`reusing_columns`) are not copied again."""
    g, (kh, kw), (rows_out, cols_out) = geometry.groups, geometry.kernel_size, geometry.output_size
    n, o, c = x.shape[0], y.shape[1], x.shape[1]
    k, positions = c // g * kh * kw, rows_out * cols_out
    grad = x.new_empty(g, o // g, k)
    blocks = list(_blocks(n, rows_out, g * k * positions, x.numel(), y.numel(), grad.numel(),
                          limit=_column_limit(geometry)))
    kept = _reused(x, geometry, fold_batch) if len(blocks) == 1 else None
    windows = _windows(x, geometry) if kept is None else None
    for index, block in enumerate(blocks):
        cols = kept if kept is not None else _columns(windows, block, geometry, fold_batch)
        _weight_product(grad, cols, y, block, fold_batch, accumulate=index > 0)
    return grad.view(o, c // g, kh, kw)


def correlate_weight_shifted(x: torch.Tensor, y: torch.Tensor, geometry: Geometry, blocked: bool) -> torch.Tensor:
    """Shifted products: ``W[g,:,:,u,v] = Y[g] · P_(du mod s_h, dv mod s_w)[g][:, off(u,v) : off(u,v) + L']ᵀ``
    on the phase planes of x (:func:`_phase_planes`, :func:`_weight_taps`): each tap is one
    product contracting batch and positions together, and no column matrix is built."""
    parts = 1 if blocked else _parts(x.shape[0])
    planes, rows, cols = _phase_planes(x, geometry, "planes", parts=parts, shared=True)
    span = plane_span(x.shape[0] // parts, rows, cols, geometry)
    return _weight_taps(_shifted_sources(planes, geometry, cols, parts * geometry.groups, span), y, geometry, rows,
                        cols, span, blocked, parts)


def _weight_taps(sources: list, y: torch.Tensor, geometry: Geometry, rows: int, cols: int, span: int,
                 blocked: bool, parts: int = 1) -> torch.Tensor:
    """``W[g,:,:,u,v] = Y[g] · S_(u,v)[g]ᵀ`` for the shifted sources S of :func:`_shifted_sources`,
    with y laid out on the planes' grid (zeros where a flattened column wraps a row end).
    ``blocked`` (depthwise layers, where each product is one dot product per channel and the
    passes are memory-bound) runs all taps block of groups by block (:data:`DEPTHWISE_BLOCK`),
    so that each block is read from the cache after its first tap. With ``parts`` P the sources are
    the P parts' groups (:func:`_phase_planes`): each tap's P·g products run as one batch and the
    parts' partial sums are added at the end."""
    g, (kh, kw), (rows_out, cols_out) = geometry.groups, geometry.kernel_size, geometry.output_size
    n, o, (_, cg, _) = y.shape[0], y.shape[1], sources[0][2].shape
    og, m = o // g, n // parts
    spread, kept = workspace.framed_buffer("spread", (parts, o, m, rows, cols), (0, rows_out, 0, cols_out),
                                           y.dtype, y.device)
    _frame(spread, (0, rows_out, 0, cols_out), lambda: y.unflatten(0, (parts, m)).transpose(1, 2), not kept)
    spread = spread.view(parts * g, og, -1)[:, :, :span]
    grad = y.new_empty(kh, kw, parts * g, og, cg)
    step = max(1, DEPTHWISE_BLOCK // (cg * n * rows * cols)) if blocked else parts * g
    tap_products = [(grad[u, v], source.transpose(1, 2)) for u, v, source in sources]
    for g0 in range(0, parts * g, step):
        for out, source in tap_products:
            _multiply(out[g0: g0 + step], spread[g0: g0 + step], source[g0: g0 + step], accumulate=False)
    if parts > 1:
        grad = grad.view(kh, kw, parts, g, og, cg).sum(2)
    return grad.permute(2, 3, 4, 0, 1).reshape(o, cg, kh, kw)


def correlate_weight_row_shifted(x: torch.Tensor, y: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """Row-shifted products: ``W[g,:,:,u,:] = Σ_chunks Y_u[g] · X_{du mod s_h}[g]ᵀ`` with the column-tap
    matrices X_a of :func:`_row_planes` and ``Y_u[o, (n,r,j)] = y[n, o, r − ⌊du/s_h⌋, j]`` -- y laid
    out on their (n, r, j) grid, shifted down by the row tap's offset, zeros elsewhere
    (:func:`_row_weight_products`). In chunks of images."""
    g, (kh, kw), sh, dh = geometry.groups, geometry.kernel_size, geometry.stride[0], geometry.dilation[0]
    (rows_out, cols_out), phases = geometry.output_size, _row_phases(geometry)
    n, o, c = x.shape[0], y.shape[1], x.shape[1]
    og, cg, rows = o // g, c // g, rows_out + dh * (kh - 1) // sh
    grads = {a: x.new_empty(g, len(taps) * og, cg * kw) for a, taps in phases.items()}
    per_image = rows * cols_out * max(len(phases) * kw * c, kh * o)
    for index, (n0, n1, _, _) in enumerate(_blocks(n, 1, per_image, x.numel(), y.numel(), o * cg * kh * kw)):
        planes, _ = _row_planes(x[n0:n1], geometry, "planes")
        _row_weight_products(grads, planes, y[n0:n1], geometry, accumulate=index > 0)
    return _row_weight_assembled(grads, geometry, g, og, cg)


def _row_weight_products(grads: dict, planes: dict, y: torch.Tensor, geometry: Geometry, accumulate: bool) -> None:
    """``grads[a] (+)= [Y_u[g]]_u · X_a[g]ᵀ`` for one chunk of images: the row taps u of phase a stacked
    into the rows of one (k_h·O_g × L') by (L' × C_g·k_w) product, which contracts batch and
    positions at once and reads the column-tap matrix once."""
    g, kh, sh, dh = geometry.groups, geometry.kernel_size[0], geometry.stride[0], geometry.dilation[0]
    (rows_out, cols_out), (nb, o) = geometry.output_size, y.shape[:2]
    og, rows = o // g, rows_out + dh * (kh - 1) // sh
    width, y_cm = nb * rows * cols_out, y.transpose(0, 1).unflatten(0, (g, og))
    for a, taps in _row_phases(geometry).items():
        spread = workspace.buffer("product", (g, len(taps), og, nb, rows, cols_out), y.dtype, y.device)
        for t, u in enumerate(taps):
            _frame(spread[:, t], (dh * u // sh, dh * u // sh + rows_out, 0, cols_out), lambda: y_cm)
        cg_kw = planes[a].shape[0] // g
        _multiply(grads[a], spread.view(g, -1, width), planes[a].view(g, cg_kw, width).transpose(1, 2),
                  accumulate=accumulate)


def _row_weight_assembled(grads: dict, geometry: Geometry, g: int, og: int, cg: int) -> torch.Tensor:
    """The weight gradient (O, C_g, k_h, k_w) from the per-phase products of :func:`_row_weight_products`."""
    kh, kw = geometry.kernel_size
    grad = next(iter(grads.values())).new_empty(g, og, cg, kh, kw)
    for a, taps in _row_phases(geometry).items():
        grad[:, :, :, taps] = grads[a].view(g, len(taps), og, cg, kw).permute(0, 2, 3, 1, 4)
    return grad.view(g * og, cg, kh, kw)


# --------------------------------------------------------------------------------------------
# fft: the convolution theorem (convbook.spectral), with a direct strategy for non-finite results
# --------------------------------------------------------------------------------------------

def _finite(result) -> bool:
    """Whether every entry is finite, read off one sum per tensor: a NaN or ±inf anywhere makes the sum
    non-finite (one pass, where ``isfinite(t).all()`` takes four). A sum of finite entries that overflows
    only sends the call to the direct strategy, which is exact too."""
    return all(bool(torch.isfinite(t.sum())) for t in (result if isinstance(result, tuple) else (result,)))


def correlate_fft(x: torch.Tensor, weight: torch.Tensor, geometry: Geometry, partner: torch.Tensor | None = None):
    """:func:`convbook.spectral.correlate`, or :func:`correlate_row_shifted` where its result is not finite."""
    result = spectral.correlate(x, weight, geometry, partner)
    return result if _finite(result) else correlate_row_shifted(x, weight, geometry, partner)


def correlate_transpose_fft(y: torch.Tensor, weight: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """:func:`convbook.spectral.correlate_transpose`, or :func:`correlate_transpose_phase` where its
    result is not finite."""
    result = spectral.correlate_transpose(y, weight, geometry)
    return result if _finite(result) else correlate_transpose_phase(y, weight, geometry)


def correlate_weight_fft(x: torch.Tensor, y: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """:func:`convbook.spectral.correlate_weight`, or :func:`correlate_weight_row_shifted` where its
    result is not finite."""
    result = spectral.correlate_weight(x, y, geometry)
    return result if _finite(result) else correlate_weight_row_shifted(x, y, geometry)


# --------------------------------------------------------------------------------------------
# winograd: F(2 × 2, 3 × 3) on 3 × 3 kernels at stride 1 (convbook.winograd)
# --------------------------------------------------------------------------------------------

def _winograd_blocks(x: torch.Tensor, channels: int, weight_entries: int, geometry: Geometry, *sizes: int):
    """(n0, n1, parts, padded block of x) for :func:`winograd.image_blocks` (``sizes``: the entries of the
    other operand and the result): the images padded to the tiles' extent, block by block in one reused
    frame, and the block's parts (:func:`winograd.parts`)."""
    (dh, dw), (th, tw) = geometry.dilation, winograd.tiles(geometry)
    per_image = 16 * channels * dh * dw * th * tw
    for n0, n1 in winograd.image_blocks(x.shape[0], per_image, max(x.numel(), weight_entries, *sizes)):
        parts = winograd.parts(n1 - n0, 16 * weight_entries // 9, (n1 - n0) * per_image)
        yield n0, n1, parts, _padded(x[n0:n1], geometry, "padded", extent=winograd.extent(geometry))


def correlate_winograd(x: torch.Tensor, weight: torch.Tensor, geometry: Geometry, partner: torch.Tensor | None = None):
    """:func:`_winograd_correlate`, or im2col where its result is not finite: a transform adds and
    subtracts the entries of a tile, so one inf would put ``inf − inf = NaN`` into its neighbours' outputs,
    where the direct sums keep it to the windows that hold it."""
    result = _winograd_correlate(x, weight, geometry, partner)
    return result if _finite(result) else correlate_im2col(x, weight, geometry, False, partner)


def _winograd_correlate(x: torch.Tensor, weight: torch.Tensor, geometry: Geometry, partner: torch.Tensor | None = None):
    """Winograd F(2 × 2, 3 × 3): ``Y_tile = Aᵀ [U[ξ, ν] · V[ξ, ν]] A`` with ``U = G w Gᵀ`` and
    ``V = Bᵀ d B`` on the 4 × 4 tiles ``d`` of the padded input (eq. perf-winograd): 16 products of
    depth C_g per group instead of im2col's one of depth 9·C_g, 2.25 times fewer multiplications. Block
    of images by block (:data:`winograd.BLOCK`). A 3 × 3 kernel at stride 1 only (:func:`winograd.fits`);
    the dispatcher runs im2col wherever it is forced on another geometry (:func:`choose`).

    With a ``partner`` b the transformed tiles V of x also give ``correlate_weight(x, b)``:
    ``∂L/∂U[ξ, ν] = Σ_t (A B̄ Aᵀ)[ξ, ν] · V[ξ, ν]ᵀ``, ``∂L/∂w = Gᵀ (∂L/∂U) G`` (eq. perf-winograd-weight),
    and the result is the pair.
    """
    g, og, cg = _split(geometry, weight)
    u = winograd.weight_transform(weight, g)
    y = x.new_empty(x.shape[0], g * og, *geometry.output_size)
    grad_u = None
    for n0, n1, parts, padded in _winograd_blocks(x, max(x.shape[1], g * og), weight.numel(), geometry, y.numel()):
        v = winograd.input_transform(padded, geometry, parts)
        winograd.output_transform(winograd.products(u, v, g), geometry, y[n0:n1])
        if partner is not None:
            grad_u = winograd.weight_products(winograd.grad_transform(partner[n0:n1], geometry, parts), v, g, grad_u)
    if partner is None:
        return y
    return y, winograd.weight_transform_adjoint(grad_u)


def correlate_weight_winograd(x: torch.Tensor, y: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """The weight gradient by Winograd F(2 × 2, 3 × 3) (eq. perf-winograd-weight): the input's tiles V,
    y's tiles ``A Ȳ Aᵀ``, 16 products contracting batch and tiles, then ``Gᵀ (·) G``; or im2col's where
    that is not finite (:func:`correlate_winograd`)."""
    result = _winograd_weight(x, y, geometry)
    return result if _finite(result) else correlate_weight_im2col(x, y, geometry, False)


def _winograd_weight(x: torch.Tensor, y: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    g = geometry.groups
    grad_u = None
    for n0, n1, parts, padded in _winograd_blocks(x, max(x.shape[1], y.shape[1]), y.shape[1] * x.shape[1] // g * 9,
                                                  geometry, y.numel()):
        v = winograd.input_transform(padded, geometry, parts)
        grad_u = winograd.weight_products(winograd.grad_transform(y[n0:n1], geometry, parts), v, g, grad_u)
    return winograd.weight_transform_adjoint(grad_u)


# --------------------------------------------------------------------------------------------
# The registry, the dispatcher and the override
# --------------------------------------------------------------------------------------------

def _depthwise(groups: int, in_channels: int, out_channels: int) -> bool:
    return groups == in_channels == out_channels


def _always(groups: int, in_channels: int, out_channels: int) -> bool:
    return True


STRATEGIES: dict[str, dict[str, tuple[Callable, Callable]]] = {
    "correlate": {
        "plain": (kernels.correlate_plain, _always),
        "im2col": (partial(correlate_im2col, fold_batch=False), _always),
        "im2col_folded": (partial(correlate_im2col, fold_batch=True), _always),
        "channels_last": (correlate_channels_last, _always),
        "shifted": (correlate_shifted, _always),
        "row_shifted": (correlate_row_shifted, _always),
        "depthwise": (correlate_depthwise, _depthwise),
        "fft": (correlate_fft, _always),
        "winograd": (correlate_winograd, _always),
    },
    "correlate_transpose": {
        "plain": (kernels.correlate_transpose_plain, _always),
        "col2im": (partial(correlate_transpose_col2im, fold_batch=False), _always),
        "col2im_folded": (partial(correlate_transpose_col2im, fold_batch=True), _always),
        "phase": (correlate_transpose_phase, _always),
        "depthwise": (correlate_transpose_depthwise, _depthwise),
        "fft": (correlate_transpose_fft, _always),
    },
    "correlate_weight": {
        "plain": (kernels.correlate_weight_plain, _always),
        "im2col": (partial(correlate_weight_im2col, fold_batch=False), _always),
        "im2col_folded": (partial(correlate_weight_im2col, fold_batch=True), _always),
        "channels_last": (correlate_weight_channels_last, _always),
        "shifted": (partial(correlate_weight_shifted, blocked=False), _always),
        "row_shifted": (correlate_weight_row_shifted, _always),
        "depthwise": (partial(correlate_weight_shifted, blocked=True), _depthwise),
        "fft": (correlate_weight_fft, _always),
        "winograd": (correlate_weight_winograd, _always),
    },
    "correlate_pair": {
        "im2col": (partial(correlate_im2col, fold_batch=False), _always),
        "im2col_folded": (partial(correlate_im2col, fold_batch=True), _always),
        "channels_last": (correlate_channels_last, _always),
        "shifted": (correlate_shifted, _always),
        "row_shifted": (correlate_row_shifted, _always),
        "depthwise": (correlate_depthwise, _depthwise),
        "fft": (correlate_fft, _always),
        "winograd": (correlate_winograd, _always),
    },
}
"""contraction → {strategy name → (function, applies(groups, in_channels, out_channels))}. The pair's
functions are the correlation's, called with ``partner=b``: (a, w, geometry, partner=b) → (correlate(a, w),
correlate_weight(a, b))."""


SPECTRAL_WORK = 400
"""The ``fft`` strategy is chosen (stride 1, ungrouped) when the direct sums make at least this many
multiply-adds per channel pair for each of the F frequencies of the tap spectrum, ``N·k_h·k_w·L ≥ 400·F``:
the spectrum (O·C·F complex numbers) and the per-frequency products cost per frequency what the direct
sums cost per tap and position. Measured on the machine of chapter 7 (forward and weight gradient,
fft against the direct strategy): 0.2-0.65 at work 560-1600 (k = 7, 9, 11 on 32-128 channels), 1.0 at
427 (256 channels, 14 × 14, k = 7), 1.1-1.4 at 80-330 (k = 5 on 128-256 channels, batch 1, k = 3)."""


ADDS_BIAS = {("correlate_transpose", "col2im"), ("correlate_transpose", "col2im_folded"), ("correlate", "shifted")}
"""The strategies that take ``bias=`` (:func:`run`) and add it themselves: col2im folds it into its product
where the taps tile the image (:func:`correlate_transpose_col2im`); shifted adds it in its layout copy into y,
one pass over y instead of two (grp8_128_28's forward, paired against adding it after: 0.98 of the time in
two runs of 31 rounds)."""

WRITES_INTO = {("correlate", "shifted")}
"""The strategies that take ``into=`` (:func:`run`): their result is a layout copy out of a scratch
buffer, which can land in the caller's view as well as in a fresh tensor -- for the phases of
:func:`correlate_transpose_phase` that saves a copy of each phase (T_g4_64_k4s2 forward ≈10%)."""


def applies(contraction: str, name: str, groups: int, in_channels: int, out_channels: int) -> bool:
    """Whether strategy ``name`` can compute ``contraction`` for these channel counts."""
    return STRATEGIES[contraction][name][1](groups, in_channels, out_channels)

_local = threading.local()


@contextmanager
def forced(name: str | None = None, **per_contraction: str):
    """Use strategy ``name`` (for every contraction that has it) or ``correlate=...``,
    ``correlate_transpose=...``, ``correlate_weight=...`` on this thread inside the block."""
    unknown = set(per_contraction) - set(CONTRACTIONS)
    if unknown:
        raise ValueError(f"unknown contraction(s) {sorted(unknown)}; expected {CONTRACTIONS}")
    choice = {c: name for c in CONTRACTIONS if name in STRATEGIES[c]} | per_contraction
    if name is not None and not any(name in STRATEGIES[c] for c in CONTRACTIONS):
        raise ValueError(f"unknown strategy {name!r}")
    previous = getattr(_local, "forced", {})
    _local.forced = previous | choice
    try:
        yield
    finally:
        _local.forced = previous


WINOGRAD_CHANNELS = 16
"""Winograd is chosen for ungrouped, undilated 3 × 3 correlations at stride 1 with at least this many
channels on each side: its 16 products have depth C, and thinner ones run far below the matrix
library's speed. (Dilated, its transforms read every d-th number: ``dil2_64_56``'s training step measured
no faster than im2col's -- 1.50 and 1.53 times native's against 1.46 and 1.66 in two paired measurements
-- so it stays with im2col.)"""


WINOGRAD_POSITIONS = 64
"""...and at least this many output positions per image: a 7 × 7 map is covered by 4 × 4 tiles of an 8 × 8 one
(a third of the work thrown away), and its 512 × 512 transformed weights U take more memory than the
layer's input (``r18_512_7``: step 1.45-1.55 times native's, as with im2col_folded, at 3.3 times native's
peak memory)."""


def _winograd(geometry: Geometry, cg: int, og: int) -> bool:
    return (winograd.fits(geometry) and geometry.dilation == (1, 1) and geometry.groups == 1
            and min(cg, og) >= WINOGRAD_CHANNELS and math.prod(geometry.output_size) >= WINOGRAD_POSITIONS)


def _fitting(name: str, geometry: Geometry) -> str:
    """``name``, or im2col where it is winograd and the geometry does not fit its tiles."""
    return "im2col" if name == "winograd" and not winograd.fits(geometry) else name


def choose(contraction: str, batch: int, in_channels: int, out_channels: int, geometry: Geometry) -> tuple[str, str]:
    """(strategy, reason) for one contraction. ``in_channels`` is x's (the large side's) channel
    count, ``out_channels`` y's, for all three contractions."""
    g = geometry.groups
    (kh, kw), (sh, sw) = geometry.kernel_size, geometry.stride
    positions = math.prod(geometry.output_size)
    cg, og = in_channels // max(g, 1), out_channels // max(g, 1)
    if min(batch, in_channels, out_channels, positions, *geometry.input_size) == 0:
        return "plain", "an empty tensor: nothing to speed up (even when another strategy is forced)"
    forced_name = getattr(_local, "forced", {}).get(contraction)
    if forced_name is not None:
        if _fitting(forced_name, geometry) != forced_name:
            return "im2col", "winograd is forced, but its tiles fit only 3 × 3 kernels at stride 1: im2col"
        return forced_name, "forced by strategies.forced()"
    largest = max(batch * in_channels * math.prod(geometry.input_size), batch * out_channels * positions,
                  out_channels * cg * kh * kw)
    columns_fit = in_channels * kh * kw * positions <= COLUMN_BUDGET * largest
    if _depthwise(g, in_channels, out_channels) and contraction == "correlate_transpose" and (sh, sw) == (1, 1):
        return "phase", ("depthwise at stride 1: the adjoint is one depthwise correlation of y with the flipped "
                         "kernel (block by block in the cache, where each block of y also serves the weight gradient)")
    if _depthwise(g, in_channels, out_channels) and contraction != "correlate_weight":
        return "depthwise", ("depthwise: nothing to contract over channels, a multiply-accumulate per tap"
                             + (" on the image itself (its output grid is its input grid)" if _on_its_own_grid(geometry)
                                else " on the flattened phase planes"))
    if contraction != "correlate_transpose" and g == 1 and (sh, sw) == (1, 1):
        work = batch * kh * kw * positions / spectral.frequencies(geometry)
        if work >= SPECTRAL_WORK:
            return "fft", (f"large kernel at stride 1: {work:.0f} multiply-adds of the direct sums per entry of "
                           f"the tap spectrum (≥ {SPECTRAL_WORK}), the convolution theorem: a product per frequency")
    if _winograd(geometry, cg, og) and contraction == "correlate_transpose":
        return "phase", ("3 × 3 at stride 1: the adjoint is one correlation of y with the flipped kernel, "
                         "by Winograd's F(2 × 2, 3 × 3)")
    if _winograd(geometry, cg, og):
        return "winograd", ("3 × 3 at stride 1: Winograd's F(2 × 2, 3 × 3), 16 products of depth C_g on "
                            "transformed 4 × 4 tiles, 2.25 times fewer multiplications than the direct sums")
    large_kernel = kh * kw >= 25 and sh == 1
    why_rows = "large kernel: k_w column taps copied, the k_h row taps stacked into one deep product"
    if contraction == "correlate":
        if large_kernel:
            return "row_shifted", why_rows
        if g > 1:
            return "shifted", "grouped: k² shifted products per group, no column matrix"
        if positions < 256:
            return "im2col_folded", "small image: the batch folded into the columns makes one large product"
        return "im2col", "one dense product on a copied column matrix"
    if contraction == "correlate_transpose":
        strided = (sh, sw) != (1, 1) and g == 1
        if columns_fit and ((kh <= sh and kw <= sw) or cg < 16 or positions < 256 or strided):
            why = ("taps do not overlap (k ≤ s)" if kh <= sh and kw <= sw
                   else "few input channels" if cg < 16 else "small image" if positions < 256
                   else "stride > 1, ungrouped (one deep product beats s² shallower phases)")
            if positions < 256:
                return "col2im_folded", why + ": one product Wᵀ·y over the whole chunk, then strided tap additions"
            return "col2im", why + ": one product Wᵀ·y with a wide output, then strided tap additions"
        return "phase", "stride² stride-1 correlations of y with sub-kernels, each by the forward dispatcher"
    if large_kernel:
        return "row_shifted", why_rows
    if _depthwise(g, in_channels, out_channels):
        return "depthwise", "depthwise: k² dot products per channel, block of channels by block (cache-resident)"
    if g > 1:
        return "shifted", "grouped: k² products per group, each contracting batch and positions at once"
    if not columns_fit or ((sh, sw) == (1, 1) and cg >= 16 and positions >= 256 and kh * kw > 1):
        return "shifted", "k² products, each contracting batch and positions at once, no column matrix"
    if positions < 512:
        return "im2col_folded", "one product contracting batch and positions against a copied column matrix"
    return "im2col", "one product per image contracting its positions against its copied column matrix"


def run(contraction: str, first: torch.Tensor, second: torch.Tensor, geometry: Geometry,
        into: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Run ``contraction`` on (first, second) with the chosen strategy. While autograd records
    through the call (rare: the Functions of :mod:`convbook.autograd` run without it), the plain
    differentiable version is used. With ``into`` (a view, e.g. one phase of an image) the result
    is written there and returned: a strategy whose last step is a layout copy out of its scratch
    buffer (``WRITES_INTO``) copies straight into it, the others' results are copied. A ``bias`` (one
    number per channel of the result) is added to it: by the strategies of ``ADDS_BIAS``, which can fold it
    into their product, otherwise afterwards."""
    if torch.is_grad_enabled() and (first.requires_grad or second.requires_grad):
        result = STRATEGIES[contraction]["plain"][0](first, second, geometry)
        return _with_bias(result if into is None else into.copy_(result), bias)
    if contraction == "correlate":
        batch, in_channels, out_channels = first.shape[0], first.shape[1], second.shape[0]
    elif contraction == "correlate_transpose":
        batch, in_channels, out_channels = first.shape[0], second.shape[1] * geometry.groups, first.shape[1]
    else:
        batch, in_channels, out_channels = first.shape[0], first.shape[1], second.shape[1]
    name, _ = choose(contraction, batch, in_channels, out_channels, geometry)
    if not applies(contraction, name, geometry.groups, in_channels, out_channels):
        raise ValueError(f"strategy {name!r} does not apply to this {contraction} call")
    function = STRATEGIES[contraction][name][0]
    if bias is not None and into is None and (contraction, name) in ADDS_BIAS:
        return function(first, second, geometry, bias=bias)
    if into is None:
        return _with_bias(function(first, second, geometry), bias)
    if (contraction, name) in WRITES_INTO:
        return _with_bias(function(first, second, geometry, into=into), bias)
    return _with_bias(into.copy_(function(first, second, geometry)), bias)


def _with_bias(result: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``result[n, c] += bias[c]`` in place (nothing when there is no bias)."""
    return result if bias is None else result.add_(bias.view(1, -1, 1, 1))


def run_pair(a: torch.Tensor, weight: torch.Tensor, b: torch.Tensor, geometry: Geometry):
    """(correlate(a, weight), correlate_weight(a, b)): by the correlation's strategy, which shares its
    column matrix (or planes) of a with the weight gradient where it can (``correlate_pair``),
    otherwise by the two dispatchers."""
    pinned = getattr(_local, "forced", {}).get("correlate_pair")
    name = _fitting(pinned, geometry) if pinned else choose("correlate", a.shape[0], a.shape[1], weight.shape[0], geometry)[0]
    if name in STRATEGIES["correlate_pair"] and min(a.numel(), b.numel(), weight.numel()) > 0:
        return STRATEGIES["correlate_pair"][name][0](a, weight, geometry, partner=b.contiguous())
    return run("correlate", a, weight, geometry), run("correlate_weight", a, b, geometry)


def choose_pair(op: str, batch: int, in_channels: int, out_channels: int, geometry: Geometry):
    """(strategy or None, reason) for computing a backward's two gradients
    together: the input gradient is a correlation of grad_output (for ``conv_transpose2d`` always,
    eq. 4.5; for ``conv2d`` at stride 1, with the flipped kernel), and the weight gradient is a
    correlate_weight of the same grad_output with the layer's input, so the strategy's column
    matrix (or phase planes) of grad_output serves both products. ``in_channels``, ``out_channels``:
    the layer's x and y, as in :func:`choose`."""
    forced_now = getattr(_local, "forced", {})
    pinned = forced_now.get("correlate_pair")
    if forced_now and pinned is None:
        return None, "a single contraction is forced: the two gradients run separately"
    if op == "conv2d":
        if pinned is None and choose("correlate_transpose", batch, in_channels, out_channels, geometry)[0] != "phase":
            return None, "the input gradient is not by phases of correlations: nothing to share"
        if pinned is None and geometry.stride != (1, 1):
            return None, ("stride > 1: the phases' weight gradients would need x split into phases, and "
                          "measured slower than the separate weight gradient")
        return "phase", ("each phase of the input gradient is a correlation of grad_output whose columns also "
                         "give the weight gradient of the phase's taps")
    name, why = (_fitting(pinned, geometry), "forced by strategies.forced()") if pinned else choose(
        "correlate", batch, in_channels, out_channels, geometry)
    if name not in STRATEGIES["correlate_pair"]:
        return None, f"the input gradient's correlation uses {name!r}, which shares nothing"
    return name, f"the input gradient's {name} columns of grad_output also give the weight gradient ({why})"


def backward_pair(op: str, grad_output: torch.Tensor, layer_input: torch.Tensor, weight: torch.Tensor,
                  geometry: Geometry, bias: bool = False):
    """(∂L/∂input, ∂L/∂w, ∂L/∂b or None) of ``conv2d`` (input x) or ``conv_transpose2d`` (input y) with shared
    work (:func:`choose_pair`), or None where nothing is shared. conv2d: the input gradient's phases
    (``correlate_transpose_phase`` with ``partner=x``); conv_transpose2d: ∂L/∂y =
    correlate(∂L/∂x, W) and ∂L/∂w = correlate_weight(∂L/∂x, y) (eq. 4.5) by one pair strategy.

    With ``bias`` an im2col pair also sums grad_output over batch and positions, ∂L/∂b (eq. 3.2), block by
    block while each block is in the cache for its column copy (``channel_sums`` of ``correlate_im2col``);
    the other strategies leave ∂L/∂b to the caller (None)."""
    if op == "conv2d":
        in_channels, out_channels = layer_input.shape[1], weight.shape[0]
    else:
        in_channels, out_channels = grad_output.shape[1], layer_input.shape[1]
    if min(grad_output.numel(), layer_input.numel(), weight.numel()) == 0:
        return None
    name, _ = choose_pair(op, layer_input.shape[0], in_channels, out_channels, geometry)
    if name is None:
        return None
    if op == "conv2d":
        return (*correlate_transpose_phase(grad_output, weight, geometry, partner=layer_input), None)
    pair = STRATEGIES["correlate_pair"][name][0]
    if not (bias and name in ("im2col", "im2col_folded")):
        return (*pair(grad_output, weight, geometry, partner=layer_input.contiguous()), None)
    sums = grad_output.new_zeros(grad_output.shape[1])
    return (*pair(grad_output, weight, geometry, partner=layer_input.contiguous(), channel_sums=sums), sums)


def explain(op: str, input_shape, weight_shape, stride=1, padding=0, dilation=1, groups=1,
            output_padding=0) -> dict[str, tuple[str, str]]:
    """Which strategy each contraction of a call uses, and why::

        convbook.explain("conv2d", (8, 64, 56, 56), (64, 64, 3, 3), padding=1)
        → {"forward": ("im2col", "..."), "grad_input": ("phase", "..."), "grad_weight": ("shifted", "..."),
           "backward": ("im2col", "...")}

    ``op`` is ``"conv2d"`` or ``"conv_transpose2d"``; arguments as in ``torch.nn.functional``.
    Conv2d's forward is ``correlate``, its input gradient ``correlate_transpose``; the transposed
    convolution swaps the two; both take the weight gradient from ``correlate_weight``.
    ``"backward"`` says how a backward that needs both gradients computes them: together, by the
    named ``correlate_pair`` strategy (:func:`backward_pair`), or ``"separate"``ly as the two
    entries above say.
    """
    from . import checks
    geometry = checks.shape_geometry(op, input_shape, weight_shape, stride, padding, dilation, groups, output_padding)
    shape = tuple(input_shape) if len(input_shape) == 4 else (1, *input_shape)
    if op == "conv2d":
        in_channels, out_channels = shape[1], weight_shape[0]
        roles = {"forward": "correlate", "grad_input": "correlate_transpose", "grad_weight": "correlate_weight"}
    else:
        in_channels, out_channels = weight_shape[1] * groups, shape[1]
        roles = {"forward": "correlate_transpose", "grad_input": "correlate", "grad_weight": "correlate_weight"}
    explained = {role: choose(contraction, shape[0], in_channels, out_channels, geometry)
                 for role, contraction in roles.items()}
    name, why = choose_pair(op, shape[0], in_channels, out_channels, geometry)
    explained["backward"] = (name or "separate", why)
    return explained
