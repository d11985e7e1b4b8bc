"""Random sweeps (book chapter 5): convbook equals PyTorch on configurations nobody chose by hand."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from convbook.compare import operands
from convbook.index_map import conv_transpose_output_size
from convbook.sweep import (MAX_SUMMED_TERMS, compare_config, exact_dtype, random_configs, run_sweep, summed_terms,
                            sweep_operands)

COUNT = 60
DTYPES = [torch.float64, torch.float32]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: a second thread costs more than it saves (ten times, on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pair(value):
    return (value, value) if isinstance(value, int) else tuple(value)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_random_sweep_of_conv2d_matches_pytorch(dtype):
    sweep = run_sweep("conv2d", COUNT, dtype, seed=1)   # asserts every tensor at TOLERANCE[dtype]
    assert len(sweep) == COUNT


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_random_sweep_of_conv_transpose2d_matches_pytorch(dtype):
    sweep = run_sweep("conv_transpose2d", COUNT, dtype, seed=1)
    assert len(sweep) == COUNT


def test_float64_sweep_is_within_1e_12_of_pytorch_for_every_tensor():
    for op in ("conv2d", "conv_transpose2d"):
        for result in run_sweep(op, COUNT, torch.float64, seed=2):
            assert all(e.max_abs <= 1e-12 for e in result.errors.values()), result.config


@pytest.mark.parametrize("op", ["conv2d", "conv_transpose2d"])
def test_random_configs_are_all_valid_for_pytorch(op):
    reference = {"conv2d": F.conv2d, "conv_transpose2d": F.conv_transpose2d}[op]
    for config in random_configs(op, 200, seed=3):
        kwargs = config["kwargs"]
        input, weight, bias = operands(op, config["input_shape"], config["weight_shape"], config["bias"],
                                       groups=kwargs["groups"])
        output = reference(input, weight, bias, **kwargs)          # raises if PyTorch rejects it
        assert summed_terms(output.shape) <= MAX_SUMMED_TERMS
        assert len(config["input_shape"]) in (3, 4)
        assert all(1 <= size <= 9 for size in config["input_shape"][-2:])
        assert all(1 <= k <= 4 for k in config["weight_shape"][2:])
        if op == "conv_transpose2d":
            stride, dilation = (pair(kwargs[k]) for k in ("stride", "dilation"))
            assert all(a < max(s, d) for a, s, d in zip(kwargs["output_padding"], stride, dilation))
            assert tuple(output.shape[-2:]) == tuple(
                conv_transpose_output_size(h, k, s, p, d, a) for h, k, s, p, d, a in zip(
                    config["input_shape"][-2:], config["weight_shape"][2:], stride,
                    pair(kwargs["padding"]), dilation, kwargs["output_padding"]))


@pytest.mark.parametrize("op", ["conv2d", "conv_transpose2d"])
def test_random_configs_include_the_corner_cases(op):
    configs = list(random_configs(op, 300, seed=4))
    kwargs = [c["kwargs"] for c in configs]
    assert any(len(c["input_shape"]) == 3 for c in configs), "unbatched input"
    assert any(c["input_shape"][0] == 0 for c in configs if len(c["input_shape"]) == 4), "empty batch"
    assert any(not c["bias"] for c in configs) and any(c["bias"] for c in configs)
    assert any(k["groups"] > 1 for k in kwargs), "groups"
    channel = -3
    assert any(k["groups"] > 1 and c["input_shape"][channel] == k["groups"] for c, k in zip(configs, kwargs)), \
        "depthwise"
    assert any(c["weight_shape"][2] != c["weight_shape"][3] for c in configs), "non-square kernel"
    assert {1, 2, 3} <= {s for k in kwargs for s in pair(k["stride"])}
    assert {1, 2, 3} <= {d for k in kwargs for d in pair(k["dilation"])}
    if op == "conv2d":
        assert {"same", "valid"} <= {k["padding"] for k in kwargs if isinstance(k["padding"], str)}
    else:
        assert any(max(k["output_padding"]) > 0 for k in kwargs), "output_padding"


def test_random_configs_are_reproducible_from_the_seed():
    assert list(random_configs("conv2d", 20, seed=5)) == list(random_configs("conv2d", 20, seed=5))
    assert list(random_configs("conv2d", 20, seed=5)) != list(random_configs("conv2d", 20, seed=6))


NEW_COUNT = 20


@pytest.mark.parametrize("op", ["conv2d", "conv_transpose2d"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.complex64, torch.complex128], ids=str)
def test_random_sweep_of_the_other_dtypes_matches_the_exact_answer(op, dtype):
    # seed 2, not 1: seed 1 draws a float16 conv2d on which PyTorch's own CPU kernel (the reference) crashes
    # the process -- input (3, 9, 4, 1), weight (3, 3, 4, 1), bias, stride 3, dilation (2, 3), groups 3, padding 2
    sweep = run_sweep(op, NEW_COUNT, dtype, seed=2)   # asserts every tensor against the exact answer
    assert len(sweep) == NEW_COUNT
    assert all(set(r.errors) >= {"output", "grad_input", "grad_weight"} for r in sweep)
    if dtype == torch.complex128:
        assert all(e.max_abs <= 1e-12 for r in sweep for e in r.errors.values())


@pytest.mark.parametrize("op", ["conv2d", "conv_transpose2d"])
def test_int64_sweep_is_forward_only_and_exactly_equal_to_pytorch(op):
    sweep = run_sweep(op, NEW_COUNT, torch.int64, seed=1)
    assert all(set(r.errors) == {"output"} for r in sweep)
    assert all(r.errors["output"].max_abs == 0 and r.errors_to_exact["output"].max_abs == 0 for r in sweep)


def test_the_exact_answer_of_a_complex_sweep_keeps_the_imaginary_part():
    assert exact_dtype(torch.complex64) == exact_dtype(torch.complex128) == torch.complex128
    assert exact_dtype(torch.float16) == exact_dtype(torch.bfloat16) == exact_dtype(torch.int64) == torch.float64
    config = next(random_configs("conv2d", 1, seed=7))
    result = compare_config("conv2d", config, torch.complex64, seed=7)
    # a real exact answer would be off by the whole imaginary part, far beyond the complex64 tolerance
    assert all(e.max_abs < 1e-4 for e in result.errors_to_exact.values())


def test_int64_operands_are_small_integers():
    config = next(random_configs("conv2d", 1, seed=8))
    tensors = [t for t in sweep_operands("conv2d", config, torch.int64, seed=8) if t is not None]
    assert all(t.dtype == torch.int64 and -3 <= t.min() and t.max() <= 3 for t in tensors)
