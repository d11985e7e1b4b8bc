"""``Conv2d`` and ``ConvTranspose2d``: ``torch.nn``'s modules with convbook's convolution.

They subclass ``torch.nn.Conv2d`` / ``torch.nn.ConvTranspose2d`` and replace only the call to the
convolution, so parameters, initialisation, ``state_dict``, ``repr`` and argument checks are
PyTorch's own, bit for bit.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .functional import conv2d, conv_transpose2d
from .index_map import output_padding_for_size

__all__ = ["Conv2d", "ConvTranspose2d"]


class Conv2d(torch.nn.Conv2d):
    """Drop-in for ``torch.nn.Conv2d`` computed by :func:`convbook.conv2d`.

    Padding modes other than ``'zeros'`` pad the input with ``F.pad`` first (``reflect``,
    ``replicate``, ``circular``) and then convolve without padding, as PyTorch does.
    """

    def _conv_forward(self, input, weight, bias):
        if self.padding_mode != "zeros":
            padded = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return conv2d(padded, weight, bias, self.stride, 0, self.dilation, self.groups)
        return conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class ConvTranspose2d(torch.nn.ConvTranspose2d):
    """Drop-in for ``torch.nn.ConvTranspose2d`` computed by :func:`convbook.conv_transpose2d`.

    ``forward(input, output_size)`` picks ``output_padding`` by eq. (4.4), as PyTorch does.
    """

    def forward(self, input, output_size=None):
        if self.padding_mode != "zeros":
            raise ValueError("Only `zeros` padding mode is supported for ConvTranspose2d")
        output_padding = self.output_padding if output_size is None else output_padding_for_size(
            output_size, tuple(input.shape), self.kernel_size, self.stride, self.padding, self.dilation)
        return conv_transpose2d(input, self.weight, self.bias, self.stride, self.padding, output_padding,
                                self.groups, self.dilation)
