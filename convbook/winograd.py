"""Winograd's minimal filtering F(2 × 2, 3 × 3), forward and weight gradient (book chapter 7, *Fewer multiplications*).

A 2 × 2 tile of outputs of a 3 × 3 correlation at stride 1 is computed from the 4 × 4 tile ``d`` of the
padded input under it with 16 multiplications instead of 36 (eq. perf-winograd)::

    Y_tile[n, o] = Aᵀ M[n, o] A,   M[ξ, ν] = U[ξ, ν] · V[ξ, ν],
    U[ξ, ν][o, c] = (G w[o, c] Gᵀ)_{ξν},   V[ξ, ν][c, t] = (Bᵀ d[n, c, t] B)_{ξν},

16 matrix products ``(O × C) · (C × tiles)``, one per entry (ξ, ν) of the transformed tile. The weight
gradient is the adjoint of the same chain (eq. perf-winograd-weight): with ``Ȳ = ∂L/∂y`` on the same
tiles, ``∂L/∂M = A Ȳ Aᵀ``, ``∂L/∂U[ξ, ν] = Σ_t (∂L/∂M)[ξ, ν] · V[ξ, ν]ᵀ`` and ``∂L/∂w = Gᵀ (∂L/∂U) G``.
The input gradient at stride 1 is itself a correlation (the padded ∂L/∂y with the flipped kernel), so the
dispatcher's ``phase`` adjoint gives it to the forward here; with a partner the two products share
the transformed tiles of ∂L/∂y (``strategies.correlate_winograd``).

Dilation ``d`` splits the padded input into d_h·d_w interleaved sub-images (rows ``d·r + a``), on each of
which the dilated 3 × 3 correlation is an undilated one; here they are one more view dimension of the
same tensors, not a loop. Groups are one more batch dimension of the products. The transforms are
sums of strided views (the entries of Bᵀ, Aᵀ and G are 0, ±1 and ±½, so a transformed entry is a sum
of at most three, exact up to one rounding per addition).
"""
from __future__ import annotations

import torch

from . import workspace
from .index_map import Geometry

B_T = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))
G = ((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1))
A_T = ((1, 1, 1, 0), (0, 1, -1, -1))

BLOCK = 1 << 21
"""Entries of V (or M) in one block of images, at most (8 MiB of float32), and at most twice the largest
operand: the transformed tiles are four times the input, so the layer is transformed and multiplied a
few images at a time, which keeps the peak memory of a training step within three times PyTorch's
(``r18_64_56``: 2 images a block, ``r18_256_14``: 4)."""


def fits(geometry: Geometry) -> bool:
    """Whether F(2 × 2, 3 × 3) computes this correlation: a 3 × 3 kernel at stride 1 (any dilation,
    padding and groups)."""
    return geometry.kernel_size == (3, 3) and geometry.stride == (1, 1)


def tiles(geometry: Geometry) -> tuple[int, int]:
    """(t_h, t_w): tiles down and across each of the d_h·d_w sub-images, ``⌈⌈H_out / d⌉ / 2⌉``."""
    return tuple(-(-(-(-size // d)) // 2) for size, d in zip(geometry.output_size, geometry.dilation))


def extent(geometry: Geometry) -> tuple[int, int]:
    """Rows and columns of padded input the tiles read: ``d·(2t + 2)`` (a multiple of d, so that the
    sub-images are a view)."""
    return tuple(d * (2 * t + 2) for t, d in zip(tiles(geometry), geometry.dilation))


def image_blocks(batch: int, per_image: int, largest: int):
    """(n0, n1) blocks of images with at most ``min(BLOCK, 2·largest)`` transformed entries (``per_image``
    each; ``largest``: the most entries of any operand or result), one image at least; a multiple of the
    thread count where more fit, spread evenly."""
    return workspace.image_chunks(batch, min(BLOCK, 2 * largest) // max(1, per_image))


def _rows(coefficients, parts: list[torch.Tensor], out: torch.Tensor) -> torch.Tensor:
    """``out = Σ_k coefficients[k]·parts[k]`` for a row of Bᵀ or Aᵀ (two or three entries ±1) or of
    Aᵀ's transpose A (one or two): one ``add``/``sub`` per term after the first."""
    terms = [(c, p) for c, p in zip(coefficients, parts) if c != 0]
    (c0, p0), rest = terms[0], terms[1:]
    if not rest:
        return torch.mul(p0, c0, out=out) if c0 != 1 else out.copy_(p0)
    (c1, p1), rest = rest[0], rest[1:]
    if c0 == 1:
        torch.add(p0, p1, alpha=c1, out=out)
    elif c1 == 1:
        torch.add(p1, p0, alpha=c0, out=out)
    else:
        torch.add(p0, p1, alpha=c1 / c0, out=out).mul_(c0)
    for c, p in rest:
        out.add_(p, alpha=c)
    return out


def parts(images: int, u_entries: int, v_entries: int) -> int:
    """Into how many parts a block of ``images`` is split, one per thread (``workspace.thread_parts``):
    each thread then transforms, multiplies and transforms back its own images, and reads only what it
    wrote itself (chapter 7, *The machine*). The products repeat U once per part, so a block is split only
    where U is small next to the block's tiles (at most a quarter of V); otherwise it is one part."""
    return workspace.thread_parts(images) if 4 * u_entries <= v_entries else 1


def _sub_images(padded: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """(n, c, d_h, d_w, R, Q): the interleaved sub-images ``P[a, b][r, q] = padded[d_h·r + a, d_w·q + b]``."""
    (dh, dw), (rows, cols) = geometry.dilation, extent(geometry)
    return padded[:, :, :rows, :cols].unflatten(3, (cols // dw, dw)).unflatten(2, (rows // dh, dh)).permute(0, 1, 3, 5, 2, 4)


def input_transform(padded: torch.Tensor, geometry: Geometry, parts: int) -> torch.Tensor:
    """V (parts, 16, C, T) in a reused buffer, T = (images of the part, d_h, d_w, t_h, t_w):
    ``V[ξ, ν][c, t] = (Bᵀ d[n, c, t] B)_{ξν}`` for the 4 × 4 tiles at stride 2 of the sub-images of
    ``padded`` (the input padded to :func:`extent`): the rows of every tile first, one operation per row ξ of
    Bᵀ, then its columns, one operation per column ν for all four ξ at once."""
    n, c = padded.shape[:2]
    (dh, dw), (th, tw) = geometry.dilation, tiles(geometry)
    sub = _sub_images(padded, geometry)
    rows = [sub[..., k::2, :][..., :th, :].unflatten(0, (parts, -1)) for k in range(4)]
    stage = workspace.buffer("winograd_stage", (parts, 4, n // parts, c, dh, dw, th, sub.shape[-1]),
                             padded.dtype, padded.device)
    for xi in range(4):
        _rows(B_T[xi], rows, stage[:, xi])
    v = workspace.buffer("winograd_V", (parts, 4, 4, c, n // parts, dh, dw, th, tw), padded.dtype, padded.device)
    cols = [stage[..., k::2][..., :tw] for k in range(4)]               # (parts, ξ, images, c, ...)
    for nu in range(4):
        _rows(B_T[nu], cols, v[:, :, nu].transpose(2, 3))
    return v.view(parts, 16, c, -1)


def _g_kron_g(like: torch.Tensor) -> torch.Tensor:
    """G ⊗ G (16 × 9), in the dtype and on the device of ``like``: ``(G w Gᵀ)_{ξν} = Σ_{uv} (G ⊗ G)[(ξ,ν), (u,v)] w[u, v]``."""
    g = torch.tensor(G, dtype=like.dtype, device=like.device)
    return torch.kron(g, g)


def weight_transform(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """U (16·g, O_g, C_g): ``U[ξ, ν][o, c] = (G w[o, c] Gᵀ)_{ξν}``, as one product with G ⊗ G."""
    o, cg = weight.shape[:2]
    return torch.mm(_g_kron_g(weight), weight.reshape(o * cg, 9).t()).view(16 * groups, o // groups, cg)


def weight_transform_adjoint(grad_u: torch.Tensor) -> torch.Tensor:
    """∂L/∂w (O, C_g, 3, 3), a fresh contiguous tensor, from ∂L/∂U (16, O, C_g): ``Gᵀ (∂L/∂U)[o, c] G``."""
    o, cg = grad_u.shape[1:]
    return torch.mm(grad_u.reshape(16, o * cg).t(), _g_kron_g(grad_u)).view(o, cg, 3, 3)


def products(u: torch.Tensor, v: torch.Tensor, groups: int) -> torch.Tensor:
    """M (parts, 16, O, T) in a reused buffer: ``M[ξ, ν] = U[ξ, ν] · V[ξ, ν]``, part by part and group by
    group, one batched product (U repeated for each part, so that each thread multiplies its own part)."""
    parts, c, width = v.shape[0], v.shape[2], v.shape[3]
    og, cg = u.shape[1], u.shape[2]
    if parts > 1:
        u = u.expand(parts, *u.shape).reshape(parts * 16 * groups, og, cg)
    m = workspace.buffer("winograd_M", (parts, 16, groups * og, width), v.dtype, v.device)
    torch.bmm(u, v.view(parts * 16 * groups, cg, width), out=m.view(parts * 16 * groups, og, width))
    return m


def _output_tiles(y: torch.Tensor, geometry: Geometry, parts: int) -> torch.Tensor | None:
    """y (n, o, H_out, W_out) as the view (a, b, parts, o, images of the part, d_h, d_w, t_h, t_w) of its outputs
    at row ``d_h·(2t + a) + a'`` and column ``d_w·(2t' + b) + b'`` -- or None where the tiles overhang y."""
    (dh, dw), (th, tw) = geometry.dilation, tiles(geometry)
    if y.shape[2:] != (2 * th * dh, 2 * tw * dw):
        return None
    grid = y.unflatten(3, (tw, 2, dw)).unflatten(2, (th, 2, dh)).unflatten(0, (parts, -1))
    return grid.permute(4, 7, 0, 2, 1, 5, 8, 3, 6)


def output_transform(m: torch.Tensor, geometry: Geometry, y: torch.Tensor) -> None:
    """Write y (n, o, H_out, W_out) from M (parts, 16, O, T): ``Y_tile = Aᵀ M A``, the rows a of every tile
    first (for all columns ν at once), then its columns b (for both rows at once)."""
    n, o = y.shape[:2]
    parts = m.shape[0]
    (dh, dw), (th, tw) = geometry.dilation, tiles(geometry)
    m = m.view(parts, 4, 4, o, n // parts, dh, dw, th, tw)
    stage = workspace.buffer("winograd_stage", (parts, 2, 4, o, n // parts, dh, dw, th, tw), m.dtype, m.device)
    for a in range(2):
        _rows(A_T[a], [m[:, xi] for xi in range(4)], stage[:, a])
    target = _output_tiles(y, geometry, parts)
    full = None
    if target is None:
        full = workspace.buffer("winograd_out", (n, o, 2 * th * dh, 2 * tw * dw), m.dtype, m.device)
        target = _output_tiles(full, geometry, parts)
    for b in range(2):
        _rows(A_T[b], [stage[:, :, nu].transpose(0, 1) for nu in range(4)], target[:, b])
    if full is not None:
        y.copy_(full[:, :, :y.shape[2], :y.shape[3]])


def grad_transform(grad: torch.Tensor, geometry: Geometry, parts: int) -> torch.Tensor:
    """∂L/∂M (parts, 16, O, T) in a reused buffer from ∂L/∂y (n, o, H_out, W_out): ``A Ȳ_tile Aᵀ`` on the
    output tiles of :func:`output_transform` (outputs past the edge read as zeros)."""
    n, o = grad.shape[:2]
    (dh, dw), (th, tw) = geometry.dilation, tiles(geometry)
    source = _output_tiles(grad, geometry, parts)
    if source is None:
        full = workspace.buffer("winograd_out", (n, o, 2 * th * dh, 2 * tw * dw), grad.dtype, grad.device)
        full.zero_()
        full[:, :, :grad.shape[2], :grad.shape[3]].copy_(grad)
        source = _output_tiles(full, geometry, parts)
    a_cols = list(zip(*A_T))                                           # A = (Aᵀ)ᵀ: 4 rows of 2
    shape = (parts, o, n // parts, dh, dw, th, tw)
    stage = workspace.buffer("winograd_stage", (parts, 4, 2, *shape[1:]), grad.dtype, grad.device)
    for xi in range(4):                                                # Σ_a A[ξ, a] Ȳ[a, b], both b at once
        _rows(a_cols[xi], [source[a].transpose(0, 1) for a in range(2)], stage[:, xi])
    out = workspace.buffer("winograd_M", (parts, 4, 4, *shape[1:]), grad.dtype, grad.device)
    for nu in range(4):                                                # Σ_b A[ν, b] (·)[ξ, b], all ξ at once
        _rows(a_cols[nu], [stage[:, :, b] for b in range(2)], out[:, :, nu])
    return out.view(parts, 16, o, -1)


def weight_products(grad_m: torch.Tensor, v: torch.Tensor, groups: int, total: torch.Tensor | None = None) -> torch.Tensor:
    """∂L/∂U (16, O, C_g) = Σ_parts Σ_t ∂L/∂M[ξ, ν] · V[ξ, ν]ᵀ, part by part and group by group: a fresh
    tensor, or added to ``total`` (the sum over the blocks before) in place."""
    parts, o, width = grad_m.shape[0], grad_m.shape[2], grad_m.shape[3]
    cg = v.shape[2] // groups
    a = grad_m.view(parts * 16 * groups, o // groups, width)
    b = v.view(parts * 16 * groups, cg, width).transpose(1, 2)
    if parts == 1 and total is not None:
        total.view(16 * groups, o // groups, cg).baddbmm_(a, b)
        return total
    out = grad_m.new_empty(parts, 16, o, cg)
    torch.bmm(a, b, out=out.view(parts * 16 * groups, o // groups, cg))
    if parts == 1:
        return out[0]
    return torch.sum(out, 0) if total is None else total.add_(out.sum(0))
