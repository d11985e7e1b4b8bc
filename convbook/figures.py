"""The book's figures, drawn from the code they illustrate.

Every position in a picture comes from :mod:`convbook.index_map` (or from running convbook
itself), never from coordinates typed by hand, so a figure cannot disagree with the formulas.
The drawing style follows Dumoulin & Visin's guide: input cells blue, padding cells white and
dashed, the window of one output position dark, the output grid green beside it.

Every function returns a :class:`matplotlib.figure.Figure`; drawn cells carry a ``gid``
(``"input"``, ``"padding"``, ``"window"``, ``"output"``, ``"selected"``) so that tests can read
the picture back.
"""
from __future__ import annotations

from itertools import product

import torch
import torch.nn.functional as F

from .index_map import Geometry, Pair, conv_output_size, window

INPUT, PADDING, WINDOW, OUTPUT, SELECTED = "#a6cee3", "white", "#1f4e79", "#b2df8a", "#33a02c"


def _cell(ax, row: float, col: float, color: str, gid: str, **style) -> None:
    """One unit square with its top-left corner at (row, col); rows grow downwards."""
    from matplotlib.patches import Rectangle

    ax.add_patch(Rectangle((col, row), 1, 1, facecolor=color, edgecolor="black", gid=gid, **style))


def _padding_pair(padding: int | Pair) -> Pair:
    """``padding`` as (before, after)."""
    return (padding, padding) if isinstance(padding, int) else tuple(padding)


def window_panel(ax, size: int, kernel_size: int, stride: int = 1, padding: int | Pair = 0, dilation: int = 1,
                 out: Pair = (0, 0), title: str | None = None) -> None:
    """Draw, on ``ax``, the padded input of a ``size`` × ``size`` image, the window read by output
    position ``out`` (cells from :func:`~convbook.index_map.window`, eq. 1.1, each labelled with its
    tap ``u,v``) and, to the right, the output grid of eq. (1.3) with ``out`` highlighted.

    ``padding`` is one number for both sides or a pair (before, after), the same for rows and columns.
    """
    before, after = _padding_pair(padding)
    for h, w in product(range(-before, size + after), repeat=2):
        inside = 0 <= h < size and 0 <= w < size
        _cell(ax, h, w, INPUT if inside else PADDING, "input" if inside else "padding",
              linestyle="-" if inside else "--", linewidth=0.8)
    rows = window(out[0], kernel_size, stride, before, dilation)
    cols = window(out[1], kernel_size, stride, before, dilation)
    for (u, h), (v, w) in product(enumerate(rows), enumerate(cols)):
        _cell(ax, h, w, WINDOW, "window", alpha=0.75, linewidth=1.2)
        ax.text(w + 0.5, h + 0.5, f"{u},{v}", ha="center", va="center", color="white", fontsize=7)
    output_size = conv_output_size(size, kernel_size, stride, (before, after), dilation)
    left = size + after + 1.5
    top = -before + (size + before + after - output_size) / 2
    for i, j in product(range(output_size), repeat=2):
        chosen = (i, j) == tuple(out)
        _cell(ax, top + i, left + j, SELECTED if chosen else OUTPUT, "selected" if chosen else "output", linewidth=0.8)
    ax.annotate("", xy=(left - 0.1, top + out[0] + 0.5), xytext=(size + after + 0.1, top + out[0] + 0.5),
                arrowprops=dict(arrowstyle="<-", color="gray"))
    ax.set_xlim(-before - 0.3, left + output_size + 0.3)
    ax.set_ylim(size + after + 0.3, -before - 0.3)
    ax.set_aspect("equal")
    ax.axis("off")
    if title is None:
        title = (f"k={kernel_size}, s={stride}, p={padding}, d={dilation}\n"
                 f"H={size} → H_out={output_size}; window of (i,j)={tuple(out)}")
    ax.set_title(title, fontsize=9)


def window_figure(size: int, kernel_size: int, stride: int = 1, padding: int | Pair = 0, dilation: int = 1,
                  out: Pair = (0, 0), title: str | None = None):
    """One case of :func:`window_panel` as a figure of its own."""
    import matplotlib.pyplot as plt

    before, after = _padding_pair(padding)
    output_size = conv_output_size(size, kernel_size, stride, (before, after), dilation)
    width = size + before + after + output_size + 2
    fig, ax = plt.subplots(figsize=(0.42 * width + 0.4, 0.42 * (size + before + after) + 0.9))
    window_panel(ax, size, kernel_size, stride, padding, dilation, out, title)
    fig.tight_layout()
    return fig


def padding_modes_figure(size: int = 4, padding: int = 2, modes=("zeros", "reflect", "replicate", "circular")):
    """What each ``padding_mode`` of :class:`torch.nn.Conv2d` puts in the border of the image
    ``1 … size²``: the padded image is computed by ``F.pad`` exactly as :class:`convbook.Conv2d`
    pads it; the original image is outlined."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    image = torch.arange(1, size * size + 1, dtype=torch.float64).reshape(1, 1, size, size)
    fig, axes = plt.subplots(1, len(modes), figsize=(2.6 * len(modes), 2.9))
    for ax, mode in zip(axes, modes):
        padded = F.pad(image, (padding,) * 4, mode="constant" if mode == "zeros" else mode)[0, 0]
        ax.imshow(padded.numpy(), cmap="Blues", vmin=-size * size * 0.4, vmax=size * size * 1.2)
        for (h, w), value in zip(product(range(padded.shape[0]), repeat=2), padded.flatten().tolist()):
            ax.text(w, h, f"{value:.0f}", ha="center", va="center", fontsize=8)
        ax.add_patch(Rectangle((padding - 0.5, padding - 0.5), size, size, fill=False, edgecolor="crimson",
                               linewidth=2))
        ax.set_title(f"padding_mode='{mode}'", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def im2col_figure(size: int = 4, kernel_size: int = 2, stride: int = 1, padding: int = 0, dilation: int = 1):
    """The windows view of :func:`convbook.kernels.windows` unrolled into a matrix (im2col): row
    ``(i, j)`` lists the input cells read by output position (i, j), column ``(u, v)`` is one tap.
    The left panel is the input as :func:`convbook.kernels.pad_to_extent` pads it.
    The entries are computed by running the kernel code on the image of cell numbers ``1 … H·W``
    (0 marks padding), so the picture is the code's own view."""
    import matplotlib.pyplot as plt

    from .kernels import pad_to_extent, windows

    output_size = conv_output_size(size, kernel_size, stride, padding, dilation)
    geometry = Geometry((kernel_size,) * 2, (stride,) * 2, (padding,) * 2, (dilation,) * 2, 1,
                        (size,) * 2, (output_size,) * 2)
    image = torch.arange(1, size * size + 1, dtype=torch.float64).reshape(1, 1, size, size)
    padded = pad_to_extent(image, geometry)
    matrix = windows(padded, geometry).reshape(output_size ** 2, kernel_size ** 2)
    fig, (left, right) = plt.subplots(1, 2, figsize=(2.2 + 0.45 * size + 0.5 * kernel_size ** 2,
                                                     max(2.6, 0.32 * output_size ** 2 + 1.2)),
                                      gridspec_kw=dict(width_ratios=[size, 1.3 * kernel_size ** 2]))
    for ax, data in ((left, padded[0, 0]), (right, matrix)):
        ax.imshow(data.numpy(), cmap="Blues", vmin=-size * size * 0.3, vmax=size * size * 1.3, aspect="equal")
        for (r, c), value in zip(product(range(data.shape[0]), range(data.shape[1])), data.flatten().tolist()):
            ax.text(c, r, f"{value:.0f}" if value else "·", ha="center", va="center", fontsize=8)
    left.set_title(f"input x ({size}×{size}), cells numbered" + (", padded" if padding else ""), fontsize=9)
    left.set_xticks([])
    left.set_yticks([])
    right.set_title(f"windows(x) as a {output_size ** 2}×{kernel_size ** 2} matrix", fontsize=9)
    right.set_xticks(range(kernel_size ** 2), [f"{u},{v}" for u, v in product(range(kernel_size), repeat=2)],
                     fontsize=7)
    right.set_yticks(range(output_size ** 2), [f"{i},{j}" for i, j in product(range(output_size), repeat=2)],
                     fontsize=7)
    right.set_xlabel("tap (u, v)")
    right.set_ylabel("output position (i, j)")
    fig.tight_layout()
    return fig


def channel_connections(in_channels: int, out_channels: int, groups: int) -> torch.Tensor:
    """A (C_out, C_in) 0/1 matrix: entry [o, c] is 1 when output channel o reads input channel c.

    Measured, not assumed: :func:`convbook.conv2d` with an all-ones 1×1 kernel is run on one
    image per input channel that is 1 in that channel and 0 elsewhere."""
    from .functional import conv2d

    one_hot = torch.eye(in_channels, dtype=torch.float64).reshape(in_channels, in_channels, 1, 1)
    weight = torch.ones(out_channels, in_channels // groups, 1, 1, dtype=torch.float64)
    return (conv2d(one_hot, weight, groups=groups)[:, :, 0, 0].T != 0).to(torch.int64)


def groups_figure(in_channels: int = 4, out_channels: int = 4, groups=(1, 2, 4)):
    """Which input channels each output channel reads, for several ``groups`` (lines from
    :func:`channel_connections`); ``groups = C_in`` is the depthwise convolution."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(groups), figsize=(2.4 * len(groups), 2.8))
    for ax, g in zip(axes, groups):
        connections = channel_connections(in_channels, out_channels, g)
        for o, c in connections.nonzero().tolist():
            ax.plot([0, 1], [c, o], color=plt.cm.tab10((o // (out_channels // g)) % 10), linewidth=1.5)
        ax.scatter([0] * in_channels, range(in_channels), s=160, color=INPUT, edgecolor="black", zorder=3)
        ax.scatter([1] * out_channels, range(out_channels), s=160, color=OUTPUT, edgecolor="black", zorder=3)
        for c in range(in_channels):
            ax.text(-0.12, c, f"c={c}", ha="right", va="center", fontsize=8)
        for o in range(out_channels):
            ax.text(1.12, o, f"o={o}", ha="left", va="center", fontsize=8)
        name = " (depthwise)" if g == in_channels else ""
        ax.set_title(f"groups={g}{name}", fontsize=9)
        ax.set_xlim(-0.6, 1.6)
        ax.set_ylim(max(in_channels, out_channels) - 0.5, -0.5)
        ax.axis("off")
    fig.tight_layout()
    return fig
