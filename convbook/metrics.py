"""Error measures for "convbook equals PyTorch" claims (book §2.6).

For a result a and PyTorch's reference e (same shape)::

* MSE  = mean (a − e)²            * MAE = mean |a − e|
* max abs = max |a − e|           * max rel = max |a − e| / max |e|   (normwise, as in Higham)

The relative error is normwise, not elementwise: elements of e near zero (cancellation) would
make an elementwise ratio meaningless.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class Errors:
    mse: float
    mae: float
    max_abs: float
    max_rel: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def errors(actual: torch.Tensor, expected: torch.Tensor) -> Errors:
    """The four error measures of ``actual`` against ``expected``, computed in float64
    (complex128 for complex tensors: ``|a − e|`` is then the modulus of the complex difference)."""
    if actual.shape != expected.shape:
        raise ValueError(f"shapes differ: {tuple(actual.shape)} vs {tuple(expected.shape)}")
    if expected.numel() == 0:
        return Errors(0.0, 0.0, 0.0, 0.0)
    wide = torch.complex128 if actual.is_complex() or expected.is_complex() else torch.float64
    a, e = actual.detach().to(wide), expected.detach().to(wide)
    diff = (a - e).abs()
    scale = e.abs().max().item()
    max_abs = diff.max().item()
    return Errors(mse=diff.square().mean().item(), mae=diff.mean().item(), max_abs=max_abs,
                  max_rel=max_abs / scale if scale > 0 else max_abs)


def worst(rows: list[Errors]) -> Errors:
    """Field-wise maximum over many comparisons."""
    return Errors(*(max(getattr(r, f) for r in rows) for f in ("mse", "mae", "max_abs", "max_rel")))


TOLERANCE = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=1.3e-6, atol=1e-5),
             torch.complex128: dict(rtol=1e-12, atol=1e-12), torch.complex64: dict(rtol=1.3e-6, atol=1e-5),
             torch.float16: dict(rtol=1e-3, atol=1e-5), torch.bfloat16: dict(rtol=1.6e-2, atol=1e-5)}
"""The tolerances the book states -- float64 and complex128 to 1e-12 at unit scale; float32,
complex64, float16 and bfloat16 at torch.testing's defaults for that dtype."""
