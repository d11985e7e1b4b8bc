"""convbook: PyTorch's Conv2d and ConvTranspose2d, derived and rebuilt from basic tensor operations.

The public API mirrors ``torch.nn.functional`` and ``torch.nn``::

    conv2d, conv_transpose2d                      # forward
    conv2d_backward, conv_transpose2d_backward    # hand-derived backward, functions of grad_output
    Conv2d, ConvTranspose2d                       # modules
"""
from .functional import conv2d, conv2d_backward, conv_transpose2d, conv_transpose2d_backward
from .modules import Conv2d, ConvTranspose2d
from .strategies import explain  # which fast strategy each contraction of a call uses, and why

__all__ = ["conv2d", "conv_transpose2d", "conv2d_backward", "conv_transpose2d_backward",
           "Conv2d", "ConvTranspose2d"]
__version__ = "0.1.0"
