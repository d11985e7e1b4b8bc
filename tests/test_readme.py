"""The README's usage example runs as written."""
import re
from pathlib import Path


def test_readme_usage_example_runs():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    example = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    namespace = {}
    exec(compile(example, "README.md", "exec"), namespace)
    assert namespace["y"].shape == namespace["x"].shape
    assert namespace["x"].grad is not None and namespace["grad_weight"].shape == namespace["conv"].weight.shape
