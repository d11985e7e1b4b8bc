"""Argument checks, done up front and worded as PyTorch words them.

Every function here either returns normalised arguments or raises the exception type PyTorch
raises for the same mistake, with PyTorch's message, so that users recognise it.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .index_map import Geometry, Pair, conv_output_size, conv_transpose_output_size, same_padding

FLOATING_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
COMPLEX_DTYPES = (torch.complex32, torch.complex64, torch.complex128)
SUPPORTED_DTYPES = {
    "conv2d": (*FLOATING_DTYPES, *COMPLEX_DTYPES, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64),
    "conv_transpose2d": (*FLOATING_DTYPES, *COMPLEX_DTYPES, torch.int64),
}
"""The dtypes PyTorch (2.x, CPU) convolves, per op; gradients exist for the floating and complex ones.
A *dilated* conv2d takes only the dtypes of conv_transpose2d."""

NATIVE_KERNEL = {"conv2d": "slow_conv2d_cpu", "conv_transpose2d": "slow_conv_transpose2d_out_cpu"}
"""The kernel PyTorch names when it refuses a dtype."""


def check(condition: bool, message: str, error: type[Exception] = RuntimeError) -> None:
    """Raise ``error(message)`` unless ``condition`` holds (cf. ``torch._check``)."""
    if not condition:
        raise error(message)


def pair(value: int | Sequence[int], name: str, op: str) -> Pair:
    """An int or a sequence of one or two ints, as a pair (rows, columns)."""
    values = [value] if isinstance(value, int) else list(value) if isinstance(value, Sequence) else None
    check(values is not None and all(isinstance(v, int) and not isinstance(v, bool) for v in values),
          f"{op}(): argument '{name}' must be tuple of ints, not {type(value).__name__}", TypeError)
    check(len(values) in (1, 2),
          f"expected {name} to be a single integer value or a list of 2 values to match the "
          f"convolution dimensions, but got {name}={values}")
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def _shape(tensor: torch.Tensor) -> list[int]:
    return list(tensor.shape)


def check_tensors(op: str, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  stride=1, dilation=1, groups=1, output_padding=0) -> None:
    """Rank, dtype and dtype agreement of the operands, in PyTorch's order and words: an input
    dtype PyTorch cannot convolve first, then a weight, then a bias of another dtype.

    PyTorch words a dtype mismatch by the kernel it picked for the call (:func:`onednn_takes`), so
    the hyperparameters come along; a transposed convolution's own kernel does not compare the
    bias's dtype at all -- it adds the bias into the result, and refuses only a bias whose dtype the
    result cannot be cast to."""
    check(input.dim() in (3, 4), f"Expected 3D (unbatched) or 4D (batched) input to {op}, "
                                 f"but got input of size: {_shape(input)}")
    check(input.dtype in SUPPORTED_DTYPES[op],
          f'"{NATIVE_KERNEL[op]}" not implemented for \'{_scalar_name(input.dtype)}\'', NotImplementedError)
    if input.dtype == weight.dtype and (bias is None or bias.dtype == input.dtype):
        return
    onednn = onednn_takes(op, input, weight, stride, dilation, groups, output_padding)
    check(input.dtype == weight.dtype, _mismatch_message(input, weight, "weight", onednn))
    check(op == "conv_transpose2d",
          f"Input type ({_type_name(input.dtype)}) and bias type ({_type_name(bias.dtype)}) should be the same")
    check(not (onednn or input.dtype.is_complex), _mismatch_message(input, bias, "bias", onednn))
    promoted = torch.promote_types(input.dtype, bias.dtype)
    check(torch.can_cast(promoted, input.dtype),
          f"result type {_scalar_name(promoted)} can't be cast to the desired output type {_scalar_name(input.dtype)}")


def onednn_takes(op: str, input: torch.Tensor, weight: torch.Tensor, stride=1, dilation=1, groups=1,
                 output_padding=0) -> bool:
    """Whether PyTorch's CPU convolution hands this call to oneDNN (``ConvParams::use_mkldnn`` in ATen's
    Convolution.cpp) -- which decides only how PyTorch words a dtype mismatch, since convbook computes
    every call the same way. Half precision goes there where the processor supports it (bfloat16 needs
    AVX-512 BW/VL/DQ, float16 AVX-512-FP16 or AMX-FP16: the same call is worded differently on
    different machines); float32 by a size heuristic; a transposed call whose output padding is not
    smaller than its stride never. Arguments that are not valid ints count as their defaults here
    (their own check refuses them afterwards)."""
    if input.device.type != "cpu" or not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return False
    stride, dilation, output_padding = _loose_pair(stride, 1), _loose_pair(dilation, 1), _loose_pair(output_padding, 0)
    if op == "conv_transpose2d" and any(a >= s for a, s in zip(output_padding, stride)):
        return False
    if input.dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if input.dtype == torch.float16:
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    if input.dtype != torch.float32 or weight.dim() < 2:
        return False
    shape = list(input.shape) if input.dim() == 4 else [1, *input.shape]
    (kh, kw), groups = weight.shape[-2:], groups if isinstance(groups, int) else 1
    strided, dilated = stride != (1, 1), dilation != (1, 1)
    return ((strided or dilated or shape[0] >= 16 or kw != 1 or kh != 1 or torch.get_num_threads() > 1)
            and (groups > 1 or (kw > 3 and kh > 3) or shape[0] > 1 or math.prod(shape) > 20480))


def _loose_pair(value, neutral: int) -> Pair:
    """``value`` as a pair where it is a valid int or sequence of one or two ints, else (neutral, neutral)."""
    values = [value] if isinstance(value, int) else list(value) if isinstance(value, Sequence) else []
    if len(values) not in (1, 2) or not all(isinstance(v, int) for v in values):
        return (neutral, neutral)
    return (values[0], values[-1])


def _mismatch_message(input: torch.Tensor, other: torch.Tensor, name: str, onednn: bool) -> str:
    """PyTorch's words for ``other`` (weight or bias) of another dtype than ``input``: its complex
    path and oneDNN compare legacy type names, its own kernels scalar types."""
    if not (onednn or input.dtype.is_complex):
        return f"expected scalar type {_scalar_name(input.dtype)} but found {_scalar_name(other.dtype)}"
    message = f"Input type ({_legacy_type_name(input)}) and {name} type ({_legacy_type_name(other)}) should be the same"
    if input.dtype.is_complex:
        return message
    return message + f" or input should be a MKLDNN tensor and {name} is a dense tensor"


_SCALAR_NAMES = {torch.float32: "Float", torch.float64: "Double", torch.float16: "Half", torch.bfloat16: "BFloat16",
                 torch.int64: "Long", torch.int32: "Int", torch.int16: "Short", torch.int8: "Char",
                 torch.uint8: "Byte", torch.uint16: "UInt16", torch.uint32: "UInt32", torch.uint64: "UInt64",
                 torch.bool: "Bool", torch.complex32: "ComplexHalf",
                 torch.complex64: "ComplexFloat", torch.complex128: "ComplexDouble"}


def _scalar_name(dtype: torch.dtype) -> str:
    return _SCALAR_NAMES.get(dtype, str(dtype).removeprefix("torch.").capitalize())


def _legacy_type_name(tensor: torch.Tensor) -> str:
    """``torch.HalfTensor`` for the dtypes that have a legacy tensor type, ``CPUBFloat16Type`` otherwise."""
    name = _scalar_name(tensor.dtype)
    if tensor.dtype in (torch.float16, torch.float32, torch.float64, torch.int64, torch.int32, torch.int16,
                        torch.int8, torch.uint8):
        return f"torch.{'' if tensor.device.type == 'cpu' else tensor.device.type + '.'}{name}Tensor"
    return f"{tensor.device.type.upper()}{name}Type"


def _type_name(dtype: torch.dtype) -> str:
    return {torch.float32: "float", torch.float64: "double", torch.float16: "c10::Half",
            torch.bfloat16: "c10::BFloat16", torch.int64: "long int", torch.int32: "int", torch.int16: "short int",
            torch.int8: "signed char", torch.uint8: "unsigned char", torch.bool: "bool",
            torch.complex32: "c10::complex<c10::Half>", torch.complex64: "c10::complex<float>",
            torch.complex128: "c10::complex<double>"}.get(dtype, str(dtype))


def check_hyperparameters(stride: Pair, padding: Pair, dilation: Pair, groups: int,
                          output_padding: Pair = (0, 0)) -> None:
    check(min(padding) >= 0, "negative padding is not supported")
    check(min(output_padding) >= 0, "negative output_padding is not supported")
    check(min(stride) > 0, "non-positive stride is not supported")
    check(min(dilation) > 0, "non-positive dilation is not supported")
    check(isinstance(groups, int) and not isinstance(groups, bool),
          f"argument 'groups' must be int, not {type(groups).__name__}", TypeError)
    check(groups > 0, "non-positive groups is not supported")


def check_weight(input4: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, groups: int,
                 transposed: bool) -> None:
    """Shapes of weight and bias against input and groups (input4 is batched)."""
    check(weight.dim() == 4,
          f"expected stride to be a single integer value or a list of {weight.dim() - 2} values to "
          f"match the convolution dimensions, but got stride=[1, 1]")
    w = _shape(weight)
    check(w[0] >= groups, f"Given groups={groups}, expected weight to be at least {groups} at "
                          f"dimension 0, but got weight of size {w} instead")
    check(w[0] % groups == 0, f"Given groups={groups}, expected weight to be divisible by {groups} at "
                              f"dimension 0, but got weight of size [{w}] instead")
    check(min(w[2:]) > 0, f"kernel size should be greater than zero, but got kernel_height: {w[2]} "
                          f"kernel_width: {w[3]}")
    if transposed:
        expected_channels, out_channels, prefix = w[0], w[1] * groups, "Given transposed=1, weight"
    else:
        expected_channels, out_channels, prefix = w[1] * groups, w[0], "Given weight"
    check(input4.shape[1] == expected_channels,
          f"Given {'transposed=1' if transposed else f'groups={groups}'}, weight of size {w}, expected "
          f"input{_shape(input4)} to have {expected_channels} channels, but got {input4.shape[1]} "
          f"channels instead")
    if bias is not None:
        check(bias.dim() == 1 and bias.shape[0] == out_channels,
              f"{prefix} of size {w}, expected bias to be 1-dimensional with "
              f"{out_channels} elements, but got bias of size {_shape(bias)} instead")


def check_nonempty_image(input4: torch.Tensor) -> None:
    check(input4.shape[0] == 0 or input4.shape[1] == 0 or min(input4.shape[2:]) > 0,
          f"Only zero batch or zero channel inputs are supported, but got input shape: {_shape(input4)}")


def conv2d_geometry(input4: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    stride, padding, dilation, groups) -> Geometry:
    """Check the arguments of ``conv2d`` and return its geometry (x = input, y = output)."""
    stride, dilation = pair(stride, "stride", "conv2d"), pair(dilation, "dilation", "conv2d")
    if isinstance(padding, str):
        check(padding in ("valid", "same"), f"Invalid padding string: '{padding}'")
        check(padding == "valid" or stride == (1, 1),
              "padding='same' is not supported for strided convolutions")
    check_hyperparameters(stride, (0, 0) if isinstance(padding, str) else pair(padding, "padding", "conv2d"),
                          dilation, groups)
    check_weight(input4, weight, bias, groups, transposed=False)
    kernel = tuple(weight.shape[2:])
    if padding == "same":
        pads = [same_padding(k, d) for k, d in zip(kernel, dilation)]
    elif padding == "valid":
        pads = [(0, 0), (0, 0)]
    else:
        pads = [(p, p) for p in pair(padding, "padding", "conv2d")]
    size = tuple(input4.shape[2:])
    padded = [h + before + after for h, (before, after) in zip(size, pads)]
    effective = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
    check(all(e <= p for e, p in zip(effective, padded)),
          f"Calculated padded input size per channel: ({padded[0]} x {padded[1]}). Kernel size: "
          f"({effective[0]} x {effective[1]}). Kernel size can't be greater than actual input size")
    check_nonempty_image(input4)
    check(dilation == (1, 1) or input4.dtype in SUPPORTED_DTYPES["conv_transpose2d"],
          f'"slow_conv_dilated<>" not implemented for \'{_scalar_name(input4.dtype)}\'', NotImplementedError)
    out = tuple(conv_output_size(h, k, s, pad, d) for h, k, s, pad, d in zip(size, kernel, stride, pads, dilation))
    return Geometry(kernel, stride, (pads[0][0], pads[1][0]), dilation, groups, size, out)


def conv_transpose2d_geometry(input4: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                              stride, padding, output_padding, groups, dilation) -> Geometry:
    """Check the arguments of ``conv_transpose2d`` and return its geometry.

    The transposed convolution is the adjoint of a convolution whose *output* has the size of
    the transposed input: so y = input and x = the (larger) result.
    """
    op = "conv_transpose2d"
    check(not isinstance(padding, str), f"{op}(): argument 'padding' must be tuple of ints, not str", TypeError)
    stride, padding = pair(stride, "stride", op), pair(padding, "padding", op)
    output_padding, dilation = pair(output_padding, "output_padding", op), pair(dilation, "dilation", op)
    check_hyperparameters(stride, padding, dilation, groups, output_padding)
    check_weight(input4, weight, bias, groups, transposed=True)
    check_nonempty_image(input4)
    check(all(a < s or a < d for a, s, d in zip(output_padding, stride, dilation)),
          "output padding must be smaller than either stride or dilation, but got "
          f"output_padding_height: {output_padding[0]} output_padding_width: {output_padding[1]} "
          f"stride_height: {stride[0]} stride_width: {stride[1]} dilation_height: {dilation[0]} "
          f"dilation_width: {dilation[1]}")
    kernel = tuple(weight.shape[2:])
    size = tuple(input4.shape[2:])
    out = tuple(conv_transpose_output_size(h, k, s, p, d, a) for h, k, s, p, d, a in
                zip(size, kernel, stride, padding, dilation, output_padding))
    check(min(out) > 0, f"Given input size per channel: ({size[0]} x {size[1]}). Calculated output "
                        f"size per channel: ({out[0]} x {out[1]}). Output size is too small")
    return Geometry(kernel, stride, padding, dilation, groups, out, size)


def check_grad_output(grad_output: torch.Tensor, expected: torch.Size, dtype: torch.dtype) -> None:
    check(grad_output.shape == expected,
          f"Expected grad_output of size {list(expected)}, but got grad_output of size {_shape(grad_output)}")
    check(grad_output.dtype == dtype,
          f"expected scalar type {_scalar_name(dtype)} but found {_scalar_name(grad_output.dtype)}")


def shape_geometry(op: str, input_shape, weight_shape, stride=1, padding=0, dilation=1, groups=1,
                   output_padding=0) -> Geometry:
    """The geometry of a ``conv2d`` or ``conv_transpose2d`` call given by shapes alone (checked as the
    call would be; the operands are ``meta`` tensors, nothing is allocated)."""
    shape = tuple(input_shape) if len(input_shape) == 4 else (1, *input_shape)
    large, weight = torch.empty(shape, device="meta"), torch.empty(tuple(weight_shape), device="meta")
    if op == "conv2d":
        return conv2d_geometry(large, weight, None, stride, padding, dilation, groups)
    if op == "conv_transpose2d":
        return conv_transpose2d_geometry(large, weight, None, stride, padding, output_padding, groups, dilation)
    raise ValueError(f"op must be 'conv2d' or 'conv_transpose2d', not {op!r}")
