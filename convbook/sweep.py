"""Random configurations of both convolutions, and a sweep of the oracle over them (book chapter 5).

:func:`random_configs` draws shapes and keyword arguments the way a fuzzer would -- batch 0 to 3
(occasionally 0, occasionally an unbatched 3-D input), channels with groups dividing them
(depthwise included), kernels 1 to 4 (not necessarily square), stride 1 to 3, dilation 1 to 3,
padding as an int, a pair or (conv2d at stride 1) ``'same'`` / ``'valid'``, ``output_padding``
below max(stride, dilation) for the transposed convolution, bias or not -- and keeps only what
PyTorch itself accepts. :func:`run_sweep` measures convbook against PyTorch on each one.
"""
from __future__ import annotations

import random
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .compare import FIELDS, OPS, grad_output_like, operands
from .index_map import conv_transpose_output_size, effective_kernel_size
from .metrics import TOLERANCE, Errors, errors

Config = dict
"""``{"input_shape", "weight_shape", "bias", "kwargs"}``; ``kwargs`` (groups included) go to the op."""

MAX_SIZE = 9
"""Largest input height or width drawn."""

MAX_SUMMED_TERMS = 3 * MAX_SIZE * MAX_SIZE
"""Longest sum a gradient may take (batch 3 of 9 × 9 outputs). The transposed convolution's output
is larger than its input, so this bound is what keeps its sweep as small as conv2d's; past a few
hundred unit-normal terms, two correct float32 summation orders differ by more than
torch.testing's default ``atol`` (book chapter 5, "The reference for float32", shows it with
PyTorch alone)."""


def _spatial(rng: random.Random) -> int | tuple[int, int]:
    """A stride or dilation in 1..3: an int (same for rows and columns) or a pair."""
    return rng.randint(1, 3) if rng.random() < 0.4 else (rng.randint(1, 3), rng.randint(1, 3))


def _as_pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else value


def _channels(rng: random.Random) -> tuple[int, int, int]:
    """(in_channels, out_channels, groups) with groups dividing both; one draw in five depthwise."""
    groups = rng.choice((1, 1, 2, 3))
    if rng.random() < 0.2:
        in_per_group = 1                      # depthwise: one input channel per group
        groups = rng.randint(1, 4)
    else:
        in_per_group = rng.randint(1, 3)
    return groups * in_per_group, groups * rng.randint(1, 3), groups


def _draw(rng: random.Random, op: str) -> Config:
    """One configuration; it may still be one PyTorch rejects (the caller checks)."""
    in_channels, out_channels, groups = _channels(rng)
    kernel = (rng.randint(1, 4), rng.randint(1, 4))
    stride, dilation = _spatial(rng), _spatial(rng)
    strides, dilations = _as_pair(stride), _as_pair(dilation)
    kwargs = dict(stride=stride, dilation=dilation, groups=groups)
    if op == "conv2d":
        if strides == (1, 1) and rng.random() < 0.3:
            kwargs["padding"] = rng.choice(("same", "valid"))
            pads = [(0, 0)] * 2 if kwargs["padding"] == "valid" else [
                (d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for k, d in zip(kernel, dilations)]
        else:
            padding = rng.randint(0, 2) if rng.random() < 0.4 else (rng.randint(0, 2), rng.randint(0, 2))
            kwargs["padding"] = padding
            pads = [(p, p) for p in _as_pair(padding)]
        # the padded input must hold the dilated kernel, eq. (1.2)
        sizes = [rng.randint(max(1, min(MAX_SIZE, effective_kernel_size(k, d) - before - after)), MAX_SIZE)
                 for k, d, (before, after) in zip(kernel, dilations, pads)]
        weight_shape = (out_channels, in_channels // groups, *kernel)
    else:
        padding = rng.randint(0, 2) if rng.random() < 0.4 else (rng.randint(0, 2), rng.randint(0, 2))
        output_padding = tuple(rng.randrange(max(s, d)) for s, d in zip(strides, dilations))
        kwargs.update(padding=padding, output_padding=output_padding)
        # the output size, eq. (4.2), must be positive: grow the input until it is
        sizes = []
        for k, s, p, d, a in zip(kernel, strides, _as_pair(padding), dilations, output_padding):
            size = rng.randint(1, MAX_SIZE)
            while conv_transpose_output_size(size, k, s, p, d, a) <= 0 and size < MAX_SIZE:
                size += 1
            sizes.append(size)
        weight_shape = (in_channels, out_channels // groups, *kernel)
    batch = 0 if rng.random() < 0.05 else rng.randint(1, 3)
    unbatched = batch > 0 and rng.random() < 0.1
    input_shape = (in_channels, *sizes) if unbatched else (batch, in_channels, *sizes)
    return dict(input_shape=input_shape, weight_shape=weight_shape, bias=rng.random() < 0.7, kwargs=kwargs)


@contextmanager
def quiet_same_padding():
    """Silence PyTorch's note that ``padding='same'`` with an even kernel copies the input."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Using padding='same' with even kernel lengths", UserWarning)
        yield


def pytorch_output_shape(op: str, config: Config) -> torch.Size | None:
    """The shape of PyTorch's own ``F.conv2d`` / ``F.conv_transpose2d`` result on ``config``, or
    None where PyTorch rejects the configuration."""
    reference = OPS[op][1]
    input, weight, bias = operands(op, config["input_shape"], config["weight_shape"], config["bias"],
                                   groups=config["kwargs"]["groups"])
    try:
        with quiet_same_padding():
            return reference(input, weight, bias, **config["kwargs"]).shape
    except (RuntimeError, ValueError):
        return None


def summed_terms(output_shape: torch.Size) -> int:
    """Terms in the longest sum of the backward: the bias gradient adds up ``N·H_out·W_out`` values
    of ``grad_output`` per channel (eq. 3.2), and the weight gradient as many products (eq. 3.3)."""
    return output_shape[-1] * output_shape[-2] * (output_shape[0] if len(output_shape) == 4 else 1)


def random_configs(op: str, count: int, seed: int = 0) -> Iterator[Config]:
    """``count`` random configurations of ``op`` (``'conv2d'`` or ``'conv_transpose2d'``), each
    accepted by PyTorch and with no gradient summing more than :data:`MAX_SUMMED_TERMS` terms;
    any other draw is replaced by a fresh one."""
    if op not in ("conv2d", "conv_transpose2d"):
        raise ValueError(f"unknown op {op!r}")
    rng = random.Random(seed)
    produced = 0
    while produced < count:
        config = _draw(rng, op)
        output_shape = pytorch_output_shape(op, config)
        if output_shape is not None and summed_terms(output_shape) <= MAX_SUMMED_TERMS:
            produced += 1
            yield config


def results(fn, input, weight, bias, grad_output, **kwargs) -> dict[str, torch.Tensor]:
    """{field: tensor}: the output of ``fn`` and the gradients that ``grad_output`` back-propagates
    to input, weight and (where there is one) bias."""
    leaves = [t.detach().clone().requires_grad_() for t in (input, weight, bias) if t is not None]
    output = fn(*leaves, *([None] if bias is None else []), **kwargs)
    return dict(zip(FIELDS, [output.detach(), *torch.autograd.grad(output, leaves, grad_output)]))


NEW_DTYPES = (torch.float16, torch.bfloat16, torch.complex64, torch.complex128, torch.int64)
"""The dtypes beyond float64 and float32 that the book sweeps (fewer configurations each); int64 has
a forward only, as in PyTorch (integer tensors have no gradients)."""


def is_integer(dtype: torch.dtype) -> bool:
    return not (dtype.is_floating_point or dtype.is_complex)


def exact_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the exact answer: complex128 for complex dtypes (``double()`` would drop the
    imaginary part), float64 for every other."""
    return torch.complex128 if dtype.is_complex else torch.float64


def tolerance(dtype: torch.dtype) -> dict[str, float]:
    """:data:`convbook.metrics.TOLERANCE` for ``dtype``; integers must be exact (rtol = atol = 0)."""
    return dict(rtol=0.0, atol=0.0) if is_integer(dtype) else TOLERANCE[dtype]


def sweep_operands(op: str, config: Config, dtype: torch.dtype = torch.float64, seed: int = 0):
    """Seeded (input, weight, bias) for ``config``: standard normal (complex normal for complex
    dtypes) as in :func:`convbook.compare.operands`, small integers in -3..3 for integer dtypes."""
    if not is_integer(dtype):
        return operands(op, config["input_shape"], config["weight_shape"], config["bias"], dtype,
                        seed=seed, groups=config["kwargs"]["groups"])
    generator = torch.Generator().manual_seed(seed)
    make = lambda *shape: torch.randint(-3, 4, shape, generator=generator, dtype=dtype)  # noqa: E731
    weight_shape = config["weight_shape"]
    out_channels = weight_shape[0] if op == "conv2d" else weight_shape[1] * config["kwargs"]["groups"]
    return make(*config["input_shape"]), make(*weight_shape), (make(out_channels) if config["bias"] else None)


@dataclass(frozen=True)
class SweepResult:
    """One configuration of a sweep and how far convbook is from PyTorch and from the exact answer.

    ``errors``: convbook against PyTorch in the same dtype (what :func:`convbook.compare.compare`
    measures). ``errors_to_exact`` and ``torch_errors_to_exact``: convbook's and PyTorch's results
    against the *exact* answer, PyTorch's float64 (complex128 for complex dtypes) computation on the
    very same operands rounded to the sweep's dtype (in float64 and complex128 the exact answer is
    PyTorch's own result). For integer dtypes only the output is compared.
    """

    config: Config
    errors: dict[str, Errors]
    errors_to_exact: dict[str, Errors]
    torch_errors_to_exact: dict[str, Errors]


def run_sweep(op: str, count: int, dtype: torch.dtype = torch.float64, seed: int = 0,
              check: bool = True) -> list[SweepResult]:
    """Compare convbook with PyTorch on ``count`` random configurations of ``op``, forward and the
    three gradients (the forward only for integer dtypes), with seeded unit-normal input, weight,
    bias and ``grad_output`` (integers in -3..3 for integer dtypes).

    With ``check``, every tensor of convbook must pass ``torch.testing.assert_close`` against the
    exact answer at the book's tolerance :func:`tolerance` for ``dtype``: in float64 and complex128
    against PyTorch's result, in the other dtypes against PyTorch's float64 (complex128) result on
    the same operands, rounded to ``dtype``; integers exactly. The AssertionError names the
    configuration and the tensor.
    """
    with quiet_same_padding():
        return [compare_config(op, config, dtype, seed + number, check)
                for number, config in enumerate(random_configs(op, count, seed))]


def compare_config(op: str, config: Config, dtype: torch.dtype = torch.float64, seed: int = 0,
                   check: bool = True) -> SweepResult:
    """One configuration of :func:`run_sweep`: operands drawn from ``seed``, ``grad_output`` from ``seed + 1``."""
    ours, theirs = OPS[op]
    kwargs = config["kwargs"]
    input, weight, bias = sweep_operands(op, config, dtype, seed)
    if is_integer(dtype):                                   # no gradients: the output only
        mine, reference = ({"output": fn(input, weight, bias, **kwargs)} for fn in (ours, theirs))
        wide = (None if t is None else t.to(exact_dtype(dtype)) for t in (input, weight, bias))
        exact = {"output": theirs(*wide, **kwargs)}
    else:
        grad_output = grad_output_like(theirs(input, weight, bias, **kwargs), seed)
        mine, reference = (results(fn, input, weight, bias, grad_output, **kwargs) for fn in (ours, theirs))
        exact = results(theirs, *(None if t is None else t.to(exact_dtype(dtype))
                                  for t in (input, weight, bias, grad_output)), **kwargs)
    exact = {field: tensor.to(dtype) for field, tensor in exact.items()}
    if check:
        for field in mine:
            torch.testing.assert_close(mine[field], exact[field], **tolerance(dtype),
                                       msg=lambda message, f=field: f"{op} {f} of {config}: {message}")
    measure = lambda actual, expected: {f: errors(actual[f], expected[f]) for f in mine}  # noqa: E731
    return SweepResult(config, measure(mine, reference), measure(mine, exact), measure(reference, exact))
