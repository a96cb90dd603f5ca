"""Two processes (one CPU device each, Gloo collectives) train like one process with
two CPU devices, write one checkpoint and resume from it (rnnjax.distributed)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np

WORKER = os.path.join(os.path.dirname(__file__), "distributed_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=os.getcwd(), JAX_PLATFORMS="cpu", **extra)
    env.pop("XLA_FLAGS", None)
    env.update(extra)
    return env


def _two_processes(workdir, steps, out):
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, WORKER, str(workdir), str(steps), str(out), str(i),
                               "2", str(port)], env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    return json.loads(out.read_text())


def test_two_processes_train_like_two_devices_and_resume(tmp_path):
    multi_dir, single_dir = tmp_path / "multi", tmp_path / "single"
    first = _two_processes(multi_dir, 4, tmp_path / "first.json")
    assert first["summary"] == "process 0 of 2, 1 local / 2 global devices"
    assert sorted(os.listdir(multi_dir / "checkpoints")) >= ["2", "4"]
    resumed = _two_processes(multi_dir, 6, tmp_path / "resumed.json")   # from checkpoint 4
    proc = subprocess.run([sys.executable, WORKER, str(single_dir), "6",
                           str(tmp_path / "single.json"), "0", "1", "0"], capture_output=True,
                          text=True, timeout=300,
                          env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = json.loads((tmp_path / "single.json").read_text())
    assert single["summary"] == "process 0 of 1, 2 local / 2 global devices"
    assert resumed["steps"] == single["steps"] == [1, 2, 3, 4, 5, 6]   # metrics written once
    np.testing.assert_allclose(resumed["loss"], single["loss"], rtol=1e-5)
    np.testing.assert_allclose(first["loss"], single["loss"][:4], rtol=1e-5)
    lines = (multi_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4, 5, 6]
