"""The three contractions in the frequency domain: the ``fft`` strategy (book §7, the convolution theorem).

One spatial dimension (rows and columns are independent; in 2-D every factor below is a product of a
row factor and a column factor). Notation as in :mod:`convbook.strategies`; the index map of eq. (1.1)
reads ``h = s·i + m_u`` with the tap's *offset* ``m_u = d·u − p``.

Zero-insertion: ỹ is y with s − 1 zeros between its entries, ``ỹ[s·i] = y[i]``, of length
``H̃ = s·(H_out − 1) + 1``. All three contractions pair ỹ[i] with x[i + m_u]::

    y[i]  = Σ_u w[u] · x[s·i + m_u]                 (correlate, eq. 2.1: ỹ at stride 1, then every s-th)
    x[h]  = Σ_{i,u: s·i + m_u = h} w[u] · y[i]      (correlate_transpose, eq. 3.4)
    w[u]  = Σ_i y[i] · x[s·i + m_u]                 (correlate_weight, eq. 3.3)

With the DFT of length S, ``â[f] = Σ_h a[h] ω^(−f·h)``, ``ω = e^(2πi/S)``, and the kernel's *tap
spectrum* ``ĝ[f] = Σ_u w[u] ω^(f·m_u)`` they become products, frequency by frequency (eq. perf-fft)::

    ŷ̃[f] = x̂[f] · ĝ[f]          x̂[f] = ŷ̃[f] · conj(ĝ[f])          w[u] = (1/S) Σ_f conj(ŷ̃[f]) · x̂[f] · ω^(f·m_u)

and, summed over channels, one small matrix product per frequency: ``Ŷ[f] = X̂[f] · Ĝ[f]`` with X̂[f]
(N × C_g), Ĝ[f] (C_g × O_g). The DFT is circular; the sums above are not. They agree when no pair
(i, h) wraps onto another (:func:`transform_size`): ``S ≥ max(H + p, H̃ + d(k − 1) − p, H̃)``.

The exponentials ``ω^(f·m_u)`` are the same matrix (:func:`tap_phases`) in the tap spectrum and in the
weight gradient's inverse transform; the images go through ``torch.fft.rfft2``/``irfft2`` (a real
signal's spectrum is Hermitian, so only the columns f_w ≤ S_w/2 are kept).
"""
from __future__ import annotations

import math

import torch

from . import workspace
from .index_map import Geometry, effective_kernel_size, input_position

_REAL = {torch.float16: torch.float32, torch.bfloat16: torch.float32}
"""Half-precision operands are transformed in float32 (the FFT has no half-precision CPU kernel)
and the result is rounded back."""


def smooth_size(n: int) -> int:
    """The smallest 7-smooth number ≥ n (only the factors 2, 3, 5, 7): the lengths FFT libraries do fastest."""
    n = max(n, 1)
    while True:
        m = n
        for p in (2, 3, 5, 7):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def transform_size(size: int, output_size: int, kernel_size: int, stride: int, padding: int, dilation: int) -> int:
    """The DFT length S of one dimension: the smallest 7-smooth ``S ≥ max(H + p, H̃ + d(k − 1) − p, H̃)``.

    The circular sum pairs ỹ[i] with x[(i + m_u) mod S]. For i ∈ [0, H̃) and m_u ∈ [−p, d(k − 1) − p],
    ``i + m_u`` runs over [−p, H̃ − 1 + d(k − 1) − p]; a negative value wraps to S − p or above, which
    must be past the image (S ≥ H + p), and the largest must not wrap at all (S > H̃ − 1 + d(k − 1) − p);
    S ≥ H̃ keeps the entries of ỹ apart.
    """
    stretched = stride * (output_size - 1) + 1
    span = effective_kernel_size(kernel_size, dilation) - 1
    return smooth_size(max(size + padding, stretched + span - padding, stretched))


def frequencies(geometry: Geometry) -> int:
    """F = S_h·(S_w/2 + 1): the frequencies a real image's half spectrum keeps at this geometry's sizes."""
    g = geometry
    sh, sw = (transform_size(*dims) for dims in zip(g.input_size, g.output_size, g.kernel_size, g.stride,
                                                      g.padding, g.dilation))
    return sh * (sw // 2 + 1)


def tap_phases(length: int, kernel_size: int, padding: int, dilation: int, frequencies: int,
               dtype: torch.dtype, device) -> torch.Tensor:
    """``E[f, u] = ω^(f·m_u) = exp(2πi·f·(d·u − p)/S)`` for f < ``frequencies``, u < k: (frequencies, k)."""
    f = torch.arange(frequencies, dtype=torch.float64)[:, None]
    offsets = torch.tensor([[input_position(0, u, 1, padding, dilation) for u in range(kernel_size)]],
                           dtype=torch.float64)                                  # m_u = d·u − p, eq. (1.1) at i = 0
    angle = (2 * math.pi / length) * torch.remainder(f * offsets, length)   # exact integer product, then mod S
    complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    return torch.polar(torch.ones_like(angle), angle).to(device=device, dtype=complex_dtype)


class Plan:
    """The sizes and tap phases of one geometry: S_h × S_w transforms, F = S_h·(S_w/2 + 1) frequencies."""

    def __init__(self, geometry: Geometry, dtype: torch.dtype, device):
        g = geometry
        self.sizes = tuple(transform_size(*dims) for dims in zip(g.input_size, g.output_size, g.kernel_size,
                                                                  g.stride, g.padding, g.dilation))
        (sh, sw), (kh, kw) = self.sizes, g.kernel_size
        self.half = sw // 2 + 1
        self.frequencies = sh * self.half
        self.rows = tap_phases(sh, kh, g.padding[0], g.dilation[0], sh, dtype, device)          # (S_h, k_h)
        self.cols = tap_phases(sw, kw, g.padding[1], g.dilation[1], self.half, dtype, device)   # (S_w/2+1, k_w)
        self.stretched = tuple(s * (o - 1) + 1 for s, o in zip(g.stride, g.output_size))


def spectrum(t: torch.Tensor, plan: Plan, groups: int) -> torch.Tensor:
    """â of an image t (N, C, ·, ·) frequency-major: (F·g, N, C_g), each frequency's matrix contiguous."""
    n, c = t.shape[:2]
    hat = torch.fft.rfft2(t, s=plan.sizes)                                      # (N, C, S_h, S_w/2+1)
    hat = hat.view(n, groups, c // groups, plan.frequencies).permute(3, 1, 0, 2).contiguous()
    return hat.view(plan.frequencies * groups, n, c // groups)


def image(hat: torch.Tensor, plan: Plan, groups: int) -> torch.Tensor:
    """The inverse of :func:`spectrum`: (F·g, N, C_g) → the real image (N, C, S_h, S_w)."""
    _, n, cg = hat.shape
    planes = hat.view(plan.sizes[0], plan.half, groups, n, cg).permute(3, 2, 4, 0, 1)
    return torch.fft.irfft2(planes.reshape(n, groups * cg, plan.sizes[0], plan.half), s=plan.sizes)


def _real_times(a: torch.Tensor, phases: torch.Tensor) -> torch.Tensor:
    """``a @ phasesᵀ`` for a real a (…, k) and complex phases (F, k), as one real product: (…, F) complex."""
    both = torch.view_as_real(phases.transpose(0, 1).contiguous())             # (k, F, 2)
    return torch.view_as_complex((a @ both.reshape(a.shape[-1], -1)).view(*a.shape[:-1], -1, 2))


def _real_part_times(a: torch.Tensor, phases: torch.Tensor) -> torch.Tensor:
    """``Re(a @ phases)`` for complex a (…, F) and phases (F, k), as one real product: (…, k)."""
    stacked = torch.stack((phases.real, -phases.imag), dim=1)                   # (F, 2, k)
    return torch.view_as_real(a).reshape(*a.shape[:-1], -1) @ stacked.reshape(-1, phases.shape[1])


def _row_chunks(plan: Plan, spectrum_entries: int, per_row: int):
    """Slices of the S_h frequency rows, each holding at most about ``spectrum_entries`` entries of a
    (rows × S_w/2+1 × C_g × O_g) block: the tap spectrum and the weight spectrum are made and used a
    block at a time, never whole (each is O_g / N times the size of the images' spectra: for lk7_32_64,
    O_g = 32 and N = 8, 20 MB against 5 MB)."""
    step, threads = max(1, min(plan.sizes[0], spectrum_entries // max(1, per_row))), torch.get_num_threads()
    if step >= threads > 1:
        step -= step % threads                          # whole parts for _by_thread
    return [slice(r, min(r + step, plan.sizes[0])) for r in range(0, plan.sizes[0], step)]


def _along_cols(weight: torch.Tensor, plan: Plan, groups: int) -> torch.Tensor:
    """``Σ_v w[o, c, u, v] · E_w[f_w, v]`` laid out (k_h, S_w/2+1 · g · C_g · O_g): real w against the
    column phases in one real product."""
    o, cg, kh, _ = weight.shape
    along = _real_times(weight, plan.cols).view(groups, o // groups, cg, kh, plan.half).permute(3, 4, 0, 2, 1)
    return along.reshape(kh, -1)


def _by_thread(phases: torch.Tensor, block: torch.Tensor, transpose: bool = False) -> torch.Tensor:
    """``phases @ block`` for row phases (r, k) and a block (k, M) -- or, with ``transpose``, ``phasesᵀ @ block``
    for a block (r, M) -- with the r frequency rows split into one part per thread, each part one product
    of a ``torch.bmm``: the thread that makes (or sums) a part's rows is the one whose per-frequency
    products read (or wrote) them, as PyTorch and the matrix library split the batch of frequencies, row
    by row, in the same contiguous halves. One product over all rows splits its output by columns instead,
    so that each thread read half of what the other wrote -- what slowed in chapter 7's slow phase
    (lk7_32_64's tap spectra 2.3 times as long). With ``transpose`` the parts' sums are added at the end."""
    r = phases.shape[0]
    parts = workspace.thread_parts(r)
    if transpose:
        if parts == 1:
            return phases.transpose(0, 1) @ block
        split = phases.view(parts, r // parts, -1).transpose(1, 2)
        return torch.bmm(split, block.view(parts, r // parts, -1)).sum(0)
    if parts == 1:
        return phases @ block
    return torch.bmm(phases.view(parts, r // parts, -1), block.expand(parts, *block.shape)).view(r, -1)


def _per_frequency(plan: Plan, groups: int, rows: slice) -> slice:
    """The batch entries (frequency, group) of the frequency rows ``rows``, in the (F·g, ·, ·) layout."""
    width = plan.half * groups
    return slice(rows.start * width, rows.stop * width)


def _products(first: torch.Tensor, weight: torch.Tensor, plan: Plan, groups: int, adjoint: bool) -> torch.Tensor:
    """``first[f] · Ĝ[f]`` (or ``· Ĝ[f]ᴴ``) for every frequency, with the tap spectrum
    ``Ĝ[f][c, o] = Σ_{u,v} w[o, c, u, v] · E_h[f_h, u] · E_w[f_w, v]`` made block of frequency rows by
    block: the row phases against the column-transformed kernel (:func:`_along_cols`)."""
    o, cg = weight.shape[:2]
    along = _along_cols(weight, plan, groups)
    out = first.new_empty(first.shape[0], first.shape[1], cg if adjoint else o // groups)
    for rows in _row_chunks(plan, first.numel(), plan.half * cg * o):
        spectrum_rows = _by_thread(plan.rows[rows], along).view(-1, cg, o // groups)
        batch = _per_frequency(plan, groups, rows)
        torch.bmm(first[batch], spectrum_rows.conj().transpose(1, 2) if adjoint else spectrum_rows, out=out[batch])
    return out


def _weight_products(y_hat: torch.Tensor, x_hat: torch.Tensor, plan: Plan, groups: int, kernel_size) -> torch.Tensor:
    """``w[o, c, u, v] = (1 / S_h S_w) · Re Σ_{f_h, f_w} Ŵ[f][o, c] · E_h[f_h, u] · E_w[f_w, v]`` with
    ``Ŵ[f] = Ŷ̃[f]ᴴ · X̂[f]``, from the half spectra: the columns f_w that stand for two (f_w and S_w − f_w)
    count twice. Ŵ is made block of frequency rows by block and summed into the row taps at once."""
    og, cg = y_hat.shape[2], x_hat.shape[2]
    (sh, sw), kh = plan.sizes, kernel_size[0]
    along_rows = None
    for rows in _row_chunks(plan, x_hat.numel(), plan.half * groups * og * cg):
        batch = _per_frequency(plan, groups, rows)
        block = torch.bmm(y_hat[batch].conj().transpose(1, 2), x_hat[batch]).view(rows.stop - rows.start, -1)
        term = _by_thread(plan.rows[rows], block, transpose=True)               # (k_h, S_w/2+1 · g · O_g · C_g)
        along_rows = term if along_rows is None else along_rows.add_(term)
    along_rows = along_rows.view(kh, plan.half, groups, og, cg).permute(2, 3, 4, 0, 1)
    twice = torch.full((plan.half, 1), 2.0, dtype=plan.cols.real.dtype, device=x_hat.device)
    twice[0] = 1
    if sw % 2 == 0:
        twice[-1] = 1
    return _real_part_times(along_rows, plan.cols * twice / (sh * sw)).reshape(groups * og, cg, *kernel_size)


def _stretched(y: torch.Tensor, plan: Plan, stride) -> torch.Tensor:
    """ỹ: y with s − 1 zeros inserted between its entries (y itself at stride 1)."""
    if tuple(stride) == (1, 1):
        return y
    out = y.new_zeros(*y.shape[:2], *plan.stretched)
    out[:, :, ::stride[0], ::stride[1]] = y
    return out


def _working(t: torch.Tensor) -> torch.Tensor:
    return t.to(_REAL[t.dtype]) if t.dtype in _REAL else t


def correlate(x: torch.Tensor, weight: torch.Tensor, geometry: Geometry, partner: torch.Tensor | None = None):
    """Conv2d forward, ``Ŷ[f] = X̂[f] · Ĝ[f]``, then every s-th entry of ỹ. With a ``partner`` y the
    spectrum of x also gives the weight gradient :func:`correlate_weight` (x, y): the pair (y, ∂L/∂w)."""
    g, dtype = geometry.groups, x.dtype
    x, weight = _working(x), _working(weight)
    plan = Plan(geometry, x.dtype, x.device)
    x_hat = spectrum(x, plan, g)
    y_hat = _products(x_hat, weight, plan, g, adjoint=False)
    (rows, cols), (sh, sw) = geometry.output_size, geometry.stride
    y = image(y_hat, plan, g)[:, :, : sh * (rows - 1) + 1: sh, : sw * (cols - 1) + 1: sw].contiguous().to(dtype)
    if partner is None:
        return y
    return y, _weight(x_hat, _working(partner), plan, geometry).to(dtype)


def correlate_transpose(y: torch.Tensor, weight: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """The adjoint, ``X̂[f] = Ŷ̃[f] · Ĝ[f]ᴴ``, cropped to the image."""
    g, dtype = geometry.groups, y.dtype
    y, weight = _working(y), _working(weight)
    plan = Plan(geometry, y.dtype, y.device)
    y_hat = spectrum(_stretched(y, plan, geometry.stride), plan, g)
    x_hat = _products(y_hat, weight, plan, g, adjoint=True)
    rows, cols = geometry.input_size
    return image(x_hat, plan, g)[:, :, :rows, :cols].contiguous().to(dtype)


def correlate_weight(x: torch.Tensor, y: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """The weight gradient, ``Ŵ[f] = Σ_n Ŷ̃[f]ᴴ · X̂[f]`` (one product per frequency contracts the batch),
    then the inverse transform at the taps' offsets only."""
    dtype = x.dtype
    x, y = _working(x), _working(y)
    plan = Plan(geometry, x.dtype, x.device)
    return _weight(spectrum(x, plan, geometry.groups), y, plan, geometry).to(dtype)


def _weight(x_hat: torch.Tensor, y: torch.Tensor, plan: Plan, geometry: Geometry) -> torch.Tensor:
    g = geometry.groups
    y_hat = spectrum(_stretched(y, plan, geometry.stride), plan, g)
    return _weight_products(y_hat, x_hat, plan, g, geometry.kernel_size)
