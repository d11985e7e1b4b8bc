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


@torch.library.custom_op("convbook::correlate", mutates_args=())
def correlate(x: torch.Tensor, weight: torch.Tensor, geometry: list[int]) -> torch.Tensor:
    return kernels.correlate(x, weight, _decode(geometry)).contiguous()


@correlate.register_fake
def _(x, weight, geometry):
    return x.new_empty(x.shape[0], weight.shape[0], *_decode(geometry).output_size)


@torch.library.custom_op("convbook::correlate_transpose", mutates_args=())
def correlate_transpose(y: torch.Tensor, weight: torch.Tensor, geometry: list[int]) -> torch.Tensor:
    return kernels.correlate_transpose(y, weight, _decode(geometry)).contiguous()


@correlate_transpose.register_fake
def _(y, weight, geometry):
    g = _decode(geometry)
    return y.new_empty(y.shape[0], weight.shape[1] * g.groups, *g.input_size)


@torch.library.custom_op("convbook::correlate_weight", mutates_args=())
def correlate_weight(x: torch.Tensor, y: torch.Tensor, geometry: list[int]) -> torch.Tensor:
    return kernels.correlate_weight(x, y, _decode(geometry)).contiguous()


@correlate_weight.register_fake
def _(x, y, geometry):
    g = _decode(geometry)
    return x.new_empty(y.shape[1], x.shape[1] // g.groups, *g.kernel_size)


_OPS = {"correlate": correlate, "correlate_transpose": correlate_transpose, "correlate_weight": correlate_weight}


def contraction(name: str) -> Callable[[torch.Tensor, torch.Tensor, Geometry], torch.Tensor]:
    """The custom operator for ``kernels.<name>``, called like the kernel (geometry as a Geometry)."""
    op = _OPS[name]
    return lambda a, b, geometry: op(a, b, _encode(geometry))
