"""The batched matrix product the strategies multiply with (book chapter 7).

``bmm(a, b, out)`` writes ``out[i] = a[i] · b[i]`` for stacks of matrices (B, M, K) · (B, K, N). It is
``torch.bmm`` -- MKL's product on the CPU -- except for a *wide* product: one whose matrices have at least
:data:`WIDE` columns in one of the operands, on the CPU in float32. Those run on oneDNN's inner product,
``torch.ops.mkldnn._linear_pointwise(input, weight) = input · weightᵀ``, the kernel of ``nn.Linear``: a
matrix product like ``torch.bmm``, not a convolution (it is the one oneDNN operator the dispatcher guard of
:mod:`convbook.dispatch` lets through). It is called once per matrix, as ``a[i] · (b[i]ᵀ)ᵀ``, with b[i]
passed transposed as it lies -- oneDNN reads a weight of any strides -- and its result copied into out[i].

Where the positions of an image are many, MKL multiplies the few rows of a weight by them slowly: the
stem of ResNet-18 (7 × 7, stride 2, 3 → 64 channels, 112 × 112 outputs) multiplies 64 × 147 by
147 × 12 544 at 75-130 GFLOP/s, while oneDNN's inner product runs the same matrices at 130-190 (measured
on the machine of chapter 7; both exact to float32 rounding). On the shapes of the other benchmark layers
(at most 3 136 positions per image) it was no faster in place, and on the 1 × 1 layer's small products
slower, so only wide products take it.
"""
from __future__ import annotations

import torch

WIDE = 8192
"""The fewest columns (N of b, or K of a) that make a product *wide*. Measured in place on the benchmark
layers (paired rounds, oneDNN/MKL): the stem's forward (N = 12 544) 0.78-0.80, its weight gradient
(K = 12 544) 0.87, its training step 0.88-0.93; layers of 3 136 positions or fewer 0.93-1.65."""


try:
    _INNER_PRODUCT = torch.ops.mkldnn._linear_pointwise
except (AttributeError, RuntimeError):        # a PyTorch built without oneDNN
    _INNER_PRODUCT = None


def _inner_product_applies(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> bool:
    return (max(a.shape[-1], b.shape[-1]) >= WIDE and a.shape[0] > 0 and _INNER_PRODUCT is not None
            and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in (a, b, out))
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)


def bmm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out[i] = a[i] · b[i]`` for a (B, M, K), b (B, K, N) into out (B, M, N); returns out.

    A wide product (:data:`WIDE`) in float32 on the CPU is one oneDNN inner product per matrix,
    ``out[i] = a[i] · (b[i]ᵀ)ᵀ``; a shared a (stride 0 over the batch: one weight for every image) is laid
    out once. Everything else is ``torch.bmm``."""
    if not _inner_product_applies(a, b, out):
        return torch.bmm(a, b, out=out)
    shared = a[0].contiguous() if a.stride(0) == 0 else None
    for i in range(a.shape[0]):
        rows = shared if shared is not None else a[i].contiguous()
        out[i].copy_(_INNER_PRODUCT(rows, b[i].transpose(0, 1), None, "none", [], ""))
    return out
