"""convbook against PyTorch's native convolution on the layers of the performance issue (book chapter 7).

For each layer: the forward, the input gradient, the weight gradient (with the bias gradient),
one whole training step (forward + backward through autograd), and the peak extra memory of a
step. Times are *paired*: every round runs a ~50 ms loop of convbook and one of native, the
order alternating between rounds, and the reported number is the median over rounds of the
ratio convbook/native -- robust to a machine whose speed drifts while it is shared.

Memory: the profiler records every allocation and free of the step with its time stamp; the peak
of their running sum is the step's peak extra memory (convbook's scratch buffers are dropped
before its step, so their first allocation is counted).

The allocator: PyTorch's CPU tensors come from glibc's ``malloc``, whose thresholds move with the
history of the process. When a large block is served by ``mmap`` or the heap is trimmed, the next
tensor of that size is fresh memory, and touching its pages costs about 0.3 ms per MB -- in our runs
native's training step of the depthwise layer took 6 ms in one process and 17 ms in the next, with
nothing else changed. :func:`steady_allocator` pins the thresholds (as a long training loop settles
them), so that both sides are timed in the steady state; :func:`run` calls it.

The command line is ``benchmarks/conv.py`` (a thin wrapper of :func:`main`)::

    python benchmarks/conv.py [--quick] [--json out.json] [--plot out.png] [--rounds 7] [--threads 2]

The book (chapter 7) calls :func:`run` on a subset with few rounds.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

import convbook

from . import checks, workspace
from .autograd import conv2d_grads, conv_transpose2d_grads


@dataclass(frozen=True)
class Layer:
    name: str
    op: str                      # "conv" or "transposed"
    in_channels: int
    out_channels: int
    size: int                    # H = W of the layer's input
    kernel: int
    stride: int
    padding: int
    dilation: int = 1
    groups: int = 1
    output_padding: int = 0
    batch: int = 8


LAYERS = [
    Layer("r18_64_56", "conv", 64, 64, 56, 3, 1, 1),
    Layer("r18_64_128s2", "conv", 64, 128, 56, 3, 2, 1),
    Layer("r18_128_28", "conv", 128, 128, 28, 3, 1, 1),
    Layer("r18_256_14", "conv", 256, 256, 14, 3, 1, 1),
    Layer("r18_512_7", "conv", 512, 512, 7, 3, 1, 1),
    Layer("r18_1x1s2", "conv", 64, 128, 56, 1, 2, 0),
    Layer("r18_stem", "conv", 3, 64, 224, 7, 2, 3, batch=2),
    Layer("dw_128_56", "conv", 128, 128, 56, 3, 1, 1, groups=128),
    Layer("grp8_128_28", "conv", 128, 128, 28, 3, 1, 1, groups=8),
    Layer("dil2_64_56", "conv", 64, 64, 56, 3, 1, 2, dilation=2),
    Layer("lk7_32_64", "conv", 32, 32, 64, 7, 1, 3),
    Layer("lk11_32_64", "conv", 32, 32, 64, 11, 1, 5),
    Layer("T_128_64_k4s2", "transposed", 128, 64, 28, 4, 2, 1),
    Layer("T_64_32_k2s2", "transposed", 64, 32, 56, 2, 2, 0),
    Layer("T_256_128_k3s2op1", "transposed", 256, 128, 14, 3, 2, 1, output_padding=1),
    Layer("T_g4_64_k4s2", "transposed", 64, 64, 28, 4, 2, 1, groups=4),
]
QUICK = ["r18_1x1s2", "T_64_32_k2s2"]
KINDS = ("forward", "grad_input", "grad_weight", "step")


def operands(layer: Layer, seed: int = 0):
    """Seeded float32 (input, weight, bias, grad_output) and the keyword arguments of the op."""
    generator = torch.Generator().manual_seed(seed)
    g = layer.groups
    x = torch.randn(layer.batch, layer.in_channels, layer.size, layer.size, generator=generator)
    if layer.op == "conv":
        weight_shape = (layer.out_channels, layer.in_channels // g, layer.kernel, layer.kernel)
        kwargs = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=g)
    else:
        weight_shape = (layer.in_channels, layer.out_channels // g, layer.kernel, layer.kernel)
        kwargs = dict(stride=layer.stride, padding=layer.padding, output_padding=layer.output_padding,
                      groups=g, dilation=layer.dilation)
    weight = torch.randn(*weight_shape, generator=generator) / math.sqrt(weight_shape[1] * layer.kernel ** 2)
    bias = torch.randn(layer.out_channels, generator=generator)
    native = F.conv2d if layer.op == "conv" else F.conv_transpose2d
    out_shape = native(x, weight, bias, **kwargs).shape
    return x, weight, bias, torch.randn(out_shape, generator=generator), kwargs


def functions(layer: Layer) -> dict[str, tuple]:
    """{kind: (convbook's zero-argument function, native's)} for the four measured operations."""
    x, weight, bias, grad_out, kw = operands(layer)
    conv = layer.op == "conv"
    ours_fn, native_fn = (convbook.conv2d, F.conv2d) if conv else (convbook.conv_transpose2d, F.conv_transpose2d)
    if conv:
        geometry = checks.conv2d_geometry(x, weight, bias, kw["stride"], kw["padding"], kw["dilation"], kw["groups"])
        grads = lambda needed: conv2d_grads(grad_out, x, weight, geometry, needed)  # noqa: E731
    else:
        geometry = checks.conv_transpose2d_geometry(x, weight, bias, kw["stride"], kw["padding"],
                                                     kw["output_padding"], kw["groups"], kw["dilation"])
        grads = lambda needed: conv_transpose2d_grads(grad_out, x, weight, geometry, needed)  # noqa: E731
    s, p, d = [layer.stride] * 2, [layer.padding] * 2, [layer.dilation] * 2
    native_grads = lambda mask: torch.ops.aten.convolution_backward(  # noqa: E731
        grad_out, x, weight, [layer.out_channels], s, p, d, not conv, [layer.output_padding] * 2, layer.groups, mask)

    def step(fn):
        leaves = [t.detach().requires_grad_() for t in (x, weight, bias)]

        def run():
            fn(*leaves, **kw).backward(grad_out)
            for leaf in leaves:
                leaf.grad = None
        return run

    def no_grad(fn):
        def run():
            with torch.no_grad():
                fn()
        return run

    return {
        "forward": (no_grad(lambda: ours_fn(x, weight, bias, **kw)), no_grad(lambda: native_fn(x, weight, bias, **kw))),
        "grad_input": (no_grad(lambda: grads((True, False, False))), no_grad(lambda: native_grads([True, False, False]))),
        "grad_weight": (no_grad(lambda: grads((False, True, True))), no_grad(lambda: native_grads([False, True, True]))),
        "step": (step(ours_fn), step(native_fn)),
    }


def steady_allocator() -> bool:
    """Pin glibc's malloc thresholds for this process: blocks below 32 MB come from the heap
    (``M_MMAP_THRESHOLD``) and freed memory is not returned to the system (``M_TRIM_THRESHOLD``),
    so a tensor reuses pages already touched. Returns False where there is no glibc (nothing done)."""
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, (1 << 31) - 1))


def loop_seconds(fn, iterations: int) -> float:
    start = time.perf_counter()
    for _ in range(iterations):
        fn()
    return time.perf_counter() - start


def iterations_for(fn, target: float) -> int:
    """How many calls make a loop of about ``target`` seconds."""
    fn()
    once = max(loop_seconds(fn, 1), 1e-6)
    return max(1, round(target / once))


def paired(ours, native, rounds: int, target: float) -> dict:
    """Median over rounds of (convbook time / native time), the order alternating each round, and
    the ``spread`` of those ratios: their lower and upper quartiles, the middle half of the rounds
    (how far one run's ratio can be trusted on a shared machine)."""
    n_ours, n_native = iterations_for(ours, target), iterations_for(native, target)
    ratios, t_ours, t_native = [], [], []
    for r in range(rounds):
        pair = [(ours, n_ours, t_ours), (native, n_native, t_native)]
        for fn, n, times in (pair if r % 2 == 0 else pair[::-1]):
            times.append(loop_seconds(fn, n) / n)
        ratios.append(t_ours[-1] / t_native[-1])
    quartiles = statistics.quantiles(ratios, n=4, method="inclusive") if rounds > 1 else ratios * 3
    return dict(ratio=statistics.median(ratios), spread=(quartiles[0], quartiles[2]),
                ours_ms=1e3 * statistics.median(t_ours), native_ms=1e3 * statistics.median(t_native))


@contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 (the profiler's C++ start/stop log lines) inside the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def peak_extra_bytes(fn) -> int:
    """Peak of the running sum of all allocations minus frees while ``fn`` runs (profiler records)."""
    from torch.profiler import ProfilerActivity, profile
    gc.collect()
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    records = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                     if e.name() == "[memory]")
    running = peak = 0
    for _, nbytes in records:
        running += nbytes
        peak = max(peak, running)
    return peak


def measure(layer: Layer, rounds: int, target: float) -> dict:
    row = dict(layer=asdict(layer))
    fns = functions(layer)
    for kind in KINDS:
        row[kind] = paired(*fns[kind], rounds, target)
    ours_step, native_step = fns["step"]
    workspace.clear()
    ours_bytes = peak_extra_bytes(ours_step)
    native_bytes = peak_extra_bytes(native_step)
    row["memory"] = dict(ratio=ours_bytes / max(native_bytes, 1), ours_mb=ours_bytes / 2**20,
                         native_mb=native_bytes / 2**20)
    row["strategies"] = strategies_of(layer)
    return row


def strategies_of(layer: Layer) -> dict[str, str]:
    """{'forward' | 'grad_input' | 'grad_weight' | 'backward': strategy} from convbook.explain (the
    step's backward computes both gradients by the 'backward' pair, unless it says 'separate')."""
    x, weight, _, _, kw = operands(layer)
    op = "conv2d" if layer.op == "conv" else "conv_transpose2d"
    return {k: v[0] for k, v in convbook.explain(op, tuple(x.shape), tuple(weight.shape), **kw).items()}


def geometric_mean(values) -> float:
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values))


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{platform.platform()}, {cpu}, torch {torch.__version__}, {torch.get_num_threads()} threads"


def machine_speeds(repeat: int = 5) -> dict[str, float]:
    """GFLOP/s of this machine's matrix library on one square float32 product (n = 1024) and of native
    PyTorch's convolution on the forward of ``r18_64_56``, best of ``repeat`` each, with the allocator
    pinned (:func:`steady_allocator`). convbook's contractions are matrix products, native's are its own
    kernels, so the ratio of these two speeds moves every ratio of the benchmark: the same code measured a
    training-step geometric mean of 1.28-1.30 on one 2-core machine and 1.47-1.51 on another, whose
    matrix library was the slower of the two. Compare runs from different machines with this line."""
    def best(fn) -> float:
        fn()
        return min(loop_seconds(fn, 1) for _ in range(repeat))
    steady_allocator()
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    x, weight, bias, _, kwargs = operands(next(layer for layer in LAYERS if layer.name == "r18_64_56"))
    flops = 2 * x.shape[0] * weight.numel() * x.shape[2] * x.shape[3]
    with torch.no_grad():
        return dict(gemm_gflops=2 * 1024 ** 3 / best(lambda: a @ b) / 1e9,
                    native_conv_gflops=flops / best(lambda: F.conv2d(x, weight, bias, **kwargs)) / 1e9)


def speeds_line(speeds: dict[str, float]) -> str:
    return (f"matrix product (1024³, float32): {speeds['gemm_gflops']:.0f} GFLOP/s; "
            f"native convolution (r18_64_56 forward): {speeds['native_conv_gflops']:.0f} GFLOP/s")


def table(rows: list[dict]) -> str:
    """Markdown table of the ratios convbook/native (below 1: convbook is faster / smaller), with the
    middle half of the step's paired rounds (:func:`paired`)."""
    lines = ["| layer | forward | grad_input | grad_weight | step | step, middle half of rounds | step ms (native) "
             "| memory | strategies (fwd/gi/gw; step's backward) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        s, (low, high) = row["strategies"], row["step"]["spread"]
        lines.append(f"| {row['layer']['name']} | " + " | ".join(f"{row[k]['ratio']:.2f}" for k in KINDS)
                     + f" | {low:.2f}-{high:.2f} | {row['step']['ours_ms']:.1f} ({row['step']['native_ms']:.1f})"
                     + f" | {row['memory']['ratio']:.2f}"
                     + f" | {s['forward']}/{s['grad_input']}/{s['grad_weight']}; {s['backward']} |")
    lines.append("| **geometric mean** | " + " | ".join(f"{geometric_mean(r[k]['ratio'] for r in rows):.2f}" for k in KINDS)
                 + f" | | | {geometric_mean(r['memory']['ratio'] for r in rows):.2f} | |")
    return "\n".join(lines)


def plot(rows: list[dict], path: str | None = None):
    """Grouped bars of the four time ratios per layer, log scale, with the parity line at 1."""
    import matplotlib
    import matplotlib.ticker
    if path is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(12, 4.5))
    width = 0.2
    for index, kind in enumerate(KINDS):
        ax.bar([i + (index - 1.5) * width for i in range(len(rows))], [r[kind]["ratio"] for r in rows], width, label=kind)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ratios = [r[kind]["ratio"] for r in rows for kind in KINDS]
    ticks = [t for t in (0.125, 0.25, 0.5, 1, 2, 4, 8, 16, 32) if min(ratios) / 2 <= t <= max(ratios) * 2]
    ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xticks(range(len(rows)), [r["layer"]["name"] for r in rows], rotation=40, ha="right")
    ax.set_ylabel("time convbook / native")
    ax.legend(ncol=4, fontsize="small")
    ax.set_title("convbook vs native PyTorch (below 1: convbook faster)")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def run(names=None, rounds: int = 7, target: float = 0.05, progress: bool = False) -> list[dict]:
    """Measure the named layers (all by default), in the order of ``LAYERS``, with the
    allocator in its steady state (:func:`steady_allocator`)."""
    steady_allocator()
    rows = []
    for layer in LAYERS:
        if names is None or layer.name in names:
            rows.append(measure(layer, rounds, target))
            if progress:
                r = rows[-1]
                print(f"{layer.name:>20}: " + "  ".join(f"{k} {r[k]['ratio']:.2f}" for k in KINDS)
                      + f"  memory {r['memory']['ratio']:.2f}", flush=True)
    return rows


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}, few rounds")
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument("--plot", help="draw the ratio bar chart to this PNG")
    parser.add_argument("--rounds", type=int, default=None, help="paired rounds per measurement (7; quick: 3)")
    parser.add_argument("--target", type=float, default=0.05, help="seconds per timed loop")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layers", nargs="*", help="names of the layers to run, space-separated (default: all)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.layers or ()) - {layer.name for layer in LAYERS})
    if unknown:
        parser.error(f"unknown layer(s) {', '.join(unknown)}; the layers are {', '.join(l.name for l in LAYERS)}")
    torch.set_num_threads(args.threads)
    names = args.layers or (QUICK if args.quick else None)
    rounds = args.rounds or (3 if args.quick else 7)
    rows = run(names, rounds, args.target, progress=True)
    speeds = machine_speeds()
    print(f"\n{machine()}\n{speeds_line(speeds)}\n\n{table(rows)}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(dict(machine=machine(), speeds=speeds, rounds=rounds, rows=rows), out, indent=1)
    if args.plot:
        plot(rows, args.plot)
    return rows
