"""The symbolic proofs of chapters 3 and 4, run as tests: exact sympy equality on tiny cases."""
from __future__ import annotations

from itertools import product

import pytest

from convbook import reference, symbolic
from convbook.symbolic import CONV2D_CASES, CONV_TRANSPOSE2D_CASES, Case

conv2d_cases = pytest.mark.parametrize("case", CONV2D_CASES.values(), ids=CONV2D_CASES.keys())
transpose_cases = pytest.mark.parametrize("case", CONV_TRANSPOSE2D_CASES.values(), ids=CONV_TRANSPOSE2D_CASES.keys())


def assert_all_equal(results):
    for result in results:
        assert result.entries > 0 and result.all_equal, result


@conv2d_cases
def test_sympy_conv2d_gradients_equal_the_derivative_of_the_trilinear_form(case):
    assert_all_equal(symbolic.conv2d_gradients(case))


@conv2d_cases
def test_sympy_grad_input_equals_transposed_convolution_of_G(case):
    assert_all_equal(symbolic.grad_input_is_transposed_convolution(case))


@conv2d_cases
def test_sympy_grad_input_is_a_convolution_of_zero_inserted_G_with_the_flipped_kernel(case):
    assert_all_equal([symbolic.grad_input_is_flipped_kernel_convolution(case)])


def test_sympy_grad_input_crops_when_padding_exceeds_the_kernel_span():
    case = Case((1, 2, 5, 5), (2, 2, 2, 2), padding=(2, 2))
    assert symbolic.flipped_padding(case) == ((-1, -1), (-1, -1))
    assert_all_equal([symbolic.grad_input_is_flipped_kernel_convolution(case)])


@conv2d_cases
def test_sympy_grad_weight_is_a_convolution_with_stride_and_dilation_swapped(case):
    assert_all_equal([symbolic.grad_weight_is_convolution_with_stride_and_dilation_swapped(case)])


@pytest.mark.parametrize("case", [CONV2D_CASES["dilation 2, groups 2"],
                                  Case((2, 2, 5, 4), (4, 2, 3, 2), padding=(1, 2), dilation=(1, 2)),
                                  Case((1, 2, 4, 5), (2, 2, 2, 2), padding=(3, 0))],
                         ids=["dilation 2, groups 2", "batch 2, asymmetric kernel", "padding beyond the kernel"])
def test_sympy_at_stride_1_the_weight_gradient_reads_the_input_gradients_columns_of_G(case):
    assert_all_equal([symbolic.grad_weight_from_the_adjoint_columns(case)])


def test_sympy_the_pair_identity_is_refused_at_stride_2():
    with pytest.raises(ValueError):
        symbolic.grad_weight_from_the_adjoint_columns(CONV2D_CASES["stride 2, padding 1"])


def test_sympy_gradients_hold_with_a_batch_and_unequal_strides():
    case = Case((2, 2, 7, 6), (2, 1, 3, 2), stride=(3, 2), padding=(2, 1), dilation=(1, 2), groups=2)
    assert_all_equal(symbolic.conv2d_gradients(case) + symbolic.grad_input_is_transposed_convolution(case)
                     + [symbolic.grad_input_is_flipped_kernel_convolution(case),
                        symbolic.grad_weight_is_convolution_with_stride_and_dilation_swapped(case)])


@transpose_cases
def test_sympy_conv_transpose_matrix_is_transpose_of_conv_matrix(case):
    assert_all_equal([symbolic.conv_transpose_matrix_is_transpose(case)])


@transpose_cases
def test_sympy_conv_transpose_gradients_are_a_conv2d_and_a_correlation(case):
    assert_all_equal(symbolic.conv_transpose2d_gradients(case))


def test_exact_comparison_detects_a_wrong_stride():
    case = CONV2D_CASES["stride 2, padding 1"]
    x, w, grad_output = symbolic.conv2d_symbols(case)
    truth = symbolic.conv2d_derivative(case, x, w, grad_output, x)
    wrong = reference.conv2d_grad_input(grad_output, w, case.input_shape, (1, 1), case.padding)
    result = symbolic.equality("stride forgotten", case.describe(), wrong, truth)
    assert result.entries == truth.shape[0] * truth.shape[1] * truth.shape[2] * truth.shape[3]
    assert not result.all_equal


def test_exact_comparison_detects_an_unflipped_kernel():
    case = CONV2D_CASES["stride 2, padding 1"]
    x, w, grad_output = symbolic.conv2d_symbols(case)
    truth = symbolic.conv2d_derivative(case, x, w, grad_output, x)
    channel_swap_only = symbolic.symbols("unused", (case.weight_shape[1], case.weight_shape[0], *case.weight_shape[2:]))
    for o, c, u, v in product(*(range(n) for n in case.weight_shape)):
        channel_swap_only[c, o, u, v] = w[o, c, u, v]
    before, after = symbolic.flipped_padding(case)
    derived = reference.conv2d(symbolic.zero_insert(grad_output, case.stride), channel_swap_only, None, (1, 1),
                               before, case.dilation, padding_after=after)
    assert not symbolic.equality("kernel not flipped", case.describe(), derived, truth).all_equal


def test_sympy_conv_transpose_with_output_padding_beyond_the_stride_is_the_adjoint_of_a_cropped_conv():
    case = Case((1, 2, 3, 3), (2, 2, 2, 2), padding=(1, 1), dilation=(2, 2), output_padding=(1, 1))
    assert_all_equal([symbolic.conv_transpose_matrix_is_transpose(case)] + symbolic.conv_transpose2d_gradients(case))


SAME_GRID_DEPTHWISE = {
    "3x3, padding 1": Case((1, 2, 4, 5), (2, 1, 3, 3), padding=(1, 1), groups=2),
    "3x2 dilated, no centre column": Case((1, 2, 4, 5), (2, 1, 3, 2), padding=(1, 1), dilation=(1, 2), groups=2),
    "5x5 on a 3x4 image": Case((2, 1, 3, 4), (1, 1, 5, 5), padding=(2, 2), groups=1),
}


@pytest.mark.parametrize("case", SAME_GRID_DEPTHWISE.values(), ids=SAME_GRID_DEPTHWISE.keys())
def test_sympy_depthwise_on_its_own_grid_is_masked_shifts_of_the_flattened_planes(case):
    assert_all_equal([symbolic.depthwise_on_its_own_grid(case)])
    # the masks are what makes it exact: without them a shift past a row's end reads the next row
    unmasked = symbolic.depthwise_on_its_own_grid(case, masked=False)
    assert unmasked.entries > 0 and not unmasked.all_equal


@pytest.mark.parametrize("case", symbolic.PHASE_PLANE_CASES.values(), ids=symbolic.PHASE_PLANE_CASES.keys())
def test_sympy_strided_columns_read_from_the_phase_planes_give_the_convolution(case):
    assert_all_equal([symbolic.im2col_from_phase_planes(case)])


@pytest.mark.parametrize("case", symbolic.SHARED_BORDER_CASES.values(), ids=symbolic.SHARED_BORDER_CASES.keys())
def test_sympy_shifted_products_on_shared_zero_borders_give_the_convolution(case):
    assert_all_equal([symbolic.shared_borders(case)])


@pytest.mark.parametrize("name", ["3 × 3, padding 1, 2 images", "padding (2, 0), dilation (1, 2), groups 2"])
def test_sympy_shared_borders_trimmed_one_more_read_x_where_zeros_belong(name):
    # where min(p_before, p_after) is what limits the trim, one row and one column fewer and some tap reads x
    assert not symbolic.shared_borders(symbolic.SHARED_BORDER_CASES[name], extra_trim=1).all_equal


@pytest.mark.parametrize("case", symbolic.CHANNELS_LAST_CASES.values(), ids=symbolic.CHANNELS_LAST_CASES.keys())
def test_sympy_rows_per_position_read_channels_last_give_the_forward_and_the_weight_gradient(case):
    assert_all_equal(symbolic.channels_last_rows(case))


@pytest.mark.parametrize("case", symbolic.WINOGRAD_CASES.values(), ids=symbolic.WINOGRAD_CASES.keys())
def test_sympy_winograd_tiles_give_the_forward_and_the_weight_gradient(case):
    assert_all_equal(symbolic.winograd_tiles(case))
