"""The oracle: run convbook and PyTorch on the same inputs and measure how far apart they are.

One helper serves the tests and the book's comparison tables alike: it builds seeded random
operands, runs the forward of both libraries, back-propagates the same random ``grad_output``
through both, and returns the :class:`~convbook.metrics.Errors` of the output and of the three
gradients.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import functional
from .metrics import Errors, errors

OPS = {"conv2d": (functional.conv2d, F.conv2d), "conv_transpose2d": (functional.conv_transpose2d, F.conv_transpose2d)}
FIELDS = ("output", "grad_input", "grad_weight", "grad_bias")


def operands(op: str, input_shape, weight_shape, bias: bool = True, dtype=torch.float64, seed: int = 0,
             groups: int = 1, device="cpu"):
    """Seeded standard-normal (input, weight, bias) for ``op``; bias has one entry per output channel."""
    generator = torch.Generator().manual_seed(seed)
    make = lambda *shape: torch.randn(*shape, generator=generator, dtype=dtype).to(device)  # noqa: E731
    input, weight = make(*input_shape), make(*weight_shape)
    out_channels = weight_shape[0] if op == "conv2d" else weight_shape[1] * groups
    return input, weight, (make(out_channels) if bias else None)


def grad_output_like(output: torch.Tensor, seed: int) -> torch.Tensor:
    """The seeded random ``grad_output`` back-propagated through both libraries: standard normal of
    ``output``'s shape and dtype, drawn from ``seed + 1`` (the operands come from ``seed``)."""
    generator = torch.Generator().manual_seed(seed + 1)
    return torch.randn(output.shape, generator=generator, dtype=output.dtype).to(output.device)


def run_both(op: str, input, weight, bias=None, seed: int = 0, **kwargs) -> dict[str, tuple]:
    """{field: (convbook's tensor, PyTorch's tensor)} for the output and the three gradients."""
    ours, theirs = OPS[op]
    results = {}
    grad_output = None
    for name, fn in (("convbook", ours), ("torch", theirs)):
        leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (input, weight, bias)]
        out = fn(*leaves, **kwargs)
        if grad_output is None:
            grad_output = grad_output_like(out, seed)
        wanted = [t for t in leaves if t is not None]
        grads = list(torch.autograd.grad(out, wanted, grad_output)) + [None] * (3 - len(wanted))
        results[name] = dict(zip(FIELDS, [out.detach(), *grads]))
    return {f: (results["convbook"][f], results["torch"][f]) for f in FIELDS if results["torch"][f] is not None}


def compare(op: str, input, weight, bias=None, seed: int = 0, **kwargs) -> dict[str, Errors]:
    """{field: Errors} of convbook against PyTorch for the output and each gradient."""
    return {field: errors(mine, ref) for field, (mine, ref) in run_both(op, input, weight, bias, seed, **kwargs).items()}


def markdown_table(rows: dict[str, dict[str, Errors]]) -> str:
    """A markdown table, one row per (case, field), with MSE, MAE, max abs and max rel error."""
    lines = ["| case | tensor | MSE | MAE | max abs | max rel |", "|---|---|---|---|---|---|"]
    for case, fields in rows.items():
        for field, e in fields.items():
            lines.append(f"| {case} | {field} | {e.mse:.2e} | {e.mae:.2e} | {e.max_abs:.2e} | {e.max_rel:.2e} |")
    return "\n".join(lines)
