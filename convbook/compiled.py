"""The three contractions of :mod:`convbook.kernels` as opaque custom operators, for torch.compile.

``torch.compile`` traces Python; the kernels keep per-thread scratch buffers
(:mod:`convbook.workspace`) and pick a strategy at run time, which a trace must not freeze. While
Dynamo traces, :mod:`convbook.autograd` therefore calls ``torch.ops.convbook.correlate``,
``correlate_transpose`` and ``correlate_weight`` instead: each runs the eager kernel, and its
*fake* version gives only the result's shape -- from the geometry, eqs. (1.3) and (4.2) -- so the
compiled graph holds three opaque calls, never a native convolution.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from . import kernels
from .index_map import Geometry


def _encode(geometry: Geometry) -> list[int]:
    g = geometry
    return [*g.kernel_size, *g.stride, *g.padding, *g.dilation, g.groups, *g.input_size, *g.output_size]


def _decode(v: list[int]) -> Geometry:
    return Geometry((v[0], v[1]), (v[2], v[3]), (v[4], v[5]), (v[6], v[7]), v[8], (v[9], v[10]), (v[11], v[12]))


def _custom_op(name: str, result_shape: Callable[[torch.Tensor, torch.Tensor, Geometry], tuple[int, ...]]):
    """``convbook::<name>``: runs ``kernels.<name>``; its fake version makes an empty result of
    ``result_shape(first, second, geometry)``."""
    @torch.library.custom_op(f"convbook::{name}", mutates_args=())
    def op(first: torch.Tensor, second: torch.Tensor, geometry: list[int]) -> torch.Tensor:
        return getattr(kernels, name)(first, second, _decode(geometry)).contiguous()

    @op.register_fake
    def _(first, second, geometry):
        return first.new_empty(result_shape(first, second, _decode(geometry)))
    return op


_OPS = {
    # y (N, O, H_out, W_out) from x and w, eq. (1.3)
    "correlate": _custom_op("correlate", lambda x, w, g: (x.shape[0], w.shape[0], *g.output_size)),
    # x (N, C, H, W) from y and w (C_in, C_out / groups, kH, kW), eq. (4.2)
    "correlate_transpose": _custom_op("correlate_transpose",
                                      lambda y, w, g: (y.shape[0], w.shape[1] * g.groups, *g.input_size)),
    # w (O, C / groups, kH, kW) from x and y
    "correlate_weight": _custom_op("correlate_weight",
                                   lambda x, y, g: (y.shape[1], x.shape[1] // g.groups, *g.kernel_size)),
}


def contraction(name: str) -> Callable[[torch.Tensor, torch.Tensor, Geometry], torch.Tensor]:
    """The custom operator for ``kernels.<name>``, called like the kernel (geometry as a Geometry)."""
    op = _OPS[name]
    return lambda a, b, geometry: op(a, b, _encode(geometry))
