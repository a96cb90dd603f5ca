"""Every Python example in README.md and docs/*.md runs as written.

Each ```python block is one test, named by its file and first line, so an edit that
breaks one (a renamed function, a changed signature) fails here rather than in a
reader's hands. Markers on the line before a block render as nothing:
``<!-- test_docs: skip (why) -->`` for a block that must not run here (it trains for
minutes, or re-executes the process; reported as skipped with that reason), and
``<!-- test_docs: continues -->`` for one that continues the file's previous block
(the last one that is not skipped, which then runs first).
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP = re.compile(r"<!--\s*test_docs:\s*skip\s*\((.*?)\)\s*-->\s*\n```python\n")
CONTINUES = re.compile(r"<!--\s*test_docs:\s*continues\s*-->\s*\n```python\n")
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _examples() -> list:
    params = []
    for path in DOCS:
        text = path.read_text()
        skipped = {m.end(): m.group(1) for m in SKIP.finditer(text)}
        continued = {m.end() for m in CONTINUES.finditer(text)}
        previous = ""
        for m in BLOCK.finditer(text):
            code = m.group(1)
            if m.start() + len("```python\n") in continued:
                code = previous + code
            line = text.count("\n", 0, m.start()) + 1
            name = f"{path.relative_to(ROOT)}:{line}"
            reason = skipped.get(m.start() + len("```python\n"))
            if reason is None:
                previous = code
            marks = [pytest.mark.skip(reason=reason)] if reason is not None else []
            params.append(pytest.param(name, code, marks=marks, id=name))
    return params


EXAMPLES = _examples()


def test_examples_are_found():
    names = [p.values[0].split(":")[0] for p in EXAMPLES]
    assert "README.md" in names and "docs/gradients.md" in names, names


@pytest.mark.parametrize("name,code", EXAMPLES)
def test_example_runs_as_written(name, code, tmp_path, monkeypatch):
    matplotlib.use("Agg")
    # Files the examples write (under /tmp) go to the test's directory instead.
    code = code.replace('"/tmp/', f'"{tmp_path}/')
    monkeypatch.chdir(ROOT)
    namespace: dict = {"__name__": "docs_example"}
    exec(compile(code, name, "exec"), namespace)
    if "norms" in namespace:  # the diagnostics example: one norm per step, and its plot
        assert namespace["norms"].shape == (100,) and (tmp_path / "lag.png").stat().st_size > 0
    if "grads" in namespace and "auto" not in namespace:  # README: a gradient for every param
        assert set(namespace["grads"]) == set(namespace["params"])
    if "auto" in namespace:  # docs/bptt.md: BPTT by hand equals jax.grad
        for k, g in namespace["grads"].items():
            assert abs(g - namespace["auto"][k]).max() < 1e-4, k
    if "ids" in namespace:  # the language-model example sampled 500 characters
        assert len(namespace["vocab"].decode(namespace["ids"])) >= 500
    history = namespace.get("history")
    if isinstance(history, list) and history and "loss" in history[0]:  # training examples learn
        assert np.mean(history[-1]["loss"]) < np.mean(history[0]["loss"])
    if "trace" in namespace:  # docs/handset.md: the running parity of 1 0 1 1 0
        assert namespace["trace"].outputs[:, 0].tolist() == [1, 1, 0, 1, 1]
