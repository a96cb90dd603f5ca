"""Which cells and remedies solve a long-term-dependency problem at which length.

Runs ``experiments.long_memory`` once per (T, variant), all in this one process
(imports, data generators and the evaluation compile once; each variant
compiles its own train step), each under the step budget ``--steps`` and the
training-time cap ``--max_minutes``, and writes the table: for each T, whether
each variant reached the success rule (under 1% of 10,000 fresh sequences
wrong) and after how many updates and seconds of training (compilation and the
periodic checks excluded).

    python -m experiments.long_memory_sweep --task=temporal_order \
        --lengths=10,20,50,100,200 --steps=1000 --max_minutes=1 --hidden=64 \
        --batch_size=32 --learning_rate=3e-3 --eval_every=100 --eval_sequences=500 \
        --out_dir=/tmp/long_memory_sweep

Every flag of ``experiments.long_memory`` (optimizer, learning rate, batch, hidden
size, budget, ...) applies to all runs; the variant sets ``--cell`` and the
remedies: ``tanh`` (orthogonal W_hh), ``tanh+clip`` (the same with clipping by
global norm 1 and the NaN/Inf repair), ``irnn`` (ReLU, identity W_hh), ``lstm``
and ``gru``. With ``--skip_longer_after_failure`` a variant that failed at some T
is not run at longer T (marked "skipped" in the table, not as a measured failure).
"""

from __future__ import annotations

import json
import os
import time

from absl import app, flags
from absl.testing import flagsaver

from experiments import long_memory
from rnnjax.train import NonFiniteError
from experiments.flags import define as define_flag

FLAGS = flags.FLAGS

VARIANTS = {
    "tanh": dict(cell="tanh"),
    "tanh+clip": dict(cell="tanh", clip_norm=1.0, nan_repair=True),
    "irnn": dict(cell="irnn"),
    "lstm": dict(cell="lstm"),
    "gru": dict(cell="gru"),
}

define_flag("list", "lengths", ["10", "20", "50", "100", "200"], "The lengths T.")
define_flag("list", "variants", list(VARIANTS), "Variants, from: " + ", ".join(VARIANTS) + ".")
define_flag("bool", "skip_longer_after_failure", True,
                  "Do not run a variant at longer T once it failed at a shorter one.")
define_flag("string", "out_dir", "/tmp/long_memory_sweep", "Workdirs, results.jsonl and table.md.")


def run_one(variant: str, T: int, out_dir: str) -> dict:
    workdir = os.path.join(out_dir, f"{variant.replace('+', '_')}_T{T}")
    t0 = time.time()
    with flagsaver.flagsaver(seq_len=T, workdir=workdir, checkpoint_every=0, progress=False,
                             results=None, **VARIANTS[variant]):
        try:
            d = long_memory.run_from_flags()
        except NonFiniteError as e:
            return {"variant": variant, "seq_len": T, "status": "non-finite",
                    "message": str(e)[:200], "wall_seconds": round(time.time() - t0, 1)}
    return {"variant": variant, "seq_len": T, "status": "solved" if d["solved"] else "failed",
            "updates": d["updates"], "train_seconds": d["train_seconds"],
            "error_rate": d["error_rate"], "wall_seconds": round(time.time() - t0, 1),
            "verdict_start": d["start"]["summary"], "verdict_end": d["end"]["summary"]}


def cell_text(r: dict | None) -> str:
    if r is None:
        return "–"
    if r["status"] == "skipped":
        return "skipped"
    if r["status"] == "solved":
        return f"**yes**: {r['updates']} steps, {r['train_seconds']:.0f} s"
    if r["status"] == "non-finite":
        return "no (stopped: non-finite gradients)"
    if r["status"] == "failed":
        capped = r["updates"] < FLAGS.steps
        return (f"no ({r['error_rate']:.0%} wrong after {r['updates']} steps"
                + (", time cap)" if capped else ")"))
    return r["status"]


def table(results: list[dict], lengths: list[int], variants: list[str]) -> str:
    by = {(r["variant"], r["seq_len"]): r for r in results}
    lines = ["| T | " + " | ".join(variants) + " |", "|---" * (len(variants) + 1) + "|"]
    for T in lengths:
        lines.append(f"| {T} | " + " | ".join(cell_text(by.get((v, T))) for v in variants) + " |")
    return "\n".join(lines)


def main(argv):
    del argv
    try:
        lengths = [int(x) for x in FLAGS.lengths]
    except ValueError:
        raise app.UsageError(f"--lengths={','.join(FLAGS.lengths)} is invalid: expected "
                             "comma-separated integers, e.g. 10,20,50") from None
    unknown = [v for v in FLAGS.variants if v not in VARIANTS]
    if unknown:
        raise app.UsageError(f"--variants: unknown {unknown}; accepted: {', '.join(VARIANTS)}")
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    results_path = os.path.join(FLAGS.out_dir, "results.jsonl")
    results: list[dict] = []
    failed: set[str] = set()
    for T in sorted(lengths):
        for v in FLAGS.variants:
            if v in failed and FLAGS.skip_longer_after_failure:
                r = {"variant": v, "seq_len": T, "status": "skipped"}
            else:
                r = run_one(v, T, FLAGS.out_dir)
                if r["status"] != "solved":
                    failed.add(v)
            results.append(r)
            with open(results_path, "a") as f:
                f.write(json.dumps(r) + "\n")
            print(json.dumps(r), flush=True)
    # The table covers every run recorded in out_dir (earlier sweeps into the same
    # folder included); a measured result replaces a "skipped" one.
    recorded: dict = {}
    with open(results_path) as f:
        for line in f:
            r = json.loads(line)
            k = (r["variant"], r["seq_len"])
            if r["status"] != "skipped" or k not in recorded:
                recorded[k] = r
    all_lengths = sorted({T for _, T in recorded})
    all_variants = [v for v in VARIANTS if any(k[0] == v for k in recorded)]
    md = table(list(recorded.values()), all_lengths, all_variants)
    with open(os.path.join(FLAGS.out_dir, "table.md"), "w") as f:
        f.write(md + "\n")
    print(md)


if __name__ == "__main__":
    app.run(main)
