"""Bad input: convbook raises what PyTorch raises, with PyTorch's message, before doing any work."""
import pytest
import torch
import torch.nn.functional as F

import convbook
from convbook import checks

D = torch.float64
x = torch.randn(2, 4, 5, 5, dtype=D)
w = torch.randn(6, 2, 3, 3, dtype=D)
wt = torch.randn(4, 3, 3, 3, dtype=D)

CONV2D = {
    "input_of_rank_2": ((torch.randn(4, 5, dtype=D), w), dict(groups=2)),
    "input_of_rank_5": ((torch.randn(1, 2, 4, 5, 5, dtype=D), w), dict(groups=2)),
    "weight_of_rank_3": ((x, torch.randn(6, 2, 3, dtype=D)), dict(groups=2)),
    "channels_do_not_match_weight": ((x, w), {}),
    "channels_do_not_match_weight_unbatched": ((x[0], w), {}),
    "channels_not_divisible_by_groups": ((torch.randn(2, 5, 5, 5, dtype=D), w), dict(groups=2)),
    "out_channels_not_divisible_by_groups": ((x, torch.randn(5, 1, 3, 3, dtype=D)), dict(groups=4)),
    "groups_zero": ((x, w), dict(groups=0)),
    "groups_negative": ((x, w), dict(groups=-1)),
    "bias_of_wrong_length": ((x, w, torch.randn(5, dtype=D)), dict(groups=2)),
    "bias_of_rank_2": ((x, w, torch.randn(6, 1, dtype=D)), dict(groups=2)),
    "input_and_weight_dtypes_differ": ((x, w.float()), dict(groups=2)),
    "bias_dtype_differs": ((x, w, torch.randn(6)), dict(groups=2)),
    "kernel_larger_than_padded_input": ((x, torch.randn(6, 2, 7, 7, dtype=D)), dict(groups=2)),
    "dilated_kernel_larger_than_padded_input": ((x, w), dict(groups=2, dilation=3)),
    "stride_zero": ((x, w), dict(groups=2, stride=0)),
    "stride_negative": ((x, w), dict(groups=2, stride=(1, -1))),
    "padding_negative": ((x, w), dict(groups=2, padding=-1)),
    "unknown_padding_string": ((x, w), dict(groups=2, padding="full")),
    "same_with_stride_2": ((x, w), dict(groups=2, padding="same", stride=2)),
    "stride_with_three_values": ((x, w), dict(groups=2, stride=(1, 1, 1))),
    "padding_with_three_values": ((x, w), dict(groups=2, padding=(1, 1, 1))),
    "zero_sized_spatial_input": ((torch.randn(2, 4, 0, 5, dtype=D), w), dict(groups=2, padding=1)),
    "zero_kernel": ((x, torch.randn(6, 2, 0, 3, dtype=D)), dict(groups=2)),
    "no_output_channels": ((x, torch.randn(0, 4, 3, 3, dtype=D)), {}),
}
CONV_TRANSPOSE2D = {
    "input_of_rank_2": ((torch.randn(4, 5, dtype=D), wt), dict(groups=2)),
    "channels_do_not_match_weight": ((x, torch.randn(3, 3, 3, 3, dtype=D)), {}),
    "in_channels_not_divisible_by_groups": ((x, wt), dict(groups=3)),
    "groups_zero": ((x, wt), dict(groups=0)),
    "bias_of_wrong_length": ((x, wt, torch.randn(5, dtype=D)), dict(groups=2)),
    "input_and_weight_dtypes_differ": ((x, wt.float()), dict(groups=2)),
    "output_padding_not_smaller_than_stride_or_dilation": ((x, wt), dict(groups=2, stride=2, output_padding=2)),
    "output_padding_with_stride_1_and_dilation_1": ((x, wt), dict(groups=2, output_padding=1)),
    "output_padding_negative": ((x, wt), dict(groups=2, output_padding=(0, -1))),
    "output_would_be_negative": ((x, wt), dict(groups=2, padding=5)),
    "output_would_be_empty": ((x[:, :, :4, :4], wt), dict(groups=2, padding=(3, 0))),
    "padding_negative": ((x, wt), dict(groups=2, padding=-1)),
    "stride_zero": ((x, wt), dict(groups=2, stride=0)),
    "padding_string": ((x, wt), dict(groups=2, padding="same")),
    "weight_of_rank_3": ((x, wt[0]), dict(groups=2)),
}
# PyTorch's float32 path words a few of these through oneDNN ("could not create a primitive descriptor");
# its float64 path, used above, gives the readable message that convbook gives for every dtype.


def raised(fn, *args, **kwargs):
    with pytest.raises(Exception) as info:
        fn(*args, **kwargs)
    return type(info.value), str(info.value)


@pytest.mark.parametrize("case", CONV2D, ids=str)
def test_conv2d_rejects_what_pytorch_rejects_with_its_message(case):
    args, kwargs = CONV2D[case]
    assert raised(convbook.conv2d, *args, **kwargs) == raised(F.conv2d, *args, **kwargs)


@pytest.mark.parametrize("case", CONV_TRANSPOSE2D, ids=str)
def test_conv_transpose2d_rejects_what_pytorch_rejects_with_its_message(case):
    args, kwargs = CONV_TRANSPOSE2D[case]
    assert raised(convbook.conv_transpose2d, *args, **kwargs) == raised(F.conv_transpose2d, *args, **kwargs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_dilation_zero_is_refused_with_one_clear_message(dtype):
    """PyTorch's wording here depends on the backend (float32: "non-positive dilation is not
    supported"; float64: "dilation should be greater than zero"); convbook uses the first for all."""
    a, b, bt = x.to(dtype), w.to(dtype), wt.to(dtype)
    for ours, theirs, weight in ((convbook.conv2d, F.conv2d, b), (convbook.conv_transpose2d, F.conv_transpose2d, bt)):
        with pytest.raises(RuntimeError, match="non-positive dilation is not supported"):
            ours(a, weight, groups=2, dilation=0)
        with pytest.raises(RuntimeError):
            theirs(a, weight, groups=2, dilation=0)


MIXED_DTYPES = {
    "bool_input": (torch.bool, torch.bool, None),
    "bool_input_float_weight": (torch.bool, torch.float32, None),
    "float_input_bool_weight": (torch.float32, torch.bool, None),
    "half_input_float_weight": (torch.float16, torch.float32, None),
    "bfloat16_input_half_weight": (torch.bfloat16, torch.float16, None),
    "complex_input_real_weight": (torch.complex64, torch.float32, None),
    "complex128_input_complex64_weight": (torch.complex128, torch.complex64, None),
    "long_input_float_weight": (torch.int64, torch.float32, None),
    "half_input_float_bias": (torch.float16, torch.float16, torch.float32),
    "complex_input_real_bias": (torch.complex64, torch.complex64, torch.float32),
    "int8_input": (torch.int8, torch.int8, None),
    "uint16_input": (torch.uint16, torch.uint16, None),
}


def outcome(fn, *args, **kwargs):
    """What a call gives: its result, or (exception type, message)."""
    try:
        return fn(*args, **kwargs)
    except Exception as error:
        return type(error), str(error)


def assert_same_outcome(ours, theirs):
    """Both refuse with the same exception and message, or both compute the same result."""
    if isinstance(theirs, torch.Tensor) and isinstance(ours, torch.Tensor):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0) if not theirs.is_floating_point() \
            else torch.testing.assert_close(ours, theirs)
    else:
        assert ours == theirs


@pytest.mark.parametrize("case", MIXED_DTYPES, ids=str)
@pytest.mark.parametrize("op", ["conv2d", "conv_transpose2d"])
def test_bool_and_mixed_dtypes_are_refused_with_pytorchs_exception_and_message(op, case):
    """...or accepted where PyTorch accepts them: int8 conv2d, and a half-precision transposed
    convolution with a bias of another dtype on a processor whose oneDNN takes no float16 (PyTorch's
    own kernel then adds the bias into its result)."""
    input_dtype, weight_dtype, bias_dtype = MIXED_DTYPES[case]
    a, b = torch.ones(1, 1, 3, 3).to(input_dtype), torch.ones(1, 1, 2, 2).to(weight_dtype)
    bias = None if bias_dtype is None else torch.ones(1, dtype=bias_dtype)
    ours, theirs = getattr(convbook, op), getattr(F, op)
    assert_same_outcome(outcome(ours, a, b, bias), outcome(theirs, a, b, bias))


WORDINGS = {  # (op, batch, weight dtype, bias dtype, keyword arguments)
    "batch_1_weight": ("conv2d", 1, torch.float64, None, {}),
    "batch_2_weight": ("conv2d", 2, torch.float64, None, {}),
    "batch_1_strided_weight": ("conv2d", 1, torch.float64, None, dict(stride=2)),
    "batch_1_grouped_weight": ("conv2d", 1, torch.float64, None, dict(groups=2)),
    "batch_2_bias": ("conv2d", 2, torch.float32, torch.float64, {}),
    "transposed_batch_1_weight": ("conv_transpose2d", 1, torch.float64, None, {}),
    "transposed_batch_2_weight": ("conv_transpose2d", 2, torch.float64, None, {}),
    "transposed_batch_1_bias": ("conv_transpose2d", 1, torch.float32, torch.float64, {}),
    "transposed_batch_2_bias": ("conv_transpose2d", 2, torch.float32, torch.float64, {}),
    "transposed_batch_1_complex_bias": ("conv_transpose2d", 1, torch.float32, torch.complex64, {}),
    "transposed_big_output_padding_bias": ("conv_transpose2d", 2, torch.float32, torch.float64,
                                           dict(stride=2, dilation=3, output_padding=2)),
}


@pytest.mark.parametrize("case", WORDINGS, ids=str)
def test_a_float32_dtype_mismatch_is_worded_by_the_kernel_pytorch_would_pick(case):
    """PyTorch words a mismatch as the kernel it picks for the call says it (oneDNN: legacy type
    names; its own kernels: scalar types, and no bias check in the transposed one): convbook asks
    :func:`convbook.checks.onednn_takes` and gives the same words."""
    op, batch, weight_dtype, bias_dtype, kwargs = WORDINGS[case]
    a = torch.randn(batch, 2, 4, 4)
    b = torch.randn(2, 1 if kwargs.get("groups") else 2, 2, 2, dtype=weight_dtype)
    bias = None if bias_dtype is None else torch.ones(2, dtype=bias_dtype)
    assert_same_outcome(outcome(getattr(convbook, op), a, b, bias, **kwargs),
                        outcome(getattr(F, op), a, b, bias, **kwargs))


def test_the_wording_cases_reach_both_of_pytorchs_paths():
    taken = {checks.onednn_takes(op, torch.empty(batch, 2, 4, 4), torch.empty(2, 2, 2, 2), **kwargs)
             for op, batch, _, _, kwargs in WORDINGS.values()}
    assert taken == {True, False}


def test_bool_is_refused_like_pytorch_refuses_it():
    a, b = torch.ones(1, 1, 3, 3, dtype=torch.bool), torch.ones(1, 1, 2, 2, dtype=torch.bool)
    with pytest.raises(NotImplementedError):
        F.conv2d(a, b)
    with pytest.raises(NotImplementedError):
        convbook.conv2d(a, b)


MODULES = {
    "unknown_padding_mode": (convbook.Conv2d, torch.nn.Conv2d, dict(padding_mode="mirror")),
    "transposed_reflect_padding": (convbook.ConvTranspose2d, torch.nn.ConvTranspose2d, dict(padding_mode="reflect")),
    "out_channels_not_divisible_by_groups": (convbook.Conv2d, torch.nn.Conv2d, dict(groups=4)),
    "in_channels_not_divisible_by_groups": (convbook.Conv2d, torch.nn.Conv2d, dict(in_channels=5, groups=2)),
    "groups_zero": (convbook.Conv2d, torch.nn.Conv2d, dict(groups=0)),
    "unknown_padding_string": (convbook.Conv2d, torch.nn.Conv2d, dict(padding="full")),
    "same_with_stride_2": (convbook.Conv2d, torch.nn.Conv2d, dict(padding="same", stride=2)),
}


@pytest.mark.parametrize("case", MODULES, ids=str)
def test_modules_reject_what_pytorch_rejects_with_its_message(case):
    mine, theirs, kwargs = MODULES[case]
    args = dict(in_channels=4, out_channels=6, kernel_size=3) | kwargs
    assert raised(mine, **args) == raised(theirs, **args)


def test_circular_padding_that_wraps_twice_is_refused_like_pytorch():
    mine, theirs = convbook.Conv2d(4, 6, 3, padding=6, padding_mode="circular"), torch.nn.Conv2d(4, 6, 3, padding=6, padding_mode="circular")
    assert raised(mine, x.float()) == raised(theirs, x.float())


def test_explicit_backward_rejects_a_grad_output_of_the_wrong_shape():
    with pytest.raises(RuntimeError, match=r"Expected grad_output of size \[2, 6, 3, 3\]"):
        convbook.conv2d_backward(torch.randn(2, 6, 4, 4, dtype=D), x, w, groups=2)


def test_errors_come_before_any_work(monkeypatch):
    """Validation happens up front: no computation starts with bad arguments."""
    from convbook import functional
    for name in ("Correlate", "CorrelateTranspose"):
        monkeypatch.setattr(getattr(functional, name), "apply", lambda *a: pytest.fail("work started"))
    with pytest.raises(RuntimeError, match="non-positive stride"):
        convbook.conv2d(x, w, groups=2, stride=0)
    with pytest.raises(RuntimeError, match="Output size is too small"):
        convbook.conv_transpose2d(x, wt, groups=2, padding=5)
