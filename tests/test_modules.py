"""convbook.Conv2d and convbook.ConvTranspose2d are drop-ins for torch.nn's modules."""
import pytest
import torch

import convbook
from oracle import assert_close_to_torch

CONV_ARGS = [
    dict(in_channels=4, out_channels=6, kernel_size=3),
    dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=2, padding=1, dilation=(1, 2), groups=2, bias=False),
    dict(in_channels=4, out_channels=4, kernel_size=3, padding="same", groups=4),
    dict(in_channels=3, out_channels=2, kernel_size=4, padding="same", dilation=2, padding_mode="reflect"),
    dict(in_channels=3, out_channels=2, kernel_size=3, padding=2, padding_mode="replicate"),
    dict(in_channels=3, out_channels=2, kernel_size=3, stride=2, padding=(1, 2), padding_mode="circular"),
    dict(in_channels=3, out_channels=2, kernel_size=3, padding="valid", dtype=torch.float64),
]
TRANSPOSED_ARGS = [
    dict(in_channels=4, out_channels=6, kernel_size=3),
    dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=2, padding=1, output_padding=1, groups=2, bias=False),
    dict(in_channels=4, out_channels=2, kernel_size=4, stride=(2, 3), dilation=(1, 2), output_padding=(1, 0)),
    dict(in_channels=3, out_channels=3, kernel_size=3, stride=2, groups=3, dtype=torch.float64),
]


def pair_of_modules(mine, theirs, kwargs, seed=0):
    torch.manual_seed(seed)
    a = mine(**kwargs)
    torch.manual_seed(seed)
    b = theirs(**kwargs)
    return a, b


@pytest.mark.parametrize("kwargs", CONV_ARGS, ids=str)
def test_conv2d_module_has_pytorchs_parameters_initialisation_and_output(kwargs):
    mine, theirs = pair_of_modules(convbook.Conv2d, torch.nn.Conv2d, kwargs)
    assert isinstance(mine, torch.nn.Conv2d)
    assert [n for n, _ in mine.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    for p, q in zip(mine.parameters(), theirs.parameters()):
        assert p.shape == q.shape and p.dtype == q.dtype and torch.equal(p, q)
    x = torch.randn(2, kwargs["in_channels"], 9, 8, dtype=kwargs.get("dtype", torch.float32), requires_grad=True)
    y_mine, y_theirs = mine(x), theirs(x)
    assert_close_to_torch(y_mine, y_theirs, "output")
    g = torch.randn_like(y_theirs)
    grads_mine = torch.autograd.grad(y_mine, [x, *mine.parameters()], g)
    grads_theirs = torch.autograd.grad(y_theirs, [x, *theirs.parameters()], g)
    for a, b in zip(grads_mine, grads_theirs):
        assert_close_to_torch(a, b, "gradient")


@pytest.mark.parametrize("kwargs", TRANSPOSED_ARGS, ids=str)
def test_conv_transpose2d_module_has_pytorchs_parameters_initialisation_and_output(kwargs):
    mine, theirs = pair_of_modules(convbook.ConvTranspose2d, torch.nn.ConvTranspose2d, kwargs)
    assert isinstance(mine, torch.nn.ConvTranspose2d)
    for p, q in zip(mine.parameters(), theirs.parameters()):
        assert torch.equal(p, q)
    x = torch.randn(2, kwargs["in_channels"], 5, 4, dtype=kwargs.get("dtype", torch.float32), requires_grad=True)
    y_mine, y_theirs = mine(x), theirs(x)
    assert_close_to_torch(y_mine, y_theirs, "output")
    g = torch.randn_like(y_theirs)
    for a, b in zip(torch.autograd.grad(y_mine, [x, *mine.parameters()], g),
                    torch.autograd.grad(y_theirs, [x, *theirs.parameters()], g)):
        assert_close_to_torch(a, b, "gradient")


@pytest.mark.parametrize("mine, theirs, kwargs", [
    (convbook.Conv2d, torch.nn.Conv2d, CONV_ARGS[1]),
    (convbook.ConvTranspose2d, torch.nn.ConvTranspose2d, TRANSPOSED_ARGS[1]),
], ids=["Conv2d", "ConvTranspose2d"])
def test_state_dicts_are_interchangeable_in_both_directions(mine, theirs, kwargs):
    ours, torchs = mine(**kwargs), theirs(**kwargs)
    ours.load_state_dict(torchs.state_dict())
    assert all(torch.equal(p, q) for p, q in zip(ours.parameters(), torchs.parameters()))
    ours2, torchs2 = mine(**kwargs), theirs(**kwargs)
    torchs2.load_state_dict(ours2.state_dict())
    assert all(torch.equal(p, q) for p, q in zip(ours2.parameters(), torchs2.parameters()))
    assert list(ours.state_dict()) == list(torchs.state_dict())


@pytest.mark.parametrize("mine, theirs, kwargs", [
    *[(convbook.Conv2d, torch.nn.Conv2d, k) for k in CONV_ARGS],
    *[(convbook.ConvTranspose2d, torch.nn.ConvTranspose2d, k) for k in TRANSPOSED_ARGS],
])
def test_repr_is_pytorchs_apart_from_the_module_name(mine, theirs, kwargs):
    assert repr(mine(**kwargs)) == repr(theirs(**kwargs))  # both print the class name without module path


@pytest.mark.parametrize("output_size", [[11, 12], [12, 11], [2, 6, 12, 12], [11, 11]])
def test_output_size_picks_output_padding_as_pytorch_does(output_size):
    mine, theirs = pair_of_modules(convbook.ConvTranspose2d, torch.nn.ConvTranspose2d,
                                   dict(in_channels=4, out_channels=6, kernel_size=3, stride=2))
    x = torch.randn(2, 4, 5, 5)
    y_mine, y_theirs = mine(x, output_size=output_size), theirs(x, output_size=output_size)
    assert y_mine.shape == y_theirs.shape
    torch.testing.assert_close(y_mine, y_theirs)


def test_output_size_works_for_unbatched_input():
    mine, theirs = pair_of_modules(convbook.ConvTranspose2d, torch.nn.ConvTranspose2d,
                                   dict(in_channels=4, out_channels=6, kernel_size=3, stride=3, dilation=2))
    x = torch.randn(4, 5, 5)
    for size in ([17, 19], [6, 18, 17]):
        torch.testing.assert_close(mine(x, output_size=size), theirs(x, output_size=size))


@pytest.mark.parametrize("output_size", [[13, 13], (10, 11), [8], [1, 2, 3], torch.Size([2, 6, 9, 9])], ids=str)
def test_output_size_out_of_range_raises_pytorchs_error(output_size):
    kwargs = dict(in_channels=4, out_channels=6, kernel_size=3, stride=2)
    mine, theirs = convbook.ConvTranspose2d(**kwargs), torch.nn.ConvTranspose2d(**kwargs)
    x = torch.randn(2, 4, 5, 5)
    with pytest.raises(ValueError) as expected:
        theirs(x, output_size=output_size)
    with pytest.raises(ValueError) as actual:
        mine(x, output_size=output_size)
    assert str(actual.value) == str(expected.value)


def test_modules_accept_device_and_dtype():
    layer = convbook.Conv2d(2, 3, 3, device="cpu", dtype=torch.float64)
    assert layer.weight.dtype == torch.float64 and layer.weight.device.type == "cpu"
    assert layer(torch.randn(1, 2, 4, 4, dtype=torch.float64)).dtype == torch.float64
