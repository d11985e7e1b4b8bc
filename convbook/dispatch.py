"""Proof at the dispatcher that no native convolution runs (book §5.4).

:func:`record_aten_ops` records every ATen operator that executes inside its ``with`` block,
forward and backward alike (``TorchDispatchMode`` sees the ops autograd runs too);
:func:`convolution_ops` picks out any of the convolution family.
"""
from __future__ import annotations

import re
from collections import Counter
from contextlib import contextmanager

from torch.utils._python_dispatch import TorchDispatchMode

CONVOLUTION_FAMILY = re.compile(
    r"conv|im2col|col2im|cudnn|mkldnn(?!\._linear_pointwise$)|miopen|nnpack|thnn|slow_conv|xnnpack"
)
"""Operator names of native convolutions and their im2col/col2im helpers (``aten.convolution``,
``aten.conv2d``, ``aten._convolution``, ``aten.convolution_backward``, ``aten.mkldnn_convolution``,
``mkldnn._convolution_pointwise``, ``aten.cudnn_convolution``, ``aten._slow_conv2d_forward``,
``aten.thnn_conv2d``, ``aten.im2col``, ``aten.col2im``, ...) -- every oneDNN (``mkldnn``) operator but
one: ``mkldnn._linear_pointwise``, oneDNN's inner product ``x · wᵀ`` (the kernel of ``nn.Linear``), is a
matrix product, and :mod:`convbook.products` multiplies with it (wide products, and the ``channels_last``
strategy's)."""


class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


@contextmanager
def record_aten_ops():
    """``with record_aten_ops() as ops:`` -- afterwards ``ops`` counts every ATen op that ran."""
    recorder = _Recorder()
    with recorder:
        yield recorder.ops


def convolution_ops(ops) -> list[str]:
    """The recorded operators that belong to the convolution family (convbook's own custom
    operators, ``convbook.*``, used under ``torch.compile``, are not native convolutions)."""
    return sorted(name for name in ops
                  if not name.startswith("convbook.") and CONVOLUTION_FAMILY.search(name.removeprefix("aten.")))
