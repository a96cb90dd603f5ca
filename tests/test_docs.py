"""The documentation's self-contained Python examples run as written.

Each example is found by a line it contains, so an edit that breaks one (a renamed
function, a changed signature) fails here rather than in a reader's hands.
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib
import pytest

ROOT = Path(__file__).resolve().parent.parent

EXAMPLES = [  # (file, a line of the example)
    ("README.md", "grads = jax.jit(jax.grad(loss))(params)"),
    ("README.md", "norms = diagnostics.hidden_gradient_norms("),
    ("docs/gradients.md", "norms = diagnostics.hidden_gradient_norms("),
    ("docs/language_models.md", "model = lm.LanguageModel(len(vocab), cell=\"mrnn\""),
]


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


def _example(file: str, line: str) -> str:
    found = [b for b in _python_blocks(ROOT / file) if line in b]
    assert len(found) == 1, f"{file}: {len(found)} python blocks contain {line!r}"
    return found[0]


@pytest.mark.parametrize("file,line", EXAMPLES, ids=[f"{f}:{l[:30]}" for f, l in EXAMPLES])
def test_example_runs_as_written(file, line, tmp_path, monkeypatch):
    matplotlib.use("Agg")
    # Files the examples write (a plot under /tmp) go to the test's directory instead.
    code = _example(file, line).replace('"/tmp/', f'"{tmp_path}/')
    monkeypatch.chdir(ROOT)
    namespace: dict = {}
    exec(compile(code, f"{file} example", "exec"), namespace)
    if "norms" in namespace:  # the diagnostics example: one norm per step, and its plot
        assert namespace["norms"].shape == (100,) and (tmp_path / "lag.png").stat().st_size > 0
    if "grads" in namespace:
        assert set(namespace["grads"]) == set(namespace["params"])
    if "ids" in namespace:  # the language-model example sampled 500 characters
        assert len(namespace["vocab"].decode(namespace["ids"])) >= 500
