"""convbook works wherever PyTorch's convolutions work, and agrees with them there: every dtype
PyTorch convolves, forward-mode AD, torch.func's transforms, torch.compile, on every device.

Each claim is checked against PyTorch on the same operands (book appendix "Complex convolution"
derives the complex gradients)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import forward_ad, gradcheck, gradgradcheck
from torch.func import grad, hessian, jacfwd, jacrev, vmap

import convbook
from convbook.compare import grad_output_like, operands, run_both
from convbook.metrics import TOLERANCE, errors
from convbook.sweep import compare_config, random_configs
from oracle import assert_close_to_torch

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
OPS = {"conv2d": (convbook.conv2d, F.conv2d), "conv_transpose2d": (convbook.conv_transpose2d, F.conv_transpose2d)}
CASES = {  # op -> {name: (input shape, weight shape, keyword arguments)}
    "conv2d": {
        "strided_grouped": ((2, 4, 7, 6), (6, 2, 3, 3), dict(stride=2, padding=1, groups=2)),
        "dilated_rectangular": ((1, 3, 6, 7), (4, 3, 2, 3), dict(dilation=2, padding=(1, 0))),
        "unbatched_same": ((3, 5, 5), (2, 3, 3, 3), dict(padding="same")),
    },
    "conv_transpose2d": {
        "strided_grouped": ((2, 4, 5, 4), (4, 3, 3, 3), dict(stride=2, padding=1, output_padding=1, groups=2)),
        "dilated_rectangular": ((1, 3, 4, 4), (3, 2, 2, 3), dict(dilation=2, stride=(1, 2))),
        "unbatched": ((3, 4, 5), (3, 2, 3, 3), dict(padding=1)),
    },
}
CASE_IDS = [(op, case) for op in CASES for case in CASES[op]]
SMALL = {  # op -> tiny (input shape, weight shape, kwargs) for the numerical checks, whose cost grows fast
    "conv2d": ((1, 2, 5, 4), (2, 1, 3, 2), dict(stride=2, padding=1, dilation=(1, 2), groups=2)),
    "conv_transpose2d": ((1, 2, 3, 3), (2, 1, 2, 3), dict(stride=2, padding=1, output_padding=1, groups=2)),
}


def leaves(*tensors, dtype=torch.float64, device="cpu"):
    return [t.to(device=device, dtype=dtype).requires_grad_() for t in tensors]


# --- dtypes -------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.complex64, torch.complex128], ids=str)
@pytest.mark.parametrize("op,case", CASE_IDS)
def test_half_precision_and_complex_match_pytorch_forward_and_backward(op, case, dtype, device):
    """Complex: close to PyTorch. Half precision: close to PyTorch wherever PyTorch's own result is
    rounded once from the exact one -- and where it is not (its own kernels, used where the processor
    gives oneDNN no float16, round partial sums), convbook is the one nearer the exact result: both
    are then measured against PyTorch in float64 on the same operands and the same grad_output."""
    input_shape, weight_shape, kwargs = CASES[op][case]
    x, w, b = operands(op, input_shape, weight_shape, True, dtype, seed=3, groups=kwargs.get("groups", 1),
                       device=device)
    pairs = run_both(op, x, w, b, seed=3, **kwargs)
    exact = exact_results(op, x, w, b, pairs["output"][1], seed=3, **kwargs) if not dtype.is_complex else None
    for field, (mine, ref) in pairs.items():
        if exact is None:
            assert_close_to_torch(mine, ref, f"{op} {case} {dtype} {field}")
        else:
            assert_close_to_torch_or_nearer_the_exact(mine, ref, exact[field], f"{op} {case} {dtype} {field}")


def exact_results(op, x, w, b, output, seed, **kwargs):
    """PyTorch in float64 on the operands and the grad_output of :func:`run_both`
    (:func:`grad_output_like`): {field: exact output or gradient}."""
    grad_output = grad_output_like(output, seed)
    leaves = [t.detach().double().requires_grad_() for t in (x, w, b)]
    out = OPS[op][1](*leaves, **kwargs)
    return dict(zip(("output", "grad_input", "grad_weight", "grad_bias"),
                    [out.detach(), *torch.autograd.grad(out, leaves, grad_output.double())]))


def assert_close_to_torch_or_nearer_the_exact(mine, ref, exact, what):
    assert mine.shape == ref.shape and mine.dtype == ref.dtype, what
    apart = ~torch.isclose(mine, ref, **TOLERANCE[mine.dtype])
    ours, theirs = (mine.double() - exact).abs()[apart], (ref.double() - exact).abs()[apart]
    assert bool((ours < theirs).all()), f"{what}: {int(apart.sum())} entries apart from PyTorch, " \
                                        f"{int((ours >= theirs).sum())} of them no nearer the exact result"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("op", OPS)
def test_half_precision_is_no_less_accurate_than_pytorchs_own(op, dtype):
    """Over a sweep, convbook's squared error to the exact answer (PyTorch in float64, rounded)
    is at most PyTorch's own, for the output and every gradient: both accumulate in float32."""
    results = [compare_config(op, config, dtype, seed, check=False)
               for seed, config in enumerate(random_configs(op, 15, seed=11))]
    for field in ("output", "grad_input", "grad_weight"):
        ours = sum(r.errors_to_exact[field].mse for r in results)
        theirs = sum(r.torch_errors_to_exact[field].mse for r in results)
        assert ours <= theirs, f"{op} {dtype} {field}: convbook {ours:.3e} > PyTorch {theirs:.3e}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8], ids=str)
@pytest.mark.parametrize("op,case", CASE_IDS)
def test_integers_are_convolved_exactly_where_pytorch_convolves_them_and_refused_where_it_does_not(
        op, case, dtype, device):
    """Sums wrap around modulo 2^bits in both libraries (the operands make them overflow); PyTorch
    convolves narrow integers only with conv2d and only undilated, and says so."""
    input_shape, weight_shape, kwargs = CASES[op][case]
    generator = torch.Generator().manual_seed(5)
    high = 2 ** 40 if dtype == torch.int64 else 100
    draw = lambda *shape: torch.randint(-high if dtype.is_signed else 0, high, shape, generator=generator)  # noqa: E731
    x, w = draw(*input_shape).to(dtype), draw(*weight_shape).to(dtype)
    ours, theirs = OPS[op]
    try:
        expected = theirs(x, w, **kwargs)
    except NotImplementedError as refusal:
        with pytest.raises(NotImplementedError) as info:
            ours(x.to(device), w.to(device), **kwargs)
        assert str(info.value) == str(refusal)
        return
    assert torch.equal(ours(x.to(device), w.to(device), **kwargs).cpu(), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_complex_gradients_use_the_conjugated_weight_and_the_conjugated_input(device):
    """PyTorch's convention (the conjugate Wirtinger derivative, appendix "Complex convolution"):
    for y = conv2d(x, w) and G = ∂L/∂y, ∂L/∂x = Σ w̄·G and ∂L/∂w = Σ G·x̄ over the windows --
    written here with unfold/fold, independently of both libraries' backward."""
    kernel, geometry = (3, 2), dict(stride=2, padding=1, dilation=(1, 2))
    x, w, _ = operands("conv2d", (2, 3, 7, 8), (4, 3, *kernel), False, torch.complex128, seed=2, device=device)
    grad_output = torch.randn_like(convbook.conv2d(x, w, **geometry))
    grad_x, grad_w, _ = convbook.conv2d_backward(grad_output, x, w, **geometry)
    g = grad_output.flatten(2)                                                  # (N, O, L)
    columns = torch.einsum("ok,nol->nkl", w.conj().flatten(1), g)               # Σ_o w̄ G per tap
    assert_close_to_torch(grad_x, F.fold(columns, x.shape[2:], kernel, **geometry), "grad_input")
    windows = F.unfold(x.conj(), kernel, **geometry)                            # x̄ per window
    assert_close_to_torch(grad_w, torch.einsum("nol,nkl->ok", g, windows).view_as(w), "grad_weight")
    transposed_x, transposed_w, _ = convbook.conv_transpose2d_backward(x, grad_output, w, **geometry,
                                                                        output_padding=(0, 1))
    assert_close_to_torch(transposed_x, F.conv2d(x, w.conj(), **geometry), "transposed grad_input")
    assert_close_to_torch(transposed_w, torch.einsum("nol,nkl->ok", grad_output.conj().flatten(2),
                                                     F.unfold(x, kernel, **geometry)).view_as(w),
                          "transposed grad_weight")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128], ids=str)
@pytest.mark.parametrize("op", OPS)
def test_gradcheck_with_forward_ad_and_batched_gradients_passes(op, dtype, device):
    """First and second derivatives, reverse and forward mode, one at a time and vmapped."""
    input_shape, weight_shape, kwargs = SMALL[op]
    inputs = [t.requires_grad_() for t in operands(op, input_shape, weight_shape, True, dtype, seed=8,
                                                    groups=kwargs["groups"], device=device)]
    fn = lambda *t: OPS[op][0](*t, **kwargs)  # noqa: E731
    assert gradcheck(fn, inputs, check_forward_ad=True, check_batched_grad=True, check_batched_forward_grad=True)
    assert gradgradcheck(fn, inputs, check_fwd_over_rev=True, check_batched_grad=True)


# --- forward-mode AD ----------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128], ids=str)
@pytest.mark.parametrize("op,case", CASE_IDS)
def test_forward_mode_tangent_equals_pytorchs(op, case, dtype, device):
    """The tangent of conv(x, w) + b is conv(ẋ, w) + conv(x, ẇ) + ḃ."""
    input_shape, weight_shape, kwargs = CASES[op][case]
    groups = kwargs.get("groups", 1)
    primals = operands(op, input_shape, weight_shape, True, dtype, seed=6, groups=groups, device=device)
    tangents = operands(op, input_shape, weight_shape, True, dtype, seed=7, groups=groups, device=device)
    results = []
    for fn in OPS[op]:
        with forward_ad.dual_level():
            duals = [forward_ad.make_dual(p, t) for p, t in zip(primals, tangents)]
            out = forward_ad.unpack_dual(fn(*duals, **kwargs))
            results.append((out.primal, out.tangent))
    (mine, mine_tangent), (ref, ref_tangent) = results
    assert_close_to_torch(mine, ref, "primal")
    assert_close_to_torch(mine_tangent, ref_tangent, "tangent")


# --- torch.func ---------------------------------------------------------------------------------

TRANSFORMS = {
    # name -> f(conv, x, w, b, xs, ws, bs, kwargs): the same transform of convbook's op and of PyTorch's
    "vmap_over_the_batch": lambda conv, x, w, b, xs, ws, bs, kw: vmap(lambda t: conv(t, w, b, **kw))(xs),
    "vmap_over_weights_and_biases": lambda conv, x, w, b, xs, ws, bs, kw: vmap(
        lambda u, c: conv(x, u, c, **kw))(ws, bs),
    "vmap_over_inputs_and_weights": lambda conv, x, w, b, xs, ws, bs, kw: vmap(
        lambda t, u: conv(t, u, b, **kw))(xs, ws),
    "vmap_over_one_image_at_a_time": lambda conv, x, w, b, xs, ws, bs, kw: vmap(lambda t: conv(t, w, b, **kw))(x),
    "grad": lambda conv, x, w, b, xs, ws, bs, kw: grad(
        lambda t, u, c: conv(t, u, c, **kw).square().sum(), argnums=(0, 1, 2))(x, w, b),
    "jacrev": lambda conv, x, w, b, xs, ws, bs, kw: jacrev(
        lambda t, u, c: conv(t, u, c, **kw), argnums=(0, 1, 2))(x[:1], w, b),
    "jacfwd": lambda conv, x, w, b, xs, ws, bs, kw: jacfwd(
        lambda t, u, c: conv(t, u, c, **kw), argnums=(0, 1, 2))(x[:1], w, b),
    "hessian_in_the_weight": lambda conv, x, w, b, xs, ws, bs, kw: hessian(
        lambda u: conv(x[:1], u, b, **kw).square().sum())(w),
    "per_sample_gradients": lambda conv, x, w, b, xs, ws, bs, kw: vmap(
        grad(lambda u, c, t: conv(t.unsqueeze(0), u, c, **kw).square().sum(), argnums=(0, 1)),
        in_dims=(None, None, 0))(w, b, x),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("op", OPS)
def test_torch_func_transforms_agree_with_the_same_transforms_of_pytorch(op, transform, device):
    input_shape, weight_shape, kwargs = CASES[op]["strided_grouped"]
    groups, copies = kwargs["groups"], 3
    x, w, b = operands(op, input_shape, weight_shape, True, torch.float64, seed=9, groups=groups, device=device)
    xs, ws, bs = operands(op, (copies, *input_shape), (copies, *weight_shape), False, torch.float64, seed=10,
                          device=device)[:2] + (torch.randn(copies, b.shape[0], dtype=torch.float64, device=device),)
    mine, ref = (TRANSFORMS[transform](conv, x, w, b, xs, ws, bs, kwargs) for conv in OPS[op])
    for m, r in zip(mine if isinstance(mine, tuple) else (mine,), ref if isinstance(ref, tuple) else (ref,)):
        assert_close_to_torch(m, r, f"{op} {transform}")


# --- torch.compile ------------------------------------------------------------------------------

def compiled_with_graphs(fn, graphs: list):
    """``fn`` under torch.compile(fullgraph=True) with AOT autograd, recording the ATen graphs."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    def record(graph_module, example_inputs):
        graphs.append(graph_module)
        return make_boxed_func(graph_module.forward)
    return torch.compile(fn, backend=aot_autograd(fw_compiler=record, bw_compiler=record), fullgraph=True)


def forward_and_gradients(fn, op, device, dtype=torch.float32):
    input_shape, weight_shape, kwargs = CASES[op]["strided_grouped"]
    inputs = [t.requires_grad_() for t in operands(op, input_shape, weight_shape, True, dtype, seed=12,
                                                    groups=kwargs["groups"], device=device)]
    out = fn(*inputs, **kwargs).tanh().sum()
    return [out.detach(), *torch.autograd.grad(out, inputs)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", OPS)
def test_torch_compile_traces_one_graph_without_native_convolution_and_gives_pytorchs_results(op, device):
    torch._dynamo.reset()
    graphs = []
    mine = forward_and_gradients(compiled_with_graphs(OPS[op][0], graphs), op, device)
    ref = forward_and_gradients(OPS[op][1], op, device)
    for m, r in zip(mine, ref):
        assert_close_to_torch(m, r, f"compiled {op}")
    assert len(graphs) == 2, "one forward graph and one backward graph"
    targets = {str(node.target) for g in graphs for node in g.graph.nodes if node.op == "call_function"}
    assert any(t.startswith("convbook.") for t in targets)
    assert not [t for t in targets if t.startswith("aten.") and "conv" in t], targets


@pytest.mark.parametrize("device", DEVICES)
def test_inductor_compiles_conv2d_forward_and_backward_to_pytorchs_results(device):
    torch._dynamo.reset()
    compiled = torch.compile(convbook.conv2d, backend="inductor", fullgraph=True)
    for m, r in zip(forward_and_gradients(compiled, "conv2d", device),
                    forward_and_gradients(F.conv2d, "conv2d", device)):
        assert_close_to_torch(m, r, "inductor conv2d")


# --- the appendix's sympy proofs ----------------------------------------------------------------

def test_sympy_proves_the_conjugated_gradients_the_tangent_and_the_four_real_convolutions():
    from convbook import symbolic_complex as proofs
    rows = [row for case in proofs.COMPLEX_CONV2D_CASES.values() for row in proofs.conv2d_complex_gradients(case)]
    rows += [row for case in proofs.COMPLEX_CONV_TRANSPOSE2D_CASES.values()
             for row in proofs.conv_transpose2d_complex_gradients(case)]
    case = next(iter(proofs.COMPLEX_CONV2D_CASES.values()))
    rows += [proofs.conv2d_tangent(case), proofs.conv2d_from_real_parts(case)]
    for row in rows:
        assert row.entries > 0 and row.all_equal == ("unconjugated" not in row.claim), row
