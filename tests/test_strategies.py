"""Chapter 7's claims: every fast strategy is exactly PyTorch's convolution, on its own, forward and
backward; the dispatcher says what it picks; scratch buffers are bounded, per thread, never aliased."""
import math
import threading

import pytest
import torch
import torch.utils.checkpoint

import convbook
from convbook import checks, strategies, winograd, workspace
from convbook.dispatch import convolution_ops, record_aten_ops
from convbook.compare import operands
from convbook.index_map import input_position
from oracle import assert_close_to_torch, check_against_torch

DTYPES = [torch.float64, torch.float32]

# (op, input shape, weight shape, kwargs): each contraction of each runs in forward or backward.
CASES = {
    "conv_3x3_padded": ("conv2d", (2, 3, 7, 8), (4, 3, 3, 3), dict(padding=1)),
    "conv_stride_2": ("conv2d", (2, 3, 9, 8), (4, 3, 3, 3), dict(stride=2, padding=1)),
    "conv_stride_pair_dilation_pair": ("conv2d", (2, 3, 11, 10), (4, 3, 3, 2), dict(stride=(2, 3), dilation=(2, 1), padding=(2, 1))),
    "conv_stride_larger_than_kernel": ("conv2d", (1, 2, 10, 9), (3, 2, 2, 2), dict(stride=3)),
    "conv_1x1_stride_2": ("conv2d", (2, 5, 7, 7), (3, 5, 1, 1), dict(stride=2)),
    "conv_groups": ("conv2d", (2, 6, 7, 7), (4, 3, 3, 3), dict(groups=2, padding=1)),
    "conv_depthwise": ("conv2d", (2, 4, 7, 6), (4, 1, 3, 3), dict(groups=4, padding=1, stride=(1, 2))),
    "conv_depthwise_multiplier": ("conv2d", (2, 3, 6, 6), (6, 1, 3, 3), dict(groups=3)),
    "conv_depthwise_same_grid": ("conv2d", (2, 4, 7, 6), (4, 1, 3, 3), dict(groups=4, padding=1)),
    "conv_depthwise_same_grid_no_centre_tap": ("conv2d", (2, 3, 5, 6), (3, 1, 2, 4), dict(groups=3, padding="same", dilation=(1, 2))),
    "conv_depthwise_same_grid_kernel_wider_than_image": ("conv2d", (1, 2, 3, 4), (2, 1, 7, 9), dict(groups=2, padding=(3, 4))),
    "conv_same_even_kernel_is_asymmetric": ("conv2d", (2, 3, 6, 7), (4, 3, 4, 2), dict(padding="same", dilation=(1, 3))),
    "conv_padding_larger_than_kernel": ("conv2d", (1, 2, 5, 5), (3, 2, 2, 2), dict(padding=3)),
    "conv_unread_last_rows_are_cropped": ("conv2d", (2, 2, 8, 9), (3, 2, 3, 3), dict(stride=3)),
    "conv_large_kernel": ("conv2d", (2, 3, 9, 9), (2, 3, 7, 7), dict(padding=3)),
    "transposed_k4_s2": ("conv_transpose2d", (2, 4, 5, 6), (4, 3, 4, 4), dict(stride=2, padding=1)),
    "transposed_output_padding": ("conv_transpose2d", (2, 4, 5, 5), (4, 2, 3, 3), dict(stride=2, padding=1, output_padding=1)),
    "transposed_groups_dilation": ("conv_transpose2d", (1, 4, 5, 4), (4, 3, 3, 2), dict(stride=(2, 1), dilation=(1, 2), groups=2)),
    "transposed_depthwise": ("conv_transpose2d", (2, 3, 5, 5), (3, 1, 3, 3), dict(stride=2, groups=3, padding=2)),
    "transposed_stride_3_kernel_2": ("conv_transpose2d", (1, 2, 4, 4), (2, 3, 2, 2), dict(stride=3, padding=1, output_padding=2)),
    "transposed_taps_tile_the_image": ("conv_transpose2d", (2, 4, 5, 6), (4, 3, 2, 2), dict(stride=2)),
    "transposed_taps_tile_the_image_in_column_pairs": ("conv_transpose2d", (2, 4, 3, 5), (4, 3, 3, 2), dict(stride=(3, 2))),
    "transposed_depthwise_taps_tile_the_image": ("conv_transpose2d", (2, 3, 4, 5), (3, 1, 2, 3), dict(stride=(2, 3), groups=3)),
    "conv_kernel_equals_stride": ("conv2d", (2, 3, 8, 10), (4, 3, 2, 2), dict(stride=2)),
    # at least 4 taps per stride phase: im2col copies from phase planes, col2im sums each grid in a buffer
    "conv_many_taps_per_phase_dilated": ("conv2d", (2, 3, 13, 12), (4, 3, 5, 4), dict(stride=2, dilation=(3, 1), padding=(2, 1))),
    "transposed_depthwise_many_taps_per_phase": ("conv_transpose2d", (2, 3, 5, 6), (3, 1, 5, 4), dict(stride=2, groups=3, padding=1)),
}

NAMED_STRATEGIES = [(contraction, name) for contraction, names in strategies.STRATEGIES.items() for name in names]


def _applies(contraction, name, op, input_shape, weight_shape, kwargs):
    groups = kwargs.get("groups", 1)
    in_channels, out_channels = ((input_shape[1], weight_shape[0]) if op == "conv2d"
                                 else (weight_shape[1] * groups, input_shape[1]))
    return strategies.applies(contraction, name, groups, in_channels, out_channels)


APPLICABLE = [(contraction, name, case) for contraction, name in NAMED_STRATEGIES for case in CASES
              if _applies(contraction, name, *CASES[case])]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("contraction,name,case", APPLICABLE, ids=lambda v: v)
def test_every_strategy_on_its_own_matches_pytorch_forward_and_backward(contraction, name, case, dtype):
    op, input_shape, weight_shape, kwargs = CASES[case]
    with strategies.forced(**{contraction: name}):
        check_against_torch(op, input_shape, weight_shape, dtype=dtype, **kwargs)


def _same_non_finite(mine: torch.Tensor, ref: torch.Tensor) -> bool:
    """The same NaN, +inf and -inf positions, and the finite entries equal to rounding."""
    return (all(torch.equal(f(mine), f(ref)) for f in (torch.isnan, torch.isposinf, torch.isneginf))
            and torch.allclose(mine.nan_to_num(0, 0, 0), ref.nan_to_num(0, 0, 0), rtol=1e-10, atol=1e-10))


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan], ids=str)
@pytest.mark.parametrize("contraction,name,case", [a for a in APPLICABLE if a[0] != "correlate_weight"], ids=lambda v: v)
def test_inf_and_nan_reach_the_outputs_whose_windows_hold_them_and_no_others(contraction, name, case, value):
    """An inf or NaN in the input (forward) or in grad_output (input gradient) lands exactly where
    PyTorch's does: only outputs whose window holds it. (A strategy that multiplied a zero into it
    -- a padding, a wrapped column -- would spread a NaN where PyTorch has none.) The weight
    gradient is not held to this: PyTorch's own float64 and float32 paths disagree there."""
    op, input_shape, weight_shape, kwargs = CASES[case]
    torch.manual_seed(0)
    native, mine = {"conv2d": (torch.nn.functional.conv2d, convbook.conv2d),
                    "conv_transpose2d": (torch.nn.functional.conv_transpose2d, convbook.conv_transpose2d)}[op]
    x, weight = torch.randn(input_shape, dtype=torch.float64), torch.randn(weight_shape, dtype=torch.float64)
    y = native(x, weight, **kwargs)
    grad = torch.randn_like(y)
    for t in (x, grad):                       # the first and last columns, where a flattened shift wraps
        t[0, -1, t.shape[2] // 2, -1] = t[-1, 0, -1, 0] = t[0, 0, 0, t.shape[3] // 2] = value
    leaf = x.clone().requires_grad_()
    native(leaf, weight, **kwargs).backward(grad)
    with strategies.forced(**{contraction: name}):
        with torch.no_grad():
            forward = mine(x, weight, **kwargs)
        backward = getattr(convbook, f"{op}_backward")(grad, x, weight, **kwargs)[0]
    assert _same_non_finite(forward, native(x, weight, **kwargs)), "forward"
    assert _same_non_finite(backward, leaf.grad), "input gradient"


LAYOUTS = {
    "channels_last": lambda t: t.contiguous(memory_format=torch.channels_last),
    "non_contiguous": lambda t: t.transpose(2, 3).contiguous().transpose(2, 3),
    "sliced": lambda t: torch.cat([t, t], dim=1)[:, : t.shape[1]],
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("contraction,name", NAMED_STRATEGIES, ids=lambda v: v)
def test_every_strategy_reads_any_memory_layout(contraction, name, layout):
    op, input_shape, weight_shape, kwargs = CASES["conv_groups"] if name != "depthwise" else CASES["conv_depthwise"]
    with strategies.forced(**{contraction: name}):
        check_against_torch(op, input_shape, weight_shape, prepare=LAYOUTS[layout], **kwargs)
        check_against_torch("conv_transpose2d", (2, 4, 5, 5), (4, 4 if name != "depthwise" else 1, 3, 3),
                            prepare=LAYOUTS[layout], stride=2, padding=1, groups=1 if name != "depthwise" else 4)
        many = "conv_many_taps_per_phase_dilated" if name != "depthwise" else "transposed_depthwise_many_taps_per_phase"
        op, input_shape, weight_shape, kwargs = CASES[many]          # the phase-plane windows and grid buffers
        check_against_torch(op, input_shape, weight_shape, prepare=LAYOUTS[layout], **kwargs)


@pytest.mark.parametrize("contraction,name", NAMED_STRATEGIES, ids=lambda v: v)
def test_an_empty_batch_works_whatever_is_forced(contraction, name):
    with strategies.forced(**{contraction: name}):
        check_against_torch("conv2d", (0, 4, 6, 6), (4, 1 if name == "depthwise" else 4, 3, 3),
                            groups=4 if name == "depthwise" else 1, padding=1)


@pytest.mark.parametrize("contraction,name", NAMED_STRATEGIES, ids=lambda v: v)
def test_no_strategy_runs_a_native_convolution(contraction, name):
    depthwise = name == "depthwise"
    x = torch.randn(2, 4, 9, 9, requires_grad=True)
    w = torch.randn(4, 1 if depthwise else 4, 3, 3, requires_grad=True)
    with strategies.forced(**{contraction: name}), record_aten_ops() as ops:
        y = convbook.conv2d(x, w, stride=2, padding=1, groups=4 if depthwise else 1)
        z = convbook.conv_transpose2d(y, w, stride=2, padding=1, groups=4 if depthwise else 1)
        same = convbook.conv2d(x, w, padding=1, groups=4 if depthwise else 1)   # stride 1, on its own grid
        (z.square().sum() + same.square().sum()).backward()
    assert convolution_ops(ops) == []


@pytest.mark.parametrize("contraction,name", [("correlate", "im2col"), ("correlate", "im2col_folded"),
                                               ("correlate_weight", "im2col"), ("correlate_weight", "im2col_folded"),
                                               ("correlate_transpose", "col2im"),
                                               ("correlate_transpose", "col2im_folded"), ("correlate_pair", "im2col"),
                                               ("correlate_pair", "im2col_folded"), ("correlate_pair", "row_shifted"),
                                               ("correlate", "row_shifted"), ("correlate_weight", "row_shifted")])
def test_im2col_works_in_bands_of_rows_when_one_image_exceeds_the_column_budget(contraction, name, monkeypatch):
    monkeypatch.setattr(strategies, "COLUMN_BUDGET", 0)
    with strategies.forced(**{contraction: name}):
        check_against_torch("conv2d", (2, 3, 11, 10), (4, 3, 5, 3), padding=(2, 1), stride=(1, 2))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("blocks", ["image_by_image", "two_images_and_one", "bands_of_rows"])
def test_channels_last_works_in_blocks_of_images_and_bands_of_rows(blocks, dtype, monkeypatch):
    """Batch 5: on one thread one image a block; on two, whole images for each thread -- blocks of 2, 2 and 1
    (the weight gradient summed across them) -- whole or in bands of 3 output rows (the last band shorter).
    Forward, pair, and the weight gradient alone, grouped, dilated and not."""
    monkeypatch.setattr(strategies, "CHANNELS_LAST_ROWS", 1)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1 if blocks == "image_by_image" else 2)
    seen, blocks_of = [], strategies._channels_last_blocks

    def recorded(x, geometry):
        for block in blocks_of(x, geometry):
            if x.shape[1] == 6:                          # the layer's input (the pair's correlation reads G)
                seen.append((block[1] - block[0], block[3] - block[2]))
            yield block
    monkeypatch.setattr(strategies, "_channels_last_blocks", recorded)
    for weight_shape, kwargs, out_size in (((4, 6, 3, 3), dict(padding=1), (7, 8)),
                                           ((4, 3, 3, 3), dict(padding=1, groups=2), (7, 8)),
                                           ((4, 6, 3, 2), dict(padding=(2, 1), dilation=(2, 1)), (7, 9))):
        per_row = out_size[1] * 6 * weight_shape[2] * weight_shape[3]          # column entries of one output row
        columns = {"image_by_image": out_size[0] * per_row, "two_images_and_one": 2 * out_size[0] * per_row,
                   "bands_of_rows": 2 * 3 * per_row}[blocks]
        monkeypatch.setattr(strategies, "CHANNELS_LAST_COLUMNS", columns)
        for forced in (dict(correlate="channels_last", correlate_pair="channels_last"),
                       dict(correlate="channels_last", correlate_weight="channels_last")):
            with strategies.forced(**forced):
                check_against_torch("conv2d", (5, 6, 7, 8), weight_shape, dtype=dtype, **kwargs)
    # (images, output rows) of each block's columns
    expected = {"image_by_image": {(1, 7)}, "two_images_and_one": {(2, 7), (1, 7)},
                "bands_of_rows": {(2, 3), (2, 1), (1, 3), (1, 1)}}
    assert set(seen) == expected[blocks]


@pytest.mark.parametrize("name", ["im2col", "shifted", "row_shifted", "depthwise"])
def test_large_frames_zero_only_their_border(name, monkeypatch):
    monkeypatch.setattr(strategies, "FRAME_ZERO_LIMIT", 0)
    with strategies.forced(name):
        check_against_torch("conv2d", (2, 4, 7, 6), (4, 1 if name == "depthwise" else 4, 3, 3), padding=(2, 1),
                            stride=(1, 2), groups=4 if name == "depthwise" else 1)


@pytest.mark.parametrize("per_block", [1, 2, 3])
def test_depthwise_works_block_of_channels_by_block(per_block, monkeypatch):
    # a phase plane of this layer holds N·R·Q = 2·9·4 = 72 elements per channel: blocks of 1, 2 or 3
    # of the 5 channels (the last block smaller, reusing the first block's buffer and its zero border)
    monkeypatch.setattr(strategies, "DEPTHWISE_BLOCK", 72 * per_block)
    with strategies.forced("depthwise"):
        check_against_torch("conv2d", (2, 5, 7, 6), (5, 1, 3, 3), groups=5, padding=1, stride=(1, 2), dilation=(2, 1))


@pytest.mark.parametrize("per_block", [1, 2, 3])
def test_depthwise_on_its_own_grid_works_image_by_image_and_block_of_channels_by_block(per_block, monkeypatch):
    # stride 1 and "same" padding: the taps run on the image itself, H·W = 42 elements per channel
    # and image, in blocks of 1, 2 or 3 channels (the last smaller); the pair too. Two threads, batch 2:
    # the two images side by side, one image of 10 channels; batch 3 (odd) or one thread: image by image
    monkeypatch.setattr(strategies, "SAME_GRID_BLOCK", 42 * per_block)
    threads = torch.get_num_threads()
    try:
        for count in (2, 1):
            torch.set_num_threads(count)
            with strategies.forced("depthwise"):
                check_against_torch("conv2d", (2, 5, 7, 6), (5, 1, 3, 3), groups=5, padding=1)
                check_against_torch("conv2d", (2, 5, 7, 6), (5, 1, 3, 3), groups=5, padding=2, dilation=2)
                check_against_torch("conv2d", (3, 5, 7, 6), (5, 1, 3, 3), groups=5, padding=1)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("weighted", [False, True], ids=["col2im", "depthwise"])
@pytest.mark.parametrize("case", CASES)
def test_the_scatter_writes_every_position_of_an_uninitialised_image(case, weighted):
    # col2im (eq. 3.4's scatter) writes the first tap that covers a phase grid instead of zeroing the
    # image first: started from NaN or from zeros, the image must come out the same, and NaN-free
    op, input_shape, weight_shape, kwargs = CASES[case]
    geometry = checks.shape_geometry(op, input_shape, weight_shape, **kwargs)   # its image: x, or the output
    (kh, kw), (rows, cols), channels = geometry.kernel_size, geometry.output_size, 3
    generator = torch.Generator().manual_seed(0)
    if weighted:
        columns = torch.randn(2, channels, rows, cols, generator=generator, dtype=torch.float64)
        weights = torch.randn(1, channels, kh, kw, 1, 1, generator=generator, dtype=torch.float64)
    else:
        columns = torch.randn(2, channels, kh, kw, rows, cols, generator=generator, dtype=torch.float64)
        weights = None
    images = [torch.full((2, channels, *geometry.input_size), start, dtype=torch.float64) for start in (math.nan, 0.0)]
    for image in images:
        strategies._add_taps(image, columns, geometry, weights)
    assert not images[0].isnan().any() and torch.equal(*images)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "odd_offset"])
@pytest.mark.parametrize("fold_batch", [False, True], ids=["per_image", "folded"])
def test_columns_of_taps_that_tile_rows_in_pairs_are_the_window_view(dtype, layout, fold_batch, monkeypatch):
    """k_w = s_w = 2: each image row is read as pairs (v = 0, v = 1), and the column matrix is copied by
    ``_deinterleave`` (the v = 0 entries as the low halves of 64-bit integers) where each pair is one such
    integer -- contiguous float32 x; not float64, not channels-last x (a pair's entries lie C apart), nor x
    that starts at an odd offset. Either way the columns are the window view of chapter 2, entry for entry,
    and the results PyTorch's."""
    calls = []
    deinterleave = strategies._deinterleave
    monkeypatch.setattr(strategies, "_deinterleave", lambda target, source: (calls.append(1), deinterleave(target, source)))
    storage = torch.randn(2 * 4 * 6 * 8 + 1, dtype=dtype)
    x = storage[1:].view(2, 4, 6, 8) if layout == "odd_offset" else storage[:-1].view(2, 4, 6, 8)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(6, 2, 2, 2, dtype=dtype)
    geometry = checks.conv2d_geometry(x, weight, None, 2, 0, 1, 2)
    blocks = (0, 2, 0, geometry.output_size[0])
    columns = strategies._columns(strategies._windows(x, geometry), blocks, geometry, fold_batch)
    assert len(calls) == (1 if layout == "contiguous" and dtype == torch.float32 else 0)
    parts = columns.shape[0]
    view = convbook.kernels.windows(x, geometry)                          # (n, c, i, j, u, v)
    expected = view.unflatten(1, (2, 2)).permute(0, 1, 2, 5, 6, 3, 4)     # (n, g, c, u, v, i, j)
    if fold_batch:
        expected = expected.unflatten(0, (parts, -1)).permute(0, 2, 3, 4, 5, 1, 6, 7)
    assert torch.equal(columns, expected.reshape(columns.shape))
    with strategies.forced("im2col_folded" if fold_batch else "im2col"):
        check_against_torch("conv2d", (2, 4, 6, 8), (6, 2, 2, 2), dtype=dtype, stride=2, groups=2)


@pytest.mark.parametrize("case", CASES)
def test_the_taps_tile_the_image_exactly_where_each_position_lies_in_one_window(case):
    # taps_tile_the_image(geometry) is the shortcut of col2im's depth-to-space copy, of its bias folded into the
    # product and of its smaller blocks; by the index map h = s·i + d·u − p, count the windows that hold each position
    op, input_shape, weight_shape, kwargs = CASES[case]
    geometry = checks.shape_geometry(op, input_shape, weight_shape, **kwargs)
    counts = []
    for axis in (0, 1):
        count = [0] * geometry.input_size[axis]
        for i in range(geometry.output_size[axis]):
            for u in range(geometry.kernel_size[axis]):
                h = input_position(i, u, geometry.stride[axis], geometry.padding[axis], geometry.dilation[axis])
                if 0 <= h < len(count):
                    count[h] += 1
        counts.append(count)
    exactly_once = all(c == 1 for count in counts for c in count)
    windows_inside = all(geometry.padding[a] == 0 and (geometry.output_size[a] - 1) * geometry.stride[a]
                         + geometry.dilation[a] * (geometry.kernel_size[a] - 1) < geometry.input_size[a] for a in (0, 1))
    assert strategies.taps_tile_the_image(geometry) == (exactly_once and windows_inside)
    assert strategies.taps_tile_the_image(geometry) == case.startswith(
        ("transposed_taps_tile", "transposed_depthwise_taps_tile", "conv_kernel_equals_stride"))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", ["im2col", "im2col_folded"])
@pytest.mark.parametrize("budget", ["image_by_image", "bands_of_rows"])
@pytest.mark.parametrize("case", ["transposed_taps_tile_the_image", "transposed_k4_s2", "transposed_groups_dilation"])
def test_the_backward_pair_sums_the_bias_gradient_block_by_block(case, budget, name, dtype, monkeypatch):
    """An im2col pair sums grad_output over each block of its images as it copies their columns (eq. 3.2): in
    blocks of one image, and in bands of rows (each image summed once, at its first band). Without ``bias``
    it leaves ∂L/∂b to the caller."""
    op, input_shape, weight_shape, kwargs = CASES[case]
    x, w, _ = operands(op, input_shape, weight_shape, True, dtype, 0, kwargs.get("groups", 1))
    geometry = checks.shape_geometry(op, input_shape, weight_shape, **kwargs)
    per_image = w.shape[1] * geometry.groups * math.prod(geometry.kernel_size) * input_shape[2] * input_shape[3]
    for limit in ("COLUMN_LIMIT", "TILING_COLUMNS"):
        monkeypatch.setattr(strategies, limit, per_image if budget == "image_by_image" else per_image // 2)
    blocks, original = [], strategies._blocks

    def recorded(*args, **kwargs):
        these = list(original(*args, **kwargs))
        blocks.extend(these)
        return these
    monkeypatch.setattr(strategies, "_blocks", recorded)
    grad_output = torch.randn(input_shape[0], w.shape[1] * geometry.groups, *geometry.input_size, dtype=dtype)
    with strategies.forced(correlate_pair=name):
        _, _, grad_bias = strategies.backward_pair(op, grad_output, x, w, geometry, bias=True)
        pair_blocks = list(blocks)
        assert strategies.backward_pair(op, grad_output, x, w, geometry)[2] is None
        check_against_torch(op, input_shape, weight_shape, dtype=dtype, **kwargs)
    assert_close_to_torch(grad_bias, grad_output.sum((0, 2, 3)), f"{case} {budget} {name}")
    whole_images = [r0 == 0 and r1 == input_shape[2] for _, _, r0, r1 in pair_blocks]
    assert all(n1 - n0 == 1 for n0, n1, _, _ in pair_blocks) and all(whole_images) == (budget == "image_by_image")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", ["col2im", "col2im_folded"])
@pytest.mark.parametrize("case", ["transposed_taps_tile_the_image", "transposed_taps_tile_the_image_in_column_pairs",
                                  "transposed_k4_s2", "transposed_output_padding"])
def test_col2im_adds_the_bias_to_its_product_where_the_taps_tile_the_image_and_to_the_image_elsewhere(case, name, dtype,
                                                                                                     monkeypatch):
    """Folded into the product (every position receives one tap) or added after: ConvTranspose2d's forward with
    bias is PyTorch's either way, whole or block of images by block."""
    op, input_shape, weight_shape, kwargs = CASES[case]
    for limit in (strategies.TILING_COLUMNS, 1):
        monkeypatch.setattr(strategies, "TILING_COLUMNS", limit)
        with strategies.forced(correlate_transpose=name):
            check_against_torch(op, input_shape, weight_shape, dtype=dtype, **kwargs)


def test_explain_names_a_strategy_and_a_reason_for_each_contraction():
    for op, input_shape, weight_shape, kwargs in CASES.values():
        explained = convbook.explain(op, input_shape, weight_shape, **kwargs)
        assert set(explained) == {"forward", "grad_input", "grad_weight", "backward"}
        for role, (name, reason) in explained.items():
            contraction = strategies.CONTRACTIONS[["forward", "grad_input", "grad_weight", "backward"].index(role)
                                                  if op == "conv2d" else
                                                  ["grad_input", "forward", "grad_weight", "backward"].index(role)]
            assert (name in strategies.STRATEGIES[contraction] or role == "backward" and name in ("phase", "separate")) and reason


def test_explain_reports_what_forced_sets_and_forced_is_undone_after_the_block():
    shape = ((8, 64, 56, 56), (64, 64, 3, 3))
    before = convbook.explain("conv2d", *shape, padding=1)
    with strategies.forced("shifted"):
        assert convbook.explain("conv2d", *shape, padding=1)["forward"][0] == "shifted"
        assert convbook.explain("conv2d", *shape, padding=1)["grad_weight"][0] == "shifted"
    assert convbook.explain("conv2d", *shape, padding=1) == before


def test_the_dispatcher_picks_by_shape():
    assert convbook.explain("conv2d", (8, 128, 56, 56), (128, 1, 3, 3), padding=1, groups=128)["forward"][0] == "depthwise"
    assert convbook.explain("conv2d", (8, 512, 7, 7), (512, 512, 3, 3), padding=1)["forward"][0] == "im2col_folded"
    assert convbook.explain("conv2d", (8, 128, 28, 28), (128, 16, 3, 3), padding=1, groups=8)["forward"][0] == "shifted"
    assert convbook.explain("conv2d", (8, 64, 56, 56), (64, 64, 3, 3), padding=1)["forward"][0] == "winograd"
    assert convbook.explain("conv2d", (8, 64, 56, 56), (64, 64, 3, 3), padding=1)["grad_weight"][0] == "winograd"
    assert convbook.explain("conv2d", (8, 64, 56, 56), (64, 64, 3, 3), padding=2, dilation=2)["forward"][0] == "im2col"
    assert convbook.explain("conv2d", (8, 8, 56, 56), (64, 8, 3, 3), padding=1)["forward"][0] == "im2col"
    assert convbook.explain("conv2d", (8, 64, 56, 56), (128, 64, 3, 3), stride=2, padding=1)["forward"][0] == "im2col"
    assert convbook.explain("conv2d", (8, 32, 64, 64), (32, 32, 7, 7), padding=3)["forward"][0] == "fft"
    assert convbook.explain("conv2d", (8, 128, 28, 28), (128, 128, 5, 5), padding=2)["grad_weight"][0] == "row_shifted"
    assert convbook.explain("conv_transpose2d", (8, 64, 28, 28), (64, 16, 4, 4), stride=2, padding=1,
                            groups=4)["grad_weight"][0] == "shifted"
    assert convbook.explain("conv_transpose2d", (8, 64, 56, 56), (64, 32, 2, 2), stride=2)["forward"][0] == "col2im"
    assert convbook.explain("conv2d", (0, 3, 5, 5), (2, 3, 3, 3))["forward"][0] == "plain"


def test_the_dispatcher_says_where_the_depthwise_taps_run():
    # on the image itself where the output grid is the input grid, on phase planes otherwise
    same = convbook.explain("conv2d", (8, 128, 56, 56), (128, 1, 3, 3), padding=1, groups=128)
    strided = convbook.explain("conv2d", (8, 128, 56, 56), (128, 1, 3, 3), stride=2, padding=1, groups=128)
    assert same["forward"][0] == strided["forward"][0] == "depthwise"
    assert "on the image itself" in same["forward"][1] and "phase planes" in strided["forward"][1]


def test_forced_is_thread_local():
    seen = {}
    with strategies.forced("shifted"):
        thread = threading.Thread(target=lambda: seen.update(
            convbook.explain("conv2d", (8, 64, 56, 56), (64, 64, 3, 3), padding=1)))
        thread.start()
        thread.join()
    assert seen["forward"][0] != "shifted"


def test_forcing_an_unknown_strategy_is_an_error():
    with pytest.raises(ValueError):
        with strategies.forced("toom_cook"):      # Winograd's larger cousins are not strategies
            pass


@pytest.mark.parametrize("contraction,name", NAMED_STRATEGIES, ids=lambda v: v)
def test_results_never_alias_a_reused_buffer_and_inputs_are_not_modified(contraction, name):
    depthwise = name == "depthwise"
    make = lambda seed: (torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(seed)),  # noqa: E731
                         torch.randn(4, 1 if depthwise else 4, 3, 3, generator=torch.Generator().manual_seed(seed + 1)))
    kwargs = dict(padding=1, groups=4 if depthwise else 1)
    with strategies.forced(**{contraction: name}):
        x, w = make(0)
        x_copy, w_copy = x.clone(), w.clone()
        first = [convbook.conv2d(x, w, **kwargs), *convbook.conv2d_backward(torch.ones(2, 4, 8, 8), x, w, **kwargs)[:2]]
        kept = [t.clone() for t in first]
        second_x, second_w = make(5)
        convbook.conv2d(second_x, second_w, **kwargs)
        convbook.conv2d_backward(torch.ones(2, 4, 8, 8), second_x, second_w, **kwargs)
    for before, after in zip(kept, first):
        assert torch.equal(before, after)
    assert torch.equal(x, x_copy) and torch.equal(w, w_copy)


def test_buffers_are_per_thread_and_bounded():
    workspace.clear()
    mine = workspace.buffer("test", (1000,), torch.float32, "cpu")
    theirs = {}
    thread = threading.Thread(target=lambda: theirs.update(t=workspace.buffer("test", (1000,), torch.float32, "cpu")))
    thread.start()
    thread.join()
    assert mine.data_ptr() != theirs["t"].data_ptr()
    assert workspace.buffer("test", (10,), torch.float32, "cpu").data_ptr() == mine.data_ptr()
    held = workspace.held_bytes()
    workspace.buffer("huge", (workspace.SLOT_LIMIT_BYTES // 4 + 1,), torch.float32, "cpu")
    assert workspace.held_bytes() == held
    workspace.clear()
    assert workspace.held_bytes() == 0


def test_a_frame_is_known_kept_only_while_its_slot_serves_the_same_frame():
    workspace.clear()
    request = lambda frame: workspace.framed_buffer("test", (4, 4), frame, torch.float32, "cpu")[1]  # noqa: E731
    assert not request((1, 3, 1, 3))
    assert request((1, 3, 1, 3))
    assert not request((0, 3, 1, 3))                     # another frame in the slot
    workspace.buffer("test", (4, 4), torch.float32, "cpu")
    assert not request((0, 3, 1, 3))                     # a plain request may have written anywhere
    assert not workspace.framed_buffer("test", (2, 8), (0, 3, 1, 3), torch.float32, "cpu")[1]
    huge = (workspace.SLOT_LIMIT_BYTES // 4 + 1,)
    assert not workspace.framed_buffer("test", huge, None, torch.float32, "cpu")[1]
    assert not workspace.framed_buffer("test", huge, None, torch.float32, "cpu")[1]   # fresh, never kept
    workspace.clear()


@pytest.mark.parametrize("name", ["im2col", "shifted", "depthwise"])
def test_a_padded_copy_reused_call_after_call_is_rezeroed_after_another_use_of_its_slot(name):
    # the second call writes only the window (its zeros are still there); after the slots are
    # overwritten with NaN by plain requests, the third call must zero the border again
    depthwise = name == "depthwise"
    shapes = ((2, 4, 7, 6), (4, 1 if depthwise else 4, 3, 3))
    kwargs = dict(padding=(2, 1), groups=4 if depthwise else 1)
    with strategies.forced(correlate=name):
        for call in range(3):
            if call == 2:
                for slot in ("padded", "planes"):
                    workspace.buffer(slot, (1 << 12,), torch.float64, "cpu").fill_(math.nan)
            check_against_torch("conv2d", *shapes, **kwargs)


@pytest.mark.parametrize("name", list(strategies.STRATEGIES["correlate"]))
def test_a_result_written_into_a_view_is_the_fresh_result(name):
    # run(..., into=view): the phases of the adjoint write their correlation straight into every
    # s-th row and column of the image; strategies in WRITES_INTO copy there from their buffer
    depthwise = name == "depthwise"
    x = torch.randn(2, 4, 7, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    w = torch.randn(4, 1 if depthwise else 2, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    geometry = checks.conv2d_geometry(x, w, None, 1, 1, 1, 4 if depthwise else 2)
    image = torch.full((2, 4, 14, 12), math.nan, dtype=torch.float64)
    with strategies.forced(correlate=name):
        fresh = strategies.run("correlate", x, w, geometry)
        written = strategies.run("correlate", x, w, geometry, into=image[:, :, 1::2, ::2])
    assert written.data_ptr() == image[:, :, 1::2, ::2].data_ptr() and torch.equal(written, fresh)
    assert image[:, :, ::2].isnan().all() and image[:, :, 1::2, 1::2].isnan().all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("depth", [0, math.inf], ids=["positions_major", "channel_major"])
def test_im2col_products_written_positions_major_or_straight_into_y_are_pytorchs(depth, dtype, monkeypatch):
    """Both layouts of :func:`strategies._product_into` (forced by its depth threshold), forward and the
    stride-1 input gradient's pair, grouped and not."""
    monkeypatch.setattr(strategies, "POSITIONS_MAJOR_DEPTH", depth)
    for case in ("conv_3x3_padded", "conv_groups", "conv_large_kernel", "conv_stride_2"):
        op, input_shape, weight_shape, kwargs = CASES[case]
        with strategies.forced(correlate="im2col", correlate_pair="im2col"):
            check_against_torch(op, input_shape, weight_shape, dtype=dtype, **kwargs)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("long_rows", [True, False], ids=["as_X_col_Y_T", "as_Y_X_col_T"])
def test_both_orientations_of_the_weight_gradients_products_are_pytorchs(long_rows, dtype, monkeypatch):
    """:data:`strategies.WEIGHT_ROWS_LONGER` on and off: the per-image weight-gradient products, alone and in
    the pairs, grouped and not, in one block and in bands of rows (accumulated across blocks)."""
    monkeypatch.setattr(strategies, "WEIGHT_ROWS_LONGER", long_rows)
    for case in ("conv_3x3_padded", "conv_groups", "conv_stride_2", "transposed_k4_s2"):
        op, input_shape, weight_shape, kwargs = CASES[case]
        with strategies.forced(correlate="im2col", correlate_weight="im2col", correlate_pair="im2col"):
            check_against_torch(op, input_shape, weight_shape, dtype=dtype, **kwargs)
    monkeypatch.setattr(strategies, "COLUMN_BUDGET", 0)
    with strategies.forced(correlate_weight="im2col"):
        check_against_torch("conv2d", (2, 3, 11, 10), (4, 3, 5, 3), dtype=dtype, padding=(2, 1), stride=(1, 2))


@pytest.mark.parametrize("kernel, stride, dilation", [((7, 7), (2, 2), (1, 1)), ((5, 4), (2, 2), (3, 1)),
                                                      ((4, 4), (2, 2), (1, 1)), ((5, 3), (3, 1), (1, 2)),
                                                      ((3, 3), (2, 2), (1, 1))])
def test_the_phase_plane_views_hold_exactly_the_windows_of_the_strided_view(kernel, stride, dilation):
    """x_pad[s·i + d·u] = P_(du mod s)[i + ⌊du/s⌋]: the views _windows builds from the phase planes, placed at
    their taps, are the window view of chapter 2 entry for entry -- and the planes are used exactly where the
    kernel has at least PHASE_WINDOWS taps per phase."""
    x = torch.randn(2, 3, 17, 16, dtype=torch.float64)
    weight = torch.randn(4, 3, *kernel, dtype=torch.float64)
    geometry = checks.conv2d_geometry(x, weight, None, stride, (2, 1), dilation, 1)
    views = strategies._windows(x, geometry)
    many = kernel[0] * kernel[1] >= strategies.PHASE_WINDOWS * stride[0] * stride[1]
    assert len(views) == (len(strategies.taps_by_phase(kernel[0], stride[0], dilation[0]))
                          * len(strategies.taps_by_phase(kernel[1], stride[1], dilation[1])) if many else 1)
    assembled = torch.full((2, 3, *kernel, *geometry.output_size), float("nan"), dtype=torch.float64)
    for us, vs, view in views:
        assembled[:, :, us, vs] = view
    expected = convbook.kernels.windows(convbook.kernels.pad_to_extent(x, geometry), geometry).permute(0, 1, 4, 5, 2, 3)
    assert torch.equal(assembled, expected)


@pytest.mark.parametrize("padding, kernel, dilation", [((1, 1), (3, 3), (1, 1)), ("same", (4, 2), (1, 3)),
                                                        ((3, 3), (2, 2), (1, 1)), ((0, 2), (3, 3), (2, 1)),
                                                        ((2, 0), (5, 3), (1, 1))])
@pytest.mark.parametrize("parts", [1, 2])
def test_shared_borders_give_every_tap_the_index_maps_entry(padding, kernel, dilation, parts):
    """Stride 1 with shared borders (:func:`strategies._phase_planes`): rows share their zero columns and
    images their zero rows, so R·Q shrinks -- and still, by the index map h = i + d·u − p, every tap's
    shifted columns hold x[n, c, h, w] at each output (n, i, j), and zero where (h, w) falls outside x:
    the reads past a row's end, an image's bottom, or the last channel (into the buffer's guard) find zeros."""
    x = torch.randn(4, 3, 6, 7, dtype=torch.float64) + 10       # no zero inside x
    workspace.buffer("planes", (1 << 12,), x.dtype, x.device).fill_(float("nan"))   # nor in the reused buffer
    weight = torch.ones(2, 3, *kernel, dtype=torch.float64)
    geometry = checks.conv2d_geometry(x, weight, None, 1, padding, dilation, 1)
    planes, rows, cols = strategies._phase_planes(x, geometry, "planes", parts=parts, shared=True)
    full = [geometry.output_size[a] + dilation[a] * (kernel[a] - 1) for a in (0, 1)]
    pads = [(geometry.padding[a], full[a] - geometry.padding[a] - x.shape[2 + a]) for a in (0, 1)]
    assert (rows, cols) == tuple(full[a] - max(0, min(*pads[a], full[a] - geometry.output_size[a])) for a in (0, 1))
    m = x.shape[0] // parts
    span = strategies.plane_span(m, rows, cols, geometry)
    for u, v, source in strategies._shifted_sources(planes, geometry, cols, parts, span):
        for n in range(x.shape[0]):
            for i in range(geometry.output_size[0]):
                for j in range(geometry.output_size[1]):
                    h = input_position(i, u, 1, geometry.padding[0], dilation[0])
                    w = input_position(j, v, 1, geometry.padding[1], dilation[1])
                    inside = 0 <= h < x.shape[2] and 0 <= w < x.shape[3]
                    read = source[n // m, :, (n % m) * rows * cols + i * cols + j]
                    assert torch.equal(read, x[n, :, h, w] if inside else torch.zeros(3, dtype=x.dtype))


@pytest.fixture
def threads():
    """Set torch's thread count inside a test; the count the suite runs with is put back after."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.mark.parametrize("count", [1, 2, 3])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_folded_columns_in_one_part_per_thread_are_pytorchs(count, dtype, threads):
    """The folded strategies split a chunk's images into one part per thread (:func:`strategies._parts`)
    where the threads divide them, else one part: batch 6 is 6, 2 or 3 parts of 1-6 images, batch 5 one part
    (or five of one image) -- forward, input gradient and weight gradient, grouped and not, and a
    product written positions-major (deep enough) and channel-major."""
    threads(count)
    assert strategies._parts(6) == (count if count > 1 else 1) and strategies._parts(5) == (5 if count == 5 else 1)
    with strategies.forced(correlate="im2col_folded", correlate_transpose="col2im_folded",
                           correlate_weight="im2col_folded", correlate_pair="im2col_folded"):
        for batch in (6, 5):
            check_against_torch("conv2d", (batch, 3, 7, 8), (4, 3, 3, 3), dtype=dtype, padding=1)
            check_against_torch("conv2d", (batch, 4, 6, 6), (4, 2, 3, 3), dtype=dtype, stride=2, groups=2)
            check_against_torch("conv_transpose2d", (batch, 4, 5, 6), (4, 3, 4, 4), dtype=dtype, stride=2, padding=1)
    with strategies.forced(correlate="im2col", correlate_weight="im2col", correlate_pair="im2col"):
        check_against_torch("conv2d", (6, 3, 7, 8), (4, 3, 3, 3), dtype=dtype, padding=1)


@pytest.mark.parametrize("count", [1, 2, 3])
def test_shifted_products_in_one_part_per_thread_are_pytorchs(count, threads):
    """The shifted strategies lay the phase planes out in one part of the images per thread (:func:`strategies._parts`)
    and run every tap's products of all parts and groups as one batch, the weight gradient's parts summed at the
    end: batch 6 in 1, 2 or 3 parts, batch 5 in one -- stride 1 and 2, dilated, grouped, transposed (whose phases
    the shifted correlation writes in place), forward and both gradients, and the pair that shares the planes.

    float64 only (1e-12): the claim is the index map. In float32 the weight gradient of the first case sums 336
    products whose partial sums reach about 20, and PyTorch's own result lies 1.1e-5 from the float64 one (ours
    5.4e-6), so the two float32 results differ by more than ``assert_close``'s unscaled 1e-5 by rounding alone."""
    threads(count)
    dtype = torch.float64
    with strategies.forced("shifted"):
        for batch in (6, 5):
            check_against_torch("conv2d", (batch, 3, 7, 8), (4, 3, 3, 3), dtype=dtype, padding=1)
            check_against_torch("conv2d", (batch, 4, 9, 8), (6, 2, 3, 2), dtype=dtype, stride=2, padding=(1, 0),
                                dilation=(2, 1), groups=2)
    with strategies.forced(correlate="shifted", correlate_weight="shifted", correlate_transpose="phase"):
        check_against_torch("conv_transpose2d", (6, 4, 5, 6), (4, 3, 4, 4), dtype=dtype, stride=2, padding=1)
    with strategies.forced(correlate_pair="shifted"):
        check_against_torch("conv_transpose2d", (6, 4, 5, 6), (4, 4, 2, 2), dtype=dtype, stride=2, groups=2)


@pytest.mark.parametrize("count", [1, 2, 3])
def test_the_fft_strategy_splits_its_frequency_rows_by_thread_exactly(count, threads):
    """The tap spectrum and the weight gradient's row sums of :mod:`convbook.spectral` split a chunk's
    frequency rows into one part per thread where they divide it (:func:`spectral._by_thread`): even and odd
    transform lengths (S_h = 8 and 9 here), at 1, 2 and 3 threads, forward and backward."""
    threads(count)
    with strategies.forced("fft"):
        for size in (6, 7):
            check_against_torch("conv2d", (2, 3, size, 7), (4, 3, 5, 5), padding=2)


@pytest.mark.parametrize("count", [1, 2])
@pytest.mark.parametrize("block", ["whole_batch", "one_image_a_block", "two_images_in_two_parts"])
def test_winograd_works_block_of_images_by_block_and_part_by_part(block, count, threads, monkeypatch):
    """Winograd transforms and multiplies a few images at a time (:data:`winograd.BLOCK`), split into one part per
    thread where U is small (:func:`winograd.parts`), the weight gradient summed over blocks and parts: batch 6
    whole, image by image, or in blocks of 2 in two parts -- odd and even output sizes (the tiles overhang), padding
    larger than the kernel (the adjoint's is negative), dilated and grouped, forward, pair and weight gradient."""
    threads(count)
    limit = {"whole_batch": 1 << 30, "one_image_a_block": 1, "two_images_in_two_parts": None}[block]
    if limit is None:                      # 2 images fit a block, and U (16·O·C_g) is small next to them
        monkeypatch.setattr(winograd, "image_blocks", lambda batch, per_image, largest: ((n, min(batch, n + 2)) for n in range(0, batch, 2)))
        monkeypatch.setattr(winograd, "parts", lambda images, u, v: 2 if images == 2 else 1)
    else:
        monkeypatch.setattr(winograd, "BLOCK", limit)
    dtype = torch.float64
    with strategies.forced("winograd"):
        check_against_torch("conv2d", (6, 3, 7, 8), (4, 3, 3, 3), dtype=dtype, padding=1)
        check_against_torch("conv2d", (6, 2, 6, 9), (5, 2, 3, 3), dtype=dtype, padding=4)
        check_against_torch("conv2d", (6, 4, 9, 10), (6, 2, 3, 3), dtype=dtype, padding=(2, 3), dilation=(2, 3), groups=2)


def test_winograd_forced_where_its_tiles_do_not_fit_runs_im2col_and_says_so():
    """F(2 × 2, 3 × 3) is for 3 × 3 kernels at stride 1; forced on anything else, every contraction runs im2col
    (exactly PyTorch's), and explain() says which strategy ran."""
    with strategies.forced("winograd"):
        explained = convbook.explain("conv2d", (2, 3, 9, 9), (4, 3, 5, 5), padding=2)
        assert explained["forward"][0] == explained["grad_weight"][0] == "im2col"
        assert "winograd" in explained["forward"][1]
        assert convbook.explain("conv2d", (2, 3, 9, 9), (4, 3, 3, 3), padding=1)["forward"][0] == "winograd"
        for op, input_shape, weight_shape, kwargs in (CASES["conv_stride_2"], CASES["conv_large_kernel"],
                                                      CASES["transposed_k4_s2"]):
            check_against_torch(op, input_shape, weight_shape, **kwargs)


def test_winograd_transforms_are_the_matrices_of_the_book():
    """The transforms are sums of strided views; applied to the unit tiles they give back Bᵀ e B, G e Gᵀ and
    Aᵀ e A entry by entry (eq. perf-winograd), so the code and the equation cannot disagree."""
    b_t, g, a_t = (torch.tensor(m, dtype=torch.float64) for m in (winograd.B_T, winograd.G, winograd.A_T))
    geometry = checks.conv2d_geometry(torch.empty(1, 1, 2, 2), torch.empty(1, 1, 3, 3), None, 1, 1, 1, 1)
    for r in range(4):
        for q in range(4):
            tile = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
            tile[0, 0, r, q] = 1                       # one 4 × 4 tile: the whole input of a 2 × 2 output, padding 0
            v = winograd.input_transform(tile, checks.conv2d_geometry(tile, torch.empty(1, 1, 3, 3), None, 1, 0, 1, 1), 1)
            assert torch.equal(v.view(4, 4), b_t @ tile[0, 0] @ b_t.T)
    for u in range(3):
        for v_ in range(3):
            w = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
            w[0, 0, u, v_] = 1
            assert torch.equal(winograd.weight_transform(w, 1).view(4, 4), g @ w[0, 0] @ g.T)
    for xi in range(4):
        for nu in range(4):
            m = torch.zeros(1, 16, 1, 1, dtype=torch.float64)
            m[0, 4 * xi + nu] = 1
            y = torch.empty(1, 1, 2, 2, dtype=torch.float64)
            winograd.output_transform(m, geometry, y)
            assert torch.equal(y[0, 0], a_t @ m.view(4, 4) @ a_t.T)


# The forward's column matrix, kept for the weight gradient (strategies.keeping_columns)
STEM_LIKE = ((2, 3, 48, 48), (64, 3, 7, 7), dict(stride=2, padding=3))


def _counting_columns(monkeypatch) -> list:
    """Patch strategies._columns to record, per call, whether it built a fresh (kept) matrix."""
    calls, original = [], strategies._columns
    monkeypatch.setattr(strategies, "_columns", lambda *a, **k: calls.append(k.get("fresh", a[4] if len(a) > 4 else False))
                        or original(*a, **k))
    return calls


def test_the_stem_like_layer_is_im2col_forward_and_weight_gradient_with_nothing_paired():
    explained = convbook.explain("conv2d", STEM_LIKE[0], STEM_LIKE[1], **STEM_LIKE[2])
    assert [explained[k][0] for k in ("forward", "grad_weight", "backward")] == ["im2col", "im2col", "separate"]


def test_a_training_step_builds_the_column_matrix_once_for_forward_and_weight_gradient(monkeypatch):
    calls = _counting_columns(monkeypatch)
    check_against_torch("conv2d", *STEM_LIKE[:2], **STEM_LIKE[2])
    assert calls == [True]          # the forward's, fresh and kept; the weight gradient copied none


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", ["im2col", "im2col_folded"])
@pytest.mark.parametrize("case", ["conv_3x3_padded", "conv_stride_pair_dilation_pair", "conv_many_taps_per_phase_dilated",
                                  "conv_groups", "conv_1x1_stride_2"])
def test_kept_columns_give_pytorchs_weight_gradient_in_both_layouts(case, name, dtype, monkeypatch):
    monkeypatch.setattr(strategies, "COLUMN_BUDGET", 1000)   # the whole column matrix in one block
    calls = _counting_columns(monkeypatch)
    op, input_shape, weight_shape, kwargs = CASES[case]
    with strategies.forced(correlate=name, correlate_weight=name):
        check_against_torch(op, input_shape, weight_shape, dtype=dtype, **kwargs)
    assert calls == [True]


def test_columns_built_block_by_block_are_not_kept(monkeypatch):
    calls = _counting_columns(monkeypatch)
    op, input_shape, weight_shape, kwargs = CASES["conv_3x3_padded"]
    with strategies.forced(correlate="im2col", correlate_weight="im2col"):
        check_against_torch(op, input_shape, weight_shape, **kwargs)
    assert calls == [False] * 4     # two blocks of one image, in the forward and again in the weight gradient


def test_without_a_weight_gradient_the_forward_keeps_nothing(monkeypatch):
    calls = _counting_columns(monkeypatch)
    x, w = torch.randn(STEM_LIKE[0], requires_grad=True), torch.randn(STEM_LIKE[1])
    convbook.conv2d(x, w, **STEM_LIKE[2]).sum().backward()
    with torch.no_grad():
        convbook.conv2d(x, w.requires_grad_(), **STEM_LIKE[2])
    assert calls == [False, False]  # scratch columns both times
    assert strategies.kept_columns() is None


def test_kept_columns_serve_only_their_own_forward():
    """Two forwards of one weight on two inputs, the second before the first's backward: each backward
    uses its own input's columns (a stale matrix would give the wrong weight gradient)."""
    g = torch.Generator().manual_seed(3)
    x1, x2 = (torch.randn(STEM_LIKE[0], generator=g, dtype=torch.float64) for _ in range(2))
    dy1, dy2 = (torch.randn(2, 64, 24, 24, generator=g, dtype=torch.float64) for _ in range(2))
    w = torch.randn(STEM_LIKE[1], generator=g, dtype=torch.float64)
    grads = []
    for conv in (convbook.conv2d, torch.nn.functional.conv2d):
        leaf = w.clone().requires_grad_()
        y1, y2 = conv(x1, leaf, **STEM_LIKE[2]), conv(x2, leaf, **STEM_LIKE[2])
        ((y1 * dy1).sum() + (y2 * dy2).sum()).backward(retain_graph=True)
        first = leaf.grad.clone()
        (y2 * dy2).sum().backward()   # the graph kept its columns: a second backward reuses them
        grads.append((first, leaf.grad - first))
    for mine, ref in zip(*grads):
        assert_close_to_torch(mine, ref, "weight gradient")


@pytest.mark.parametrize("reentrant", [False, True], ids=["non_reentrant", "reentrant"])
def test_kept_columns_go_through_activation_checkpointing(reentrant):
    """torch.utils.checkpoint drops what a forward saved and recomputes it in the backward: the kept matrix is
    saved like x and w (save_for_backward), so it is dropped and rebuilt with them."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(STEM_LIKE[0], generator=g, dtype=torch.float64)
    w = torch.randn(STEM_LIKE[1], generator=g, dtype=torch.float64)
    grads = []
    for conv in (convbook.conv2d, torch.nn.functional.conv2d):
        leaves = x.clone().requires_grad_(), w.clone().requires_grad_()
        body = lambda a, b: conv(a, b, **STEM_LIKE[2]).sin()  # noqa: E731
        torch.utils.checkpoint.checkpoint(body, *leaves, use_reentrant=reentrant).sum().backward()
        grads.append([leaf.grad for leaf in leaves])
    for mine, ref in zip(*grads):
        assert_close_to_torch(mine, ref, "checkpointed gradient")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_kept_columns_of_any_memory_layout_give_pytorchs_weight_gradient(layout, monkeypatch):
    monkeypatch.setattr(strategies, "COLUMN_BUDGET", 1000)
    calls = _counting_columns(monkeypatch)
    op, input_shape, weight_shape, kwargs = CASES["conv_stride_2"]
    with strategies.forced(correlate="im2col", correlate_weight="im2col"):
        check_against_torch(op, input_shape, weight_shape, prepare=LAYOUTS[layout], **kwargs)
    assert calls == [True]
