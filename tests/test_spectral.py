"""Chapter 7's convolution theorem (the ``fft`` strategy): the transform is as long as the no-wrap bound
says and no shorter, the products of spectra are the three contractions (exactly on symbols, to
rounding against PyTorch), a non-finite result goes to the direct sums, half precision goes through
float32, and the dispatcher takes it only where it pays."""
import math

import pytest
import torch

import convbook
from convbook import checks, kernels, metrics, spectral, strategies, sweep, symbolic


def test_transform_lengths_are_7_smooth_and_no_shorter_than_needed():
    assert [spectral.smooth_size(n) for n in (1, 11, 13, 67, 69, 71)] == [1, 12, 14, 70, 70, 72]
    # r18-like 7×7 layer at 64×64, padding 3: max(H + p, H̃ + d(k − 1) − p, H̃) = max(67, 67, 64)
    assert spectral.transform_size(64, 64, 7, 1, 3, 1) == 70
    # stride 2: H̃ = 2·(32 − 1) + 1 = 63; padding 0 makes the second term the largest, 63 + 6 = 69
    assert spectral.transform_size(64, 32, 7, 2, 0, 1) == 70
    # padding wider than the kernel: the outputs themselves (H̃ = 9) set the length
    assert spectral.transform_size(5, 9, 2, 1, 3, 1) == 9


@pytest.mark.parametrize("name,case", symbolic.SPECTRAL_CASES.items(), ids=list(symbolic.SPECTRAL_CASES))
def test_products_of_spectra_are_the_three_contractions_on_symbols(name, case):
    results = symbolic.spectral_contractions(case)
    assert len(results) == 3 and all(r.all_equal and r.entries > 0 for r in results), results


@pytest.mark.parametrize("name,case", symbolic.SPECTRAL_CASES.items(), ids=list(symbolic.SPECTRAL_CASES))
def test_one_shorter_transform_wraps_and_the_identities_fail(name, case):
    assert not any(r.all_equal for r in symbolic.spectral_contractions(case, shorten=1))


def _geometry(input_shape, weight_shape, **kwargs):
    return checks.shape_geometry("conv2d", input_shape, weight_shape, **kwargs)


@pytest.mark.parametrize("shorten", [0, 1])
def test_at_the_bound_the_sums_are_exact_and_one_below_they_wrap(shorten, monkeypatch):
    # the smallest length the bound allows, not rounded up to a 7-smooth one -- and one less
    monkeypatch.setattr(spectral, "smooth_size", lambda n: n - shorten)
    geometry = _geometry((2, 3, 9, 8), (4, 3, 5, 3), padding=(2, 1))
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 9, 8, generator=generator, dtype=torch.float64)
    w = torch.randn(4, 3, 5, 3, generator=generator, dtype=torch.float64)
    error = metrics.errors(spectral.correlate(x, w, geometry), kernels.correlate_plain(x, w, geometry)).max_rel
    assert (error < 1e-12) if shorten == 0 else (error > 1e-3)


def test_a_non_finite_weight_gradient_is_taken_from_the_direct_sums():
    geometry = _geometry((2, 3, 9, 8), (4, 3, 3, 3), padding=1)
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    x[1, 2, 4, 4] = math.inf
    y = torch.randn(2, 4, 9, 8, dtype=torch.float64)
    from_fft = strategies.correlate_weight_fft(x, y, geometry)
    direct = strategies.correlate_weight_row_shifted(x, y, geometry)
    # the transform turns the inf into NaN across its channel's taps; the direct sums give ±inf there
    assert spectral.correlate_weight(x, y, geometry)[:, 2].isnan().all() and not direct.isnan().any()
    assert torch.equal(from_fft, direct)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_is_transformed_in_float32_and_rounded_back(dtype):
    geometry = _geometry((2, 3, 9, 8), (4, 3, 5, 5), padding=2)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 9, 8, generator=generator).to(dtype)
    w = torch.randn(4, 3, 5, 5, generator=generator).to(dtype)
    result = spectral.correlate(x, w, geometry)
    exact = kernels.correlate_plain(x.double(), w.double(), geometry)
    assert result.dtype == dtype
    # only the final rounding to the half format: within one unit in the last place of the result
    assert torch.allclose(result.double(), exact, rtol=torch.finfo(dtype).eps, atol=1e-6)


def test_in_float32_a_large_kernel_layer_is_as_accurate_as_pytorchs_own():
    # chapter 7: at this size no float32 result is elementwise within torch.testing's defaults of the
    # float64 one (PyTorch's own is not), so the claim is normwise -- max |a − e| / max |e| -- against the
    # float64 result of the same operands: the transform's rounding is spread over all outputs alike
    assert convbook.explain("conv2d", (8, 16, 32, 32), (16, 16, 7, 7), padding=3)["forward"][0] == "fft"
    generator = torch.Generator().manual_seed(0)
    x, w, grad_output = (torch.randn(*shape, generator=generator) for shape in
                         ((8, 16, 32, 32), (16, 16, 7, 7), (8, 16, 32, 32)))
    b = torch.randn(16, generator=generator)
    exact = sweep.results(torch.nn.functional.conv2d, *(t.double() for t in (x, w, b, grad_output)), padding=3)
    ours = sweep.results(convbook.conv2d, x, w, b, grad_output, padding=3)
    native = sweep.results(torch.nn.functional.conv2d, x, w, b, grad_output, padding=3)
    for field in ("output", "grad_input", "grad_weight"):
        mine, theirs = (metrics.errors(r[field], exact[field]).max_rel for r in (ours, native))
        assert mine <= 4 * torch.finfo(torch.float32).eps and mine <= 2 * theirs, (field, mine, theirs)


def test_the_dispatcher_takes_the_fft_where_the_direct_sums_do_400_multiply_adds_per_frequency():
    lk7 = convbook.explain("conv2d", (8, 32, 64, 64), (32, 32, 7, 7), padding=3)
    assert lk7["forward"][0] == lk7["grad_weight"][0] == "fft" and "637" in lk7["forward"][1]
    assert convbook.explain("conv2d", (8, 32, 64, 64), (32, 32, 11, 11), padding=5)["grad_weight"][0] == "fft"
    # batch 1: the tap spectrum is made for one image's worth of sums
    assert convbook.explain("conv2d", (1, 32, 64, 64), (32, 32, 7, 7), padding=3)["forward"][0] == "row_shifted"
    # 5×5 on 128 channels, 3×3, strided and grouped layers keep the direct strategies (or Winograd's, for 3×3)
    assert convbook.explain("conv2d", (8, 128, 28, 28), (128, 128, 5, 5), padding=2)["forward"][0] == "row_shifted"
    assert convbook.explain("conv2d", (8, 64, 56, 56), (64, 64, 3, 3), padding=1)["forward"][0] == "winograd"
    assert convbook.explain("conv2d", (2, 3, 224, 224), (64, 3, 7, 7), stride=2, padding=3)["forward"][0] != "fft"
    assert convbook.explain("conv2d", (8, 32, 64, 64), (32, 8, 7, 7), padding=3, groups=4)["forward"][0] != "fft"
