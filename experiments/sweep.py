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
With ``--engine=optuna`` the sweep is an Optuna study instead of a grid
(``pip install -e ".[sweep]"``)::

    python -m experiments.sweep --engine=optuna --experiment=char_lm --workdir=runs/study \
        --study=lm --space=learning_rate=log:1e-3:3e-2,hidden=int:32:256,cell=cat:lstm|gru \
        --set=steps=300 --trials=20 --workers=2 --objective=valid.bits --direction=minimize

Each trial is ``run(config, <workdir>/trial_<n>)`` of the experiment, in-process in
one of ``--workers`` local worker processes; its objective is ``--objective``, a key
of the run's results (``.`` descends into nested results). Experiments report their
validation metric while they train, so ``--pruner=median|asha`` stops hopeless
trials early. The study lives in ``--storage``: a journal file (default
``<workdir>/study.journal``; processes on one machine or a shared filesystem) or a
database URL (``sqlite:///study.db``, ``postgresql://...``) for many machines: the
same command on another machine joins the study. A worker killed mid-trial leaves
its trial to be marked failed and retried (resuming the trial's checkpoint), and
rerunning the command continues the study. At the end: the best trial's settings
and metrics, ``trials.csv`` and PNG plots (history, importances, slices).

For many configurations that differ only in values, trained in one process
and one compiled program, see :mod:`rnnjax.sweep` instead.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import glob
import importlib
import inspect
import math
import os
import subprocess
import sys
import time
from typing import Any

from absl import app

from experiments import cli
from rnnjax import checkpoint, metrics
from rnnjax import study as studies
from rnnjax import sweep as rsweep

HERE = os.path.dirname(os.path.abspath(__file__))
NOT_EXPERIMENTS = ("__init__", "cli", "sweep", "hf_config")


def experiment_names() -> list[str]:
    return sorted(p[:-3] for p in os.listdir(HERE) if p.endswith(".py")
                  and p[:-3] not in NOT_EXPERIMENTS and not p.startswith("_"))


@dataclasses.dataclass(frozen=True)
class Config:
    experiment: str | None = cli.field(None, "The experiment to sweep: experiments.<name>.")
    engine: str = cli.field("grid", "grid: every combination of --grid as processes; optuna: "
                            "an Optuna study over --space.", choices=("grid", "optuna"))
    grid: tuple[str, ...] = cli.field((), "NAME=V1,V2,...: a setting of the experiment and its "
                                      "values; repeat for more axes (the runs are their "
                                      "cartesian product).", repeat=True)
    seeds: int = cli.field(1, "Seeds per grid point (--seed=0..N-1).", check=cli.positive)
    set: tuple[str, ...] = cli.field((), "NAME=VALUE: a setting shared by every run or trial.",
                                     repeat=True)
    parallel: int = cli.field(os.cpu_count() or 1, "Grid runs at once (default: the CPU cores).",
                              check=cli.positive)
    metrics: tuple[str, ...] = cli.field((), "Columns of results.md (default: the final loss "
                                         "and accuracy columns found).")
    timeout: int = cli.field(3600, "Seconds after which one grid run is stopped.",
                             check=cli.positive)
    study: str = cli.field("study", "Name of the Optuna study (workers with the same name and "
                           "--storage share it).")
    storage: str | None = cli.field(None, "Where the study lives: a journal file (default "
                                    "<workdir>/study.journal) or a database URL "
                                    "(sqlite:///study.db, postgresql://...).")
    space: str = cli.field("", "Search space: NAME=log:LOW:HIGH (log-uniform), float:LOW:HIGH, "
                           "int:LOW:HIGH, logint:LOW:HIGH or cat:A|B|C, comma-separated, e.g. "
                           "learning_rate=log:1e-4:1e-1,hidden=int:32:512,cell=cat:tanh|lstm.")
    trials: int = cli.field(20, "Trials of the study in all (across every worker).",
                            check=cli.positive)
    workers: int = cli.field(1, "Local worker processes of the study.", check=cli.positive)
    objective: str = cli.field("loss", "The key of the run's results to optimise ('.' descends "
                               "into nested results, e.g. valid.bits).")
    direction: str = cli.field("minimize", "Optimise the objective upwards or downwards.",
                               choices=("minimize", "maximize"))
    summary: bool = cli.field(True, "Print the study's trials and best trial at the end (the "
                              "worker processes of --workers do not).")
    pruner: str = cli.field("median", "Stop hopeless trials early by their reported validation "
                            "metric.", choices=studies.PRUNERS)

    def check(self) -> None:
        if not self.experiment:
            raise cli.ConfigError("experiment", self.experiment, "required, one of "
                                  + ", ".join(experiment_names()))
        if self.experiment not in experiment_names():
            raise cli.ConfigError("experiment", self.experiment,
                                  "accepted: " + ", ".join(experiment_names()))
        if self.engine == "optuna":
            try:
                studies.parse_space(self.space)
            except ValueError as e:
                raise cli.ConfigError("space", self.space, str(e)) from None

SKIP_METRICS = ("time", "steps_per_sec", "step", "finite", "bad_steps", "total_bad_steps")


def parse_assignments(values: tuple[str, ...], flag: str, multi: bool) -> dict[str, Any]:
    """('a=1,2', 'b=x') -> {'a': ['1', '2'], 'b': ['x']} (or plain strings if not multi)."""
    out: dict[str, Any] = {}
    for item in values:
        name, sep, rhs = item.partition("=")
        name = name.strip().lstrip("-")
        vals = [v.strip() for v in rhs.split(",") if v.strip()] if multi else rhs.strip()
        if not sep or not name or not vals:
            raise cli.ConfigError(flag, item, "expected NAME=VALUE" + (",VALUE..." if multi else "")
                                  + f", e.g. {flag}=hidden=8" + (",16" if multi else ""))
        if name in out:
            raise cli.ConfigError(flag, item, f"{name!r} is given twice")
        if multi and len(set(vals)) < len(vals):
            raise cli.ConfigError(flag, item, "a value is given twice (two runs would share "
                                  "one workdir)")
        out[name] = vals
    return out


def load_experiment(name: str) -> Any:
    """The module ``experiments.<name>`` (its ``Config`` and ``run``)."""
    return importlib.import_module(f"experiments.{name}")


def checked_configs(module: Any, assignments: list[dict[str, str]]) -> list[Any]:
    """The experiment's Config for each assignment of setting texts, each validated."""
    configs = []
    for values in assignments:
        config = dataclasses.replace(module.Config(), **{
            k: cli.parse_value(module.Config, k, v) for k, v in values.items()})
        cli.validate(config)
        configs.append(config)
    return configs


def run_name(point: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in point.items())


def run_metrics(workdir: str) -> list[tuple[str, list[dict[str, Any]]]]:
    """``[(prefix, records)]`` of the run's ``metrics.jsonl`` files: the workdir's own
    (prefix ``""``) and each direct subdirectory's (prefix ``"<subdir>/"``), read by
    :mod:`rnnjax.metrics` (a bad line is skipped, not fatal)."""
    paths = [("", os.path.join(workdir, metrics.FILE))] + [
        (os.path.basename(os.path.dirname(p)) + "/", p)
        for p in sorted(glob.glob(os.path.join(workdir, "*", metrics.FILE)))]
    return [(prefix, metrics.read_records(path)) for prefix, path in paths
            if os.path.isfile(path)]


def final_metrics(workdir: str) -> dict[str, float]:
    """The run's final numbers: last metrics records and results.json leaves."""
    out: dict[str, float] = {}
    for prefix, records in run_metrics(workdir):
        if records:
            for k, v in records[-1].items():
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
    for _, records in run_metrics(workdir)[:1]:
        pts = [(r["step"], r["loss"]) for r in records if isinstance(r.get("loss"), float)]
        return [p[0] for p in pts], [p[1] for p in pts]
    return [], []


def launch(module: str, workdir: str, flag_values: dict[str, Any], timeout: int) -> dict[str, Any]:
    """Run one configuration to completion; returns its status and timing."""
    if os.path.exists(os.path.join(workdir, "done.json")):
        return checkpoint.load_json(workdir, "done")
    os.makedirs(workdir, exist_ok=True)
    cmd = [sys.executable, "-m", module, f"--workdir={workdir}"] + [
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


def run_grid(config: Config, workdir: str) -> dict[str, Any]:
    """Every grid point x seed as a process; the results tables and loss plot."""
    module = load_experiment(config.experiment)
    grid = parse_assignments(config.grid, "grid", multi=True)
    fixed = parse_assignments(config.set, "set", multi=False)
    if "seed" in grid or "seed" in fixed:
        raise cli.ConfigError("grid", config.grid, "use seeds=N rather than sweeping seed")
    points = rsweep.grid(**grid) if grid else [{}]
    seeded = "seed" in {f.name for f in dataclasses.fields(module.Config)}
    if config.seeds > 1 and not seeded:
        raise cli.ConfigError("seeds", config.seeds, f"experiments.{config.experiment} has no "
                              "seed setting: use seeds=1")
    jobs = []
    for point in points:
        for seed in range(config.seeds):
            name = run_name({**point, "seed": seed})
            jobs.append({"point": point, "seed": seed,
                         "workdir": os.path.join(workdir, name.replace("/", "_")),
                         "flags": {**fixed, **point, **({"seed": str(seed)} if seeded else {})}})
    checked_configs(module, [j["flags"] for j in jobs])  # every run is valid before any starts
    flag_jobs = {"progress": "false"} if any(
        f.name == "progress" for f in dataclasses.fields(module.Config)) else {}
    print(f"{len(jobs)} runs of {config.experiment}, {config.parallel} at a time, under {workdir}")
    with concurrent.futures.ThreadPoolExecutor(config.parallel) as pool:
        futures = {pool.submit(launch, f"experiments.{config.experiment}", j["workdir"],
                               {**flag_jobs, **j["flags"]}, config.timeout): j for j in jobs}
        for done, fut in enumerate(concurrent.futures.as_completed(futures), 1):
            job = futures[fut]
            job.update(fut.result())
            print(f"[{done}/{len(jobs)}] {os.path.basename(job['workdir'])}: {job['status']} "
                  f"({job['seconds']:.0f} s)", flush=True)
    for job in jobs:
        job["metrics"] = final_metrics(job["workdir"]) if job["status"] == "ok" else {}
    csv_path, md_path = write_tables(workdir, jobs, list(grid), list(config.metrics))
    png = plot_losses(workdir, jobs)
    with open(md_path) as f:
        print(f.read())
    print(f"wrote {csv_path}, {md_path}, {png}")
    failed = [j for j in jobs if j["status"] != "ok"]
    if failed:
        print(f"{len(failed)} runs failed; see stderr.txt in: "
              + ", ".join(j["workdir"] for j in failed[:5]))
    return {"runs": [{k: j[k] for k in ("point", "seed", "workdir", "status", "metrics")}
                     for j in jobs], "failed": len(failed)}


def lookup(results: dict[str, Any], key: str) -> float:
    """``results[a][b]`` for key ``a.b`` (or a key with dots in it), as a float."""
    if key in results:
        value = results[key]
    else:
        value = results
        for part in key.split("."):
            if not isinstance(value, dict) or part not in value:
                raise KeyError(f"objective {key!r} is not in the run's results (keys: "
                               f"{', '.join(sorted(results))})")
            value = value[part]
    return float(value)


def trial_objective(config: Config, workdir: str) -> Any:
    """The Optuna objective: one run of the experiment at the trial's point."""
    import optuna

    module = load_experiment(config.experiment)
    space = studies.parse_space(config.space)
    fixed = parse_assignments(config.set, "set", multi=False)
    reports = "report" in inspect.signature(module.run).parameters

    def objective(trial: Any) -> float:
        point = studies.suggest(trial, space)
        texts = {**fixed, **{k: str(v) for k, v in point.items()}}
        run_config = dataclasses.replace(module.Config(), **{
            k: cli.parse_value(module.Config, k, v) if isinstance(v, str) else v
            for k, v in {**fixed, **point}.items()})
        cli.validate(run_config)
        trial_dir = trial.user_attrs.get("workdir") or os.path.join(workdir, f"trial_{trial.number}")
        trial.set_user_attr("workdir", trial_dir)
        trial.set_user_attr("settings", texts)

        def report(step: int, record: dict[str, Any]) -> None:
            # A run reports its validation metrics under the objective's own key (e.g.
            # {"valid": {"bits": ...}} for valid.bits) or as a logged eval_<name> record.
            value = None
            for key in (config.objective, "eval_" + config.objective.replace(".", "_")):
                try:
                    value = lookup(record, key)
                    break
                except (KeyError, TypeError, ValueError):
                    continue
            if value is None:
                return
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step}: {config.objective}={value:.4g}")

        kwargs = {"report": report} if reports else {}
        results = module.run(run_config, trial_dir, **kwargs)
        return lookup(results, config.objective)

    return objective


def run_study(config: Config, workdir: str) -> dict[str, Any]:
    """This process as a worker of the study (``workers`` > 1: that many local worker
    processes), then the study's best trial, table and plots."""
    module = load_experiment(config.experiment)
    hints = {f.name: f.type for f in dataclasses.fields(module.Config)}
    for p in studies.parse_space(config.space).values():
        if p.name not in hints:
            raise cli.ConfigError("space", config.space, f"{p.name!r} is not a setting of "
                                  f"experiments.{config.experiment}")
        if p.kind in ("int", "logint") and "int" not in str(hints[p.name]):
            raise cli.ConfigError("space", config.space, f"{p.name} is not an integer setting: "
                                  "use float: or log:")
    checked_configs(module, [parse_assignments(config.set, "set", multi=False)])
    storage = config.storage or os.path.join(workdir, "study.journal")
    s = studies.load(config.study, storage, direction=config.direction, pruner=config.pruner)
    if config.workers > 1:
        argv = [a for a in sys.argv[1:] if not a.startswith(("--workers", "--summary"))]
        logs = [os.path.join(workdir, f"worker_{i}.log") for i in range(config.workers)]
        print(f"{config.workers} workers of study {config.study!r} ({storage}); their output "
              f"goes to {os.path.join(workdir, 'worker_*.log')}", flush=True)
        procs = []
        for log in logs:
            with open(log, "a") as out:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "experiments.sweep", *argv, "--workers=1",
                     "--nosummary", "--storage=" + storage], stdout=out, stderr=subprocess.STDOUT))
        codes = [p.wait() for p in procs]
        if any(codes):
            print(f"workers exited with {codes} (see their logs); rerun the command to "
                  "continue the study")
    else:
        studies.optimize(s, trial_objective(config, workdir), config.trials)
    if not config.summary:
        return {"study": config.study, "storage": storage}
    rows = studies.trials_table(s)
    table = os.path.join(workdir, "trials.csv")
    with open(table, "w", newline="") as f:
        columns = sorted({k for r in rows for k in r}, key=lambda k: (k not in (
            "number", "state", "value"), k))
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    for r in rows:
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in r.items() if v is not None))
    results: dict[str, Any] = {"study": config.study, "storage": storage, "trials": rows,
                               "table": table}
    try:
        best = s.best_trial
    except ValueError:
        print("no trial completed yet")
        return results
    results.update(best_value=best.value, best_params=best.params, best_trial=best.number,
                   best_settings=best.user_attrs.get("settings"),
                   best_workdir=best.user_attrs.get("workdir"),
                   plots=studies.plot(s, workdir))
    print(f"best trial {best.number}: {config.objective}={best.value:.6g} with "
          + ", ".join(f"{k}={v}" for k, v in best.params.items()))
    return results


def run(config: Config, workdir: str | None) -> dict[str, Any]:
    """The sweep: a grid of processes or an Optuna study, under ``workdir``."""
    cli.validate(config)
    if not workdir:
        raise cli.ConfigError("workdir", workdir, "required: the sweep's root directory")
    cli.check_workdir(workdir)
    parse_assignments(config.set, "set", multi=False)
    results = run_grid(config, workdir) if config.engine == "grid" else run_study(config, workdir)
    if config.summary:  # a study's worker processes leave the summary to the command
        checkpoint.save_json(workdir, "results", {**results, "config": cli.as_dict(config)})
    return results


def main(argv: list[str]) -> None:
    results = cli.call(run, cli.from_flags(Config, argv))
    if results.get("failed"):
        sys.exit(1)


if __name__ == "__main__":
    cli.define_flags(Config)
    app.run(main)
