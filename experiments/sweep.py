"""A grid of experiment runs in parallel processes, and one table of their results.

    python -m experiments.sweep --experiment=parity --workdir=/tmp/sweep \\
        --grid=learning_rate=1e-3,3e-3,1e-2 --grid=hidden=8,16 --seeds=3 \\
        --set=steps=500 --set=lecture_steps=200

runs every combination of the ``--grid`` values times ``--seeds`` seeds (here
3 x 2 x 3 = 18 runs) as ``python -m experiments.<experiment>``, at most
``--parallel`` at a time (default: the number of CPU cores), each in its own
workdir ``<workdir>/<name>=<value>,...,seed=<s>``. ``--set`` fixes a flag for
every run. A run that already finished (its workdir has ``done.json``) is not
run again, so a stopped sweep continues where it was.

It writes ``<workdir>/results.csv`` (one row per run: its grid values, seed,
status and every final metric), ``<workdir>/results.md`` (one row per grid
point: mean and standard deviation over seeds of the ``--metrics`` columns)
and ``<workdir>/loss.png`` (the training-loss curves).

Final metrics of a run: the last record of ``metrics.jsonl`` in its workdir or
in each direct subdirectory (prefixed ``<subdir>/``), plus the numeric leaves
of ``results.json`` if the experiment writes one (keys joined with ``.``).
For many configurations that differ only in values, trained in one process
and one compiled program, see :mod:`rnnjax.sweep` instead.
"""

from __future__ import annotations

import concurrent.futures
import csv
import glob
import json
import math
import os
import subprocess
import sys
import time
from typing import Any

from absl import app, flags

from rnnjax import checkpoint
from rnnjax import sweep as rsweep
from experiments.flags import define as define_flag

FLAGS = flags.FLAGS
define_flag("string", "experiment", None, "The experiment module to sweep: experiments.<name>.")
if "workdir" not in FLAGS:  # experiments.flags may have defined it (same meaning: where files go)
    define_flag("string", "workdir", None, "Root directory of the sweep; each run gets a subdirectory.")
define_flag("multi_string", "grid", [], "NAME=V1,V2,...: a flag of the experiment and its values; "
                          "repeat for more axes (the runs are their cartesian product).")
define_flag("integer", "seeds", 1, "Seeds per grid point (--seed=0..N-1).")
define_flag("multi_string", "set", [], "NAME=VALUE: a flag value shared by every run.")
define_flag("integer", "parallel", os.cpu_count() or 1, "Runs at once (default: the CPU cores).")
define_flag("list", "metrics", [], "Columns of results.md (default: the final loss and accuracy "
                  "columns found).")
define_flag("integer", "timeout", 3600, "Seconds after which one run is stopped.")

SKIP_METRICS = ("time", "steps_per_sec", "step", "finite", "bad_steps", "total_bad_steps")


def parse_assignments(values: list[str], flag: str, multi: bool) -> dict[str, Any]:
    """['a=1,2', 'b=x'] -> {'a': ['1', '2'], 'b': ['x']} (or plain strings if not multi)."""
    out: dict[str, Any] = {}
    for item in values:
        name, sep, rhs = item.partition("=")
        name = name.strip().lstrip("-")
        if not sep or not name or not rhs:
            raise app.UsageError(f"--{flag}={item!r} is invalid: expected NAME=VALUE"
                                 + (",VALUE..." if multi else "") + f", e.g. --{flag}=hidden=8"
                                 + (",16" if multi else ""))
        if name in out:
            raise app.UsageError(f"--{flag}: {name!r} is given twice")
        out[name] = [v.strip() for v in rhs.split(",") if v.strip()] if multi else rhs
    return out


def experiment_flags(module: str) -> set[str]:
    """The flag names ``python -m <module> --helpfull`` documents."""
    proc = subprocess.run([sys.executable, "-m", module, "--helpfull"], capture_output=True,
                          text=True, timeout=300)
    names = set()
    for line in proc.stdout.splitlines():
        line = line.strip()
        if line.startswith("--"):
            name = line[2:].split(":")[0].split("=")[0]
            names.add(name[4:] if name.startswith("[no]") else name)
    if not names:
        raise app.UsageError(f"--experiment: could not run {module} --helpfull: "
                             f"{proc.stderr.strip()[-500:]}")
    return names


def run_name(point: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in point.items())


def final_metrics(workdir: str) -> dict[str, float]:
    """The run's final numbers: last metrics records and results.json leaves."""
    out: dict[str, float] = {}
    candidates = [("", os.path.join(workdir, "metrics.jsonl"))] + [
        (os.path.basename(os.path.dirname(p)) + "/", p)
        for p in sorted(glob.glob(os.path.join(workdir, "*", "metrics.jsonl")))]
    for prefix, path in candidates:
        if os.path.exists(path):
            with open(path) as f:
                lines = [line for line in f if line.strip()]
            if lines:
                for k, v in json.loads(lines[-1]).items():
                    if k not in SKIP_METRICS and isinstance(v, (int, float)):
                        out[prefix + k] = float(v)

    def leaves(prefix: str, obj: Any) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                leaves(f"{prefix}{k}.", v)
        elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
            out["results." + prefix[:-1]] = float(obj)

    if os.path.exists(os.path.join(workdir, "results.json")):
        leaves("", checkpoint.load_json(workdir, "results"))
    return out


def loss_curve(workdir: str) -> tuple[list[int], list[float]]:
    """(steps, losses) of the run's main metrics.jsonl (first one found)."""
    paths = [os.path.join(workdir, "metrics.jsonl")] + sorted(
        glob.glob(os.path.join(workdir, "*", "metrics.jsonl")))
    for path in paths:
        if os.path.exists(path):
            with open(path) as f:
                records = [json.loads(line) for line in f if line.strip()]
            pts = [(r["step"], r["loss"]) for r in records if isinstance(r.get("loss"), float)]
            return [p[0] for p in pts], [p[1] for p in pts]
    return [], []


def launch(module: str, workdir: str, flag_values: dict[str, Any], timeout: int) -> dict[str, Any]:
    """Run one configuration to completion; returns its status and timing."""
    if os.path.exists(os.path.join(workdir, "done.json")):
        return checkpoint.load_json(workdir, "done")
    os.makedirs(workdir, exist_ok=True)
    cmd = [sys.executable, "-m", module, f"--workdir={workdir}", "--noprogress"] + [
        f"--{k}={v}" for k, v in flag_values.items()]
    start = time.time()
    with open(os.path.join(workdir, "stdout.txt"), "w") as out, \
            open(os.path.join(workdir, "stderr.txt"), "w") as err:
        try:
            rc = subprocess.run(cmd, stdout=out, stderr=err, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    status = {"status": "ok" if rc == 0 else f"failed ({rc})", "seconds": time.time() - start,
              "command": " ".join(cmd)}
    if rc == 0:
        checkpoint.save_json(workdir, "done", status)
    return status


def _mean_std(values: list[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.4g}"
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{mean:.4g} ± {std:.2g}"


def write_tables(root: str, rows: list[dict[str, Any]], axes: list[str],
                 metrics: list[str]) -> tuple[str, str]:
    """results.csv (per run) and results.md (per grid point, mean ± std over seeds)."""
    columns = axes + ["seed", "status", "seconds"]
    metric_names = sorted({k for r in rows for k in r["metrics"]})
    csv_path = os.path.join(root, "results.csv")
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns + metric_names)
        for r in rows:
            writer.writerow([r["point"].get(a, "") for a in axes] + [r["seed"], r["status"],
                            f"{r['seconds']:.1f}"] + [r["metrics"].get(m, "") for m in metric_names])
    if not metrics:
        metrics = [m for m in metric_names if m.split("/")[-1] in ("loss", "accuracy")
                   or m.split("/")[-1].startswith("eval_")]
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(run_name(r["point"]), []).append(r)
    md_path = os.path.join(root, "results.md")
    with open(md_path, "w") as f:
        f.write("| " + " | ".join(axes + ["runs ok"] + metrics) + " |\n")
        f.write("|" + "---|" * (len(axes) + 1 + len(metrics)) + "\n")
        for runs in groups.values():
            ok = [r for r in runs if r["status"] == "ok"]
            cells = [str(runs[0]["point"][a]) for a in axes] + [f"{len(ok)}/{len(runs)}"]
            cells += [_mean_std([r["metrics"][m] for r in ok if m in r["metrics"]]) for m in metrics]
            f.write("| " + " | ".join(cells) + " |\n")
    return csv_path, md_path


def plot_losses(root: str, rows: list[dict[str, Any]]) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    names = sorted({run_name(r["point"]) for r in rows})
    colors = {n: plt.cm.viridis(i / max(1, len(names) - 1)) for i, n in enumerate(names)}
    labelled = set()
    for r in rows:
        steps, losses = loss_curve(r["workdir"])
        if not steps:
            continue
        name = run_name(r["point"])
        ax.plot(steps, losses, color=colors[name], alpha=0.8,
                label=name if name not in labelled else None)
        labelled.add(name)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.set_title(f"sweep: {len(rows)} runs")
    path = os.path.join(root, "loss.png")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.experiment:
        raise app.UsageError("--experiment is required, e.g. --experiment=parity")
    module = FLAGS.experiment if "." in FLAGS.experiment else f"experiments.{FLAGS.experiment}"
    if FLAGS.experiment in ("sweep", "experiments.sweep"):
        raise app.UsageError("--experiment=sweep is invalid: a sweep cannot sweep itself")
    here = os.path.dirname(os.path.abspath(__file__))
    if not module.startswith("experiments.") or not os.path.exists(
            os.path.join(here, module.split(".", 1)[1] + ".py")):
        names = sorted(p[:-3] for p in os.listdir(here) if p.endswith(".py")
                       and not p.startswith("_") and not p.endswith("flags.py") and p != "sweep.py")
        raise app.UsageError(f"--experiment={FLAGS.experiment!r} is invalid: accepted: {', '.join(names)}")
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required: the sweep's root directory")
    from experiments import flags as common
    common.check_workdir(FLAGS.workdir)
    for name in ("seeds", "parallel", "timeout"):
        common.check_positive_int(name, FLAGS[name].value)
    grid = parse_assignments(FLAGS.grid, "grid", multi=True)
    fixed = parse_assignments(FLAGS.set, "set", multi=False)
    known = experiment_flags(module)
    for flag, names in (("grid", grid), ("set", fixed)):
        for name in names:
            if name not in known or name == "workdir":
                raise app.UsageError(f"--{flag}: {name!r} is not a flag {module} accepts "
                                     "(see python -m " + module + " --helpfull)")
    if "seed" in grid or "seed" in fixed:
        raise app.UsageError("--grid/--set: use --seeds=N rather than sweeping --seed")

    points = rsweep.grid(**grid) if grid else [{}]
    jobs = []
    for point in points:
        for seed in range(FLAGS.seeds):
            name = run_name({**point, "seed": seed})
            jobs.append({"point": point, "seed": seed,
                         "workdir": os.path.join(FLAGS.workdir, name.replace("/", "_")),
                         "flags": {**fixed, **point, "seed": seed}})
    print(f"{len(jobs)} runs of {module}, {FLAGS.parallel} at a time, under {FLAGS.workdir}")
    with concurrent.futures.ThreadPoolExecutor(FLAGS.parallel) as pool:
        futures = {pool.submit(launch, module, j["workdir"], j["flags"], FLAGS.timeout): j
                   for j in jobs}
        for done, fut in enumerate(concurrent.futures.as_completed(futures), 1):
            job = futures[fut]
            job.update(fut.result())
            print(f"[{done}/{len(jobs)}] {os.path.basename(job['workdir'])}: {job['status']} "
                  f"({job['seconds']:.0f} s)", flush=True)
    for job in jobs:
        job["metrics"] = final_metrics(job["workdir"]) if job["status"] == "ok" else {}
    csv_path, md_path = write_tables(FLAGS.workdir, jobs, list(grid), FLAGS.metrics)
    png = plot_losses(FLAGS.workdir, jobs)
    with open(md_path) as f:
        print(f.read())
    print(f"wrote {csv_path}, {md_path}, {png}")
    failed = [j for j in jobs if j["status"] != "ok"]
    if failed:
        print(f"{len(failed)} runs failed; see stderr.txt in: "
              + ", ".join(j["workdir"] for j in failed[:5]))
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
