"""The matrix products the strategies multiply with (book chapter 7, *Wide products* and *Channels last*).

``linear(x, w) = x · wᵀ`` is oneDNN's inner product in float32 on the CPU (``torch.mm`` otherwise): the
product of the ``channels_last`` strategy, whose column matrix has one row per position.

``bmm(a, b, out)`` writes ``out[i] = a[i] · b[i]`` for stacks of matrices (B, M, K) · (B, K, N). It is
``torch.bmm`` -- MKL's product on the CPU -- except for a *wide* product in float32 on the CPU: one with
at least :data:`WIDE` columns (N ≥ WIDE, or a contraction K ≥ WIDE) whose a is no taller than it is deep
(M ≤ K). Those run on oneDNN's inner product, ``torch.ops.mkldnn._linear_pointwise(input, weight) =
input · weightᵀ``, the kernel of ``nn.Linear``: a matrix product like ``torch.bmm``, not a convolution (the
one oneDNN operator the dispatcher guard of :mod:`convbook.dispatch` lets through). It is called once per
matrix as ``a[i] · (b[i]ᵀ)ᵀ``, b[i] passed transposed as it lies -- oneDNN reads a weight of any strides --
and its result is copied into out[i].

Measured on the machine of chapter 7: the stem of ResNet-18 (7 × 7, stride 2, 3 → 64 channels,
112 × 112 outputs) multiplies 64 × 147 by 147 × 12 544; MKL ran that at 70-150 GFLOP/s from minute to
minute, oneDNN's inner product at 130-200. In place, in paired rounds, the stem's forward took 0.78-0.83 of
its time with ``torch.bmm``, its training step 0.88-0.93. The input gradient's product Wᵀ·G (147 × 64 by
64 × 12 544, a taller than deep) was no faster on it (0.95-1.18 of the time), nor were the products of the
benchmark's other layers, at most 3 136 positions per image (0.88-1.65), so they stay with ``torch.bmm``.
"""
from __future__ import annotations

import torch

WIDE = 8192
"""The fewest columns -- N, the positions of an image in a forward product, or K, the positions a weight
gradient contracts -- that make a product *wide* (the stem's 12 544 are; 3 136, the most of any other
benchmark layer, are not)."""


try:
    _INNER_PRODUCT = torch.ops.mkldnn._linear_pointwise
except (AttributeError, RuntimeError):        # a PyTorch built without oneDNN
    _INNER_PRODUCT = None


def _on_onednn(*tensors: torch.Tensor) -> bool:
    """Whether oneDNN's inner product can multiply these: float32 on the CPU, oneDNN built and enabled."""
    return (_INNER_PRODUCT is not None and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors))


def linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``x · wᵀ`` for x (M, K) and w (N, K), a fresh (M, N) tensor: oneDNN's inner product (the kernel of
    ``nn.Linear``) in float32 on the CPU, which reads w in any strides; ``torch.mm`` otherwise."""
    if _on_onednn(x, w):
        return _INNER_PRODUCT(x.contiguous(), w, None, "none", [], "")
    return torch.mm(x, w.t())


def _inner_product_applies(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> bool:
    (rows, depth), width = a.shape[-2:], b.shape[-1]
    return max(depth, width) >= WIDE and rows <= depth and a.shape[0] > 0 and _on_onednn(a, b, out)


def bmm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out[i] = a[i] · b[i]`` for a (B, M, K), b (B, K, N) into out (B, M, N); returns out.

    A wide product (:data:`WIDE`, M ≤ K) in float32 on the CPU is one oneDNN inner product per matrix,
    ``out[i] = a[i] · (b[i]ᵀ)ᵀ`` (:func:`linear`); a shared a (stride 0 over the batch: one weight for every
    image) is laid out once. Everything else is ``torch.bmm``."""
    if not _inner_product_applies(a, b, out):
        return torch.bmm(a, b, out=out)
    shared = a[0].contiguous() if a.stride(0) == 0 else None
    for i in range(a.shape[0]):
        out[i].copy_(linear(shared if shared is not None else a[i], b[i].transpose(0, 1)))
    return out
