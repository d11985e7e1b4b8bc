"""The one comparison helper of the test suite: convbook against PyTorch, output and all gradients."""
from __future__ import annotations

import torch

from convbook.compare import operands, run_both
from convbook.metrics import errors


def assert_close_to_torch(mine: torch.Tensor, ref: torch.Tensor, what: str = "") -> None:
    """float64: max abs error ≤ 1e-12 relative to the result's scale (inputs are unit-normal);
    float32 (and others): ``torch.testing.assert_close`` at its defaults."""
    assert mine.shape == ref.shape, f"{what}: shape {tuple(mine.shape)} != {tuple(ref.shape)}"
    assert mine.dtype == ref.dtype, f"{what}: dtype {mine.dtype} != {ref.dtype}"
    if ref.dtype == torch.float64:
        e = errors(mine, ref)
        scale = max(1.0, ref.abs().max().item()) if ref.numel() else 1.0
        assert e.max_abs <= 1e-12 * scale, f"{what}: {e}"
    else:
        torch.testing.assert_close(mine, ref, msg=lambda m: f"{what}: {m}")


def check_against_torch(op: str, input_shape, weight_shape, bias=True, dtype=torch.float64, seed=0,
                        prepare=None, **kwargs):
    """Run ``op`` in convbook and PyTorch on the same seeded operands; compare the output and the
    gradients of input, weight and bias. ``prepare`` may transform the operands first (e.g. make
    them channels_last or non-contiguous). Returns the pairs for further checks."""
    x, w, b = operands(op, input_shape, weight_shape, bias, dtype, seed, kwargs.get("groups", 1))
    if prepare is not None:
        x, w = prepare(x), prepare(w)
    pairs = run_both(op, x, w, b, seed, **kwargs)
    for field, (mine, ref) in pairs.items():
        assert_close_to_torch(mine, ref, f"{op} {field} {kwargs}")
    return pairs
