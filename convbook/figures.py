"""The book's figures, drawn from the code they illustrate.

Every position in a picture comes from :mod:`convbook.index_map` (or from running convbook
itself), never from coordinates typed by hand, so a figure cannot disagree with the formulas.
The drawing style follows Dumoulin & Visin's guide: input cells blue, padding cells white and
dashed, the window of one output position dark, the output grid green beside it.

Every function returns a ``matplotlib.figure.Figure``; drawn cells carry a ``gid``
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
    """What each ``padding_mode`` of ``torch.nn.Conv2d`` puts in the border of the image
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


def _output_grid(ax, top: float, left: float, rows: int, cols: int, selected, labels=None) -> None:
    """An output grid at (top, left); cells in ``selected`` highlighted, ``labels[(i, j)]`` written in them."""
    for i, j in product(range(rows), range(cols)):
        chosen = (i, j) in selected
        _cell(ax, top + i, left + j, SELECTED if chosen else OUTPUT, "selected" if chosen else "output", linewidth=0.8)
        if labels and (i, j) in labels:
            ax.text(left + j + 0.5, top + i + 0.5, labels[(i, j)], ha="center", va="center", fontsize=6.5)


def grad_input_figure(size: int = 5, kernel_size: int = 3, stride: int = 2, padding: int = 1, dilation: int = 1,
                      position: Pair = (3, 3)):
    """How input pixel ``position`` receives its gradient (book eq. 3.4), in two panels.

    Left: the forward. The outputs (i, j) whose windows cover the pixel -- found by testing
    every output's window (:func:`~convbook.index_map.window`, eq. 1.1) -- with the tap (u, v)
    that reaches it. Right: the same sum as a stride-1 convolution: G with ``s − 1`` zeros
    inserted between entries, padded by ``d(k − 1) − p``, read by the *flipped* kernel; the window
    of output ``position`` (again :func:`~convbook.index_map.window`) hits a real G entry exactly
    at the covering outputs, labelled with the flipped tap that reads it.
    """
    import matplotlib.pyplot as plt

    output_size = conv_output_size(size, kernel_size, stride, padding, dilation)
    taps = {}
    for i, j in product(range(output_size), repeat=2):
        rows, cols = (window(o, kernel_size, stride, padding, dilation) for o in (i, j))
        for (u, h), (v, w) in product(enumerate(rows), enumerate(cols)):
            if (h, w) == tuple(position):
                taps[(i, j)] = (u, v)
    spread = stride * (output_size - 1) + 1
    before = dilation * (kernel_size - 1) - padding
    after = size - spread + before
    fig, (forward, backward) = plt.subplots(1, 2, figsize=(10, 5),
                                           gridspec_kw=dict(width_ratios=[size + output_size + 3,
                                                                          spread + before + after + 1]))
    for h, w in product(range(-padding, size + padding), repeat=2):
        inside = 0 <= h < size and 0 <= w < size
        chosen = (h, w) == tuple(position)
        _cell(forward, h, w, WINDOW if chosen else INPUT if inside else PADDING,
              "window" if chosen else "input" if inside else "padding",
              linestyle="-" if inside else "--", linewidth=0.8)
    left = size + padding + 1.5
    top = (size - output_size) / 2
    _output_grid(forward, top, left, output_size, output_size, taps,
                 {ij: f"u,v={u},{v}" if len(str(u)) + len(str(v)) < 3 else f"{u},{v}" for ij, (u, v) in taps.items()})
    forward.set_xlim(-padding - 0.3, left + output_size + 0.3)
    forward.set_ylim(size + padding + 0.3, -padding - 0.3)
    forward.set_title(f"forward: x[{position[0]},{position[1]}] is read by {len(taps)} outputs\n"
                      f"k={kernel_size}, s={stride}, p={padding}, d={dilation}; tap (u,v) shown", fontsize=9)
    flipped = kernel_size - 1
    rows = window(position[0], kernel_size, 1, before, dilation)
    cols = window(position[1], kernel_size, 1, before, dilation)
    for m, m2 in product(range(-before, spread + after), repeat=2):
        real = 0 <= m < spread and 0 <= m2 < spread and m % stride == 0 and m2 % stride == 0
        _cell(backward, m, m2, OUTPUT if real else PADDING, "output" if real else "padding",
              linestyle="-" if real else ":", linewidth=0.6)
        if real:
            backward.text(m2 + 0.5, m + 0.2, f"G{m // stride},{m2 // stride}", ha="center", va="center", fontsize=5.5)
    for (u, m), (v, m2) in product(enumerate(rows), enumerate(cols)):
        real = 0 <= m < spread and 0 <= m2 < spread and m % stride == 0 and m2 % stride == 0
        _cell(backward, m, m2, SELECTED if real else WINDOW, "selected" if real else "window", alpha=0.75,
              linewidth=1.4)
        backward.text(m2 + 0.5, m + 0.62, f"w{flipped - u},{flipped - v}", ha="center", va="center",
                      color="black" if real else "white", fontsize=6.5)
    backward.set_xlim(-before - 0.3, spread + after + 0.3)
    backward.set_ylim(spread + after + 0.3, -before - 0.3)
    backward.set_title(f"backward: G with {stride - 1} zero(s) inserted, padded by d(k−1)−p={before},\n"
                       f"flipped kernel read at ({position[0]},{position[1]}): w[k−1−u', k−1−v'] shown", fontsize=9)
    for ax in (forward, backward):
        ax.set_aspect("equal")
        ax.axis("off")
    fig.tight_layout()
    return fig


def scatter_figure(size: int = 2, kernel_size: int = 3, stride: int = 2, padding: int = 1, dilation: int = 1,
                   output_padding: int = 1):
    """The transposed convolution as a scatter (book eq. 4.1): every input pixel (i, j) paints a
    k × k stamp, at rows and columns :func:`~convbook.index_map.window` ``(i, k, s, p, d)`` of the
    output (eq. 1.1 read backwards), one colour per pixel; the number in a cell counts the stamps
    that overlap there. Dashed cells are the ``p`` rows cropped by the padding; the output size
    is eq. (4.2)."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from .index_map import conv_transpose_output_size

    out = conv_transpose_output_size(size, kernel_size, stride, padding, dilation, output_padding)
    painted = window(size - 1, kernel_size, stride, padding, dilation)[-1]
    extent = range(min(-padding, 0), max(out, painted + 1))
    fig, (source, target) = plt.subplots(1, 2, figsize=(9, 4.2), gridspec_kw=dict(width_ratios=[size + 1, len(extent)]))
    colors = plt.cm.tab10
    stamps = {}
    for index, (i, j) in enumerate(product(range(size), repeat=2)):
        _cell(source, i, j, colors(index % 10), "input", alpha=0.6)
        source.text(j + 0.5, i + 0.5, f"y{i},{j}", ha="center", va="center", fontsize=8)
        for h, w in product(window(i, kernel_size, stride, padding, dilation),
                            window(j, kernel_size, stride, padding, dilation)):
            stamps.setdefault((h, w), []).append(index)
    for h, w in product(extent, repeat=2):
        inside = 0 <= h < out and 0 <= w < out
        _cell(target, h, w, "white", "output" if inside else "padding", linestyle="-" if inside else "--",
              linewidth=0.6)
    for (h, w), painters in stamps.items():
        for rank, index in enumerate(painters):
            share = 1 / len(painters)
            target.add_patch(Rectangle((w + rank * share, h), share, 1, facecolor=colors(index % 10),
                                       alpha=0.55 if 0 <= h < out and 0 <= w < out else 0.2, gid="stamp"))
        target.text(w + 0.5, h + 0.5, str(len(painters)), ha="center", va="center", fontsize=7)
    target.add_patch(Rectangle((0, 0), out, out, fill=False, edgecolor="crimson", linewidth=2, gid="kept"))
    source.set_xlim(-0.2, size + 0.2)
    source.set_ylim(size + 0.2, -0.2)
    source.set_title(f"input y ({size}×{size})", fontsize=9)
    target.set_xlim(extent[0] - 0.2, extent[-1] + 1.2)
    target.set_ylim(extent[-1] + 1.2, extent[0] - 0.2)
    target.set_title(f"output ({out}×{out}) = (H−1)s − 2p + d(k−1) + a + 1\n"
                     f"k={kernel_size}, s={stride}, p={padding} (dashed, cropped), d={dilation}, a={output_padding}; "
                     "number = stamps overlapping; kept output outlined", fontsize=9)
    for ax in (source, target):
        ax.set_aspect("equal")
        ax.axis("off")
    fig.tight_layout()
    return fig


def output_padding_figure(sizes=(5, 6), kernel_size: int = 3, stride: int = 2, padding: int = 1, dilation: int = 1):
    """Why ``output_padding`` exists: a strided convolution maps several input sizes to the same
    output size (eq. 1.3). One row per input size H, in one dimension: the (padded) input and,
    under it, a bracket for every output's window (:func:`~convbook.index_map.window`); cells no
    window reaches are hatched, taps that land in the padding hollow. The transposed convolution
    of that output size can only return one of them, and ``output_padding`` a says which (eq. 4.2)."""
    import matplotlib.pyplot as plt

    from .index_map import conv_transpose_output_size

    widest = max(sizes)
    fig, ax = plt.subplots(figsize=(0.55 * (widest + 2 * padding) + 5, 1.5 * len(sizes) + 0.6))
    for row, size in enumerate(sizes):
        top = row * (0.7 * max(conv_output_size(h, kernel_size, stride, padding, dilation) for h in sizes) + 2.4)
        output_size = conv_output_size(size, kernel_size, stride, padding, dilation)
        smallest = conv_transpose_output_size(output_size, kernel_size, stride, padding, dilation)
        windows_ = [window(i, kernel_size, stride, padding, dilation) for i in range(output_size)]
        read = {h for positions in windows_ for h in positions}
        for h in range(-padding, size + padding):
            inside = 0 <= h < size
            _cell(ax, top, h, INPUT if inside else PADDING, "input" if inside else "padding",
                  linestyle="-" if inside else "--", linewidth=0.8, hatch=None if h in read or not inside else "///")
            if inside:
                ax.text(h + 0.5, top + 0.5, str(h), ha="center", va="center", fontsize=8)
        for i, positions in enumerate(windows_):
            level = top + 1.4 + 0.7 * i
            ax.plot([positions[0] + 0.15, positions[-1] + 0.85], [level, level], color=WINDOW, linewidth=2.5)
            ax.scatter([h + 0.5 for h in positions], [level] * len(positions), s=18, zorder=3, edgecolor=WINDOW,
                       color=[WINDOW if 0 <= h < size else "white" for h in positions])
            ax.text(positions[-1] + 1.1, level, f"y[{i}]", va="center", fontsize=8)
        ax.text(widest + padding + 1.5, top + 0.5,
                f"H = {size} → H_out = {output_size};  back: a = {size - smallest} gives {size}",
                va="center", fontsize=9)
    ax.set_xlim(-padding - 0.3, widest + padding + 9)
    ax.set_ylim(top + 1.4 + 0.7 * len(windows_), -0.5)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(f"k={kernel_size}, s={stride}, p={padding}, d={dilation}: different H, same H_out\n"
                 "(hollow dot: tap on padding; hatched: pixel read by no window)", fontsize=9)
    fig.tight_layout()
    return fig
