"""Chapter 1's claims about sizes, and the promise that the book's figures are drawn from the code."""
from __future__ import annotations

from itertools import product

import matplotlib
import pytest
import torch
import torch.nn.functional as F

import convbook
from convbook import figures, index_map, symbolic

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def cells(fig, gid: str) -> set[tuple[int, int]]:
    """The (row, column) of every cell drawn with ``gid`` (cells are unit squares at integer corners)."""
    return {(round(p.get_y()), round(p.get_x())) for ax in fig.axes for p in ax.patches if p.get_gid() == gid}


def test_output_size_formula_counts_every_valid_window():
    result = symbolic.output_size_by_enumeration()
    assert result.entries > 1000 and result.all_equal


def test_valid_window_count_is_not_the_formula_in_disguise():
    # H = 5, k = 3, s = 2: windows start at 0 and 2 (start 4 would need rows 4..6): two outputs
    assert symbolic.valid_window_count(5, 3, 2) == 2
    # one row of zero padding on each side: windows start at -1, 1, 3 (start 5 would end at row 7 > 5)
    assert symbolic.valid_window_count(5, 3, 2, 1) == 3
    # a 5-row image and a dilation-2 kernel of 3 taps spanning 5 rows: exactly one window
    assert symbolic.valid_window_count(5, 3, 1, 0, 2) == 1


def test_sympy_solves_the_last_window_condition_into_the_output_size_formula():
    assert all(result.all_equal for result in symbolic.output_size_by_solving())


def test_same_padding_keeps_the_size_at_stride_one():
    assert symbolic.same_padding_by_enumeration().all_equal


@pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")
def test_same_padding_puts_the_extra_row_after():
    assert index_map.same_padding(4) == (1, 2)
    assert index_map.same_padding(2, dilation=3) == (1, 2)
    x = torch.arange(25.0).reshape(1, 1, 5, 5)
    weight = torch.zeros(1, 1, 4, 4)
    weight[0, 0, 0, 0] = 1.0  # the output copies the input at the window's first tap: row i − p_before
    shifted = F.conv2d(x, weight, padding="same")
    assert torch.equal(shifted[0, 0, 1:, 1:], x[0, 0, :-1, :-1])  # p_before = 1: of d(k − 1) = 3, two go after
    assert torch.equal(convbook.conv2d(x, weight, padding="same"), shifted)


@pytest.mark.parametrize("stride, padding, dilation", [  # 'same' only at stride 1, as PyTorch allows
    *product((1, 2, 3), (0, 1, 2, "valid"), (1, 2)), (1, "same", 1), (1, "same", 2), (1, "same", 3)])
def test_conv2d_output_shape_is_torchs(stride, padding, dilation):
    for size, kernel_size in product((5, 6, 7), (1, 2, 3)):
        x, weight = torch.randn(1, 2, size, size + 1), torch.randn(3, 2, kernel_size, kernel_size)
        ours = convbook.conv2d(x, weight, stride=stride, padding=padding, dilation=dilation).shape
        assert ours == F.conv2d(x, weight, stride=stride, padding=padding, dilation=dilation).shape


@pytest.mark.parametrize("size, kernel_size, stride, padding, dilation, out", [
    (4, 3, 1, 0, 1, (0, 0)), (5, 3, 2, 0, 1, (1, 1)), (4, 3, 1, 1, 1, (0, 0)), (7, 3, 1, 0, 2, (1, 0)),
    (5, 4, 1, (1, 2), 1, (4, 4)), (6, 2, 3, (2, 1), 2, (1, 2)),
])
def test_figure_windows_come_from_the_index_map(size, kernel_size, stride, padding, dilation, out):
    fig = figures.window_figure(size, kernel_size, stride, padding, dilation, out)
    before = padding if isinstance(padding, int) else padding[0]
    rows = index_map.window(out[0], kernel_size, stride, before, dilation)
    cols = index_map.window(out[1], kernel_size, stride, before, dilation)
    assert cells(fig, "window") == set(product(rows, cols))
    after = padding if isinstance(padding, int) else padding[1]
    padded = set(product(range(-before, size + after), repeat=2))
    assert cells(fig, "input") == set(product(range(size), repeat=2))
    assert cells(fig, "padding") == padded - cells(fig, "input")
    output_size = index_map.conv_output_size(size, kernel_size, stride, (before, after), dilation)
    drawn = [p.get_gid() for p in fig.axes[0].patches]
    assert (drawn.count("output"), drawn.count("selected")) == (output_size ** 2 - 1, 1)


def test_channel_connections_follow_the_groups():
    # output channel o reads input channel c exactly when both are in group ⌊o/(C_out/g)⌋
    connections = figures.channel_connections(in_channels=6, out_channels=4, groups=2)
    expected = torch.tensor([[int(o // 2 == c // 3) for c in range(6)] for o in range(4)])
    assert torch.equal(connections, expected)
    assert torch.equal(figures.channel_connections(3, 3, 3), torch.eye(3, dtype=torch.int64))


def test_every_figure_draws():
    for fig in (figures.padding_modes_figure(), figures.im2col_figure(4, 2, padding=1), figures.groups_figure()):
        assert fig.axes


@pytest.mark.parametrize("case", [symbolic.Case((1, 4, 3, 3), (6, 2, 2, 2), groups=2),
                                  symbolic.Case((1, 3, 3, 3), (3, 1, 2, 2), padding=(1, 0), groups=3)])
def test_groups_are_separate_convolutions_symbolically(case):
    assert symbolic.groups_are_separate_convolutions(case).all_equal
