"""Chapter 7's benchmark runs: ``benchmarks/conv.py --quick`` times two layers side by side with
PyTorch, prints the ratio table, writes the JSON and draws the bar chart. (Correctness of every
strategy it times is tests/test_strategies.py; no timing is asserted here.)"""
import json
import math
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from convbook import benchmark

ROOT = Path(__file__).resolve().parents[1]


def test_the_quick_benchmark_measures_its_layers_and_writes_json_and_a_chart(tmp_path):
    out, chart = tmp_path / "quick.json", tmp_path / "quick.png"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "conv.py"), "--quick", "--json", str(out),
                           "--plot", str(chart)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [row["layer"]["name"] for row in result["rows"]] == benchmark.QUICK
    for row in result["rows"]:
        for kind in benchmark.KINDS:
            timing = row[kind]
            assert math.isfinite(timing["ratio"]) and timing["ratio"] > 0
            assert timing["ours_ms"] > 0 and timing["native_ms"] > 0
            low, high = timing["spread"]
            assert 0 < low <= timing["ratio"] <= high
        assert row["memory"]["ours_mb"] > 0 and row["memory"]["native_mb"] > 0
        assert set(row["strategies"]) == {"forward", "grad_input", "grad_weight", "backward"}
    assert "| **geometric mean** |" in done.stdout and result["machine"] in done.stdout
    assert set(result["speeds"]) == {"gemm_gflops", "native_conv_gflops"}
    assert all(math.isfinite(v) and v > 0 for v in result["speeds"].values())
    assert benchmark.speeds_line(result["speeds"]) in done.stdout
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the malloc thresholds pinned are glibc's")
def test_the_allocator_is_pinned_where_there_is_glibc():
    # in a child process: the pinned thresholds stay with the process that sets them
    done = subprocess.run([sys.executable, "-c", "from convbook import benchmark; assert benchmark.steady_allocator()"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_an_unknown_layer_name_is_an_error_that_lists_the_layers(capsys):
    with pytest.raises(SystemExit):
        benchmark.main(["--layers", "r18_64_56,dil2_64_56"])
    err = capsys.readouterr().err
    assert "unknown layer(s) r18_64_56,dil2_64_56" in err and "lk11_32_64" in err
