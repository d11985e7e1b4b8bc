"""convbook against PyTorch's native convolution on the layers of the performance issue.

    python benchmarks/conv.py [--quick] [--json out.json] [--plot out.png] [--rounds 7] [--threads 2]

Prints a table of the ratios convbook/native (forward, input gradient, weight gradient, training
step, peak extra memory of a step), optionally writes them as JSON and draws a bar chart. The
method is described in :mod:`convbook.benchmark`.
"""
from convbook.benchmark import main

if __name__ == "__main__":
    main()
