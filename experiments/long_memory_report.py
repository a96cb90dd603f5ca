"""The long-term-dependency table's rows: what identifies one, and the markdown tables
and plots that pool them (:mod:`experiments.long_memory_table` writes the rows).

    from experiments import cli, long_memory_report as report
    rows = cli.read_jsonl("docs/long_memory_table.jsonl")
    print(report.overview(rows), report.summarize(rows), sep="\n\n")
    report.plot_success(rows, "success.png")
"""

from __future__ import annotations

import os
import re

import numpy as np

from rnnjax.data import synthetic

# The table's methods (experiments.long_memory_table), in the order the reports show them.
METHODS = ("hf_sd", "hf", "sgd_cr", "adam_clip", "lstm_adam")


def _method_rank(method: str) -> int:
    """Where a method comes in the reports: METHODS' order, any other method last."""
    return METHODS.index(method) if method in METHODS else len(METHODS)


def _problem_order(problems) -> list[str]:
    """The papers' problems in their order, then any others alphabetically."""
    papers = synthetic.PAPER_TASKS
    return sorted(set(problems),
                  key=lambda p: (papers.index(p) if p in papers else len(papers), p))


def _cell_of(row: dict) -> tuple:
    """A row's cell: problem, T, method, tag and the shortest training length."""
    lowest = row.get("train_lengths", [None])[0]
    return (row["problem"], int(row["T"]), row["method"], row.get("tag", ""), lowest)


def row_key(row: dict) -> tuple:
    """What makes a row: its cell and its seed."""
    return (*_cell_of(row), int(row["seed"]))


def _machine_text(machine: str) -> str:
    """'Intel(R) Xeon(R) Processor, 2 core(s) usable' -> 'Intel Xeon ×2'."""
    name, _, cores = machine.rpartition(", ")
    if not cores.endswith("core(s) usable"):
        return machine
    name = " ".join(re.sub(r"\((R|TM)\)|\bProcessor\b|\bCPU\b|@.*", " ", name).split())
    return f"{name} ×{cores.split()[0]}"


def _budget_text(row: dict) -> str:
    b = row.get("budget", {})
    text = f"{b.get('max_minutes', '?'):g} min"
    if row["method"] in ("hf", "hf_sd"):
        text += (f", grad {b.get('gradient_batch')}, curv {b.get('curvature_batch')}, "
                 f"CG ≤ {b.get('cg_iters')}")
        if b.get("score_on", "separate") != "separate":
            text += f", scored on the {b['score_on']} batch"
        text += f", inputs N(0, {b.get('input_scale', 1.0):g}²)"  # rows before the key: 1
    else:
        text += f", batch {b.get('batch')}, {b.get('hidden')} units"
        if b.get("init", "smart_tanh") != "smart_tanh":  # rows before the key: smart_tanh
            text += f", {b['init']} init"
        if row["method"] == "sgd_cr":
            text += f", Ω weight {b.get('omega', '?'):g}"
    stop = b.get("stop_error_rate", synthetic.SUCCESS_ERROR_RATE)
    if stop < synthetic.SUCCESS_ERROR_RATE:
        text += ", trained to zero errors" if stop == 0 else f", trained to ≤ {stop:.2%} wrong"
        if b.get("across_lengths") or "train_lengths_error_rate" in row:  # older rows: the key
            text += " at T and across the training lengths"
    if row["updates"] >= b.get("max_updates", float("inf")):  # stopped by the update cap
        text += f", ≤ {b['max_updates']} updates"
    return text


def summarize(rows: list[dict]) -> str:
    """The rows as a markdown table, one line per cell (problem, T, method, tag,
    training lengths) with its seeds pooled: solved/run, the error rates, the median
    updates and training seconds of the solved seeds, and the budget of a row."""
    cells: dict[tuple, list[dict]] = {}
    for row in rows:
        cells.setdefault(_cell_of(row), []).append(row)
    order = lambda c: (c[0], c[1], _method_rank(c[2]), c[3], c[4] or 0)
    lines = ["| problem | T | method | tag | solved | % wrong per seed | updates (median, "
             "solved) | train s (median, solved) | generalisation | budget per program | "
             "machine |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for cell in sorted(cells, key=order):
        mine = sorted(cells[cell], key=lambda r: r["seed"])
        won = [r for r in mine if r["solved"]]
        med = lambda k: f"{np.median([r[k] for r in won]):.0f}" if won else "–"
        T = f"{cell[4]}–{cell[1]}" if cell[4] else str(cell[1])
        scored = [r["generalization"] for r in won if "generalization" in r]
        general = "; ".join(f"T={L}: " + "/".join(f"{100 * g[L]:.1f}%" if L in g else "–"
                                                   for g in scored)
                            for L in sorted({L for g in scored for L in g}, key=int))
        spread = "/".join(f"{100 * r['train_lengths_error_rate']:.1f}%" for r in mine
                          if "train_lengths_error_rate" in r)
        if spread:  # the zero-error rule's test across the training lengths
            general = f"training lengths: {spread}" + (f"; {general}" if general else "")
        wrong = "/".join(f"{100 * r['error_rate']:.1f}" + (  # the best test, then the last
            f" (last {100 * r['last_error_rate']:.1f})" if "last_error_rate" in r else "")
            for r in mine)
        budget = " or ".join(dict.fromkeys(_budget_text(r) for r in mine))
        machines = [_machine_text(r.get("machine", "?")) for r in mine]  # per seed if they differ
        machine = machines[0] if len(set(machines)) == 1 else "/".join(machines)
        lines.append(f"| {cell[0]} | {T} | {cell[2]} | {cell[3]} | {len(won)}/{len(mine)} | "
                     f"{wrong} | {med('updates')} | {med('train_seconds')} | {general or '–'} | "
                     f"{budget} | {machine} |")
    return "\n".join(lines)


def overview(rows: list[dict]) -> str:
    """A markdown table at a glance: a line per method and (training) length, a column
    per problem, each cell ``solved/seeds`` over every tag, counting a seed once (its
    last row: a later, longer or better run of the same seed replaces an earlier one)."""
    last: dict[tuple, dict] = {}
    for r in rows:
        lengths = f"{r['train_lengths'][0]}–{r['T']}" if "train_lengths" in r else str(r["T"])
        budget = r.get("budget", {})
        init = budget.get("init", "smart_tanh")  # another init or Ω weight: its own line
        variant = [init] if init != "smart_tanh" else []
        if r["method"] == "sgd_cr" and "omega" in budget:
            variant.append(f"Ω {budget['omega']:g}")
        method = r["method"] + (f" ({', '.join(variant)})" if variant else "")
        last[(method, int(r["T"]), lengths, r["problem"], int(r["seed"]))] = r
    problems = _problem_order(k[3] for k in last)
    lines = ["| method | T | " + " | ".join(problems) + " |",
             "|---|---|" + "---|" * len(problems)]
    for method, T, lengths in sorted({k[:3] for k in last},
                                     key=lambda k: (_method_rank(k[0].split()[0]), *k)):
        cells = []
        for p in problems:
            mine = [r for k, r in last.items() if k[:4] == (method, T, lengths, p)]
            cells.append(f"{sum(r['solved'] for r in mine)}/{len(mine)}" if mine else "")
        lines.append(f"| {method} | {lengths} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_success(rows: list[dict], path: str) -> None:
    """Fraction of seeds solved against T: a panel per problem, a line per method and tag
    (a colour per method). Rows trained on a range of lengths (``--min_train_length``)
    are left out: their test is at T, but not their training; ``plot_generalization``
    draws them."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if len(set(r.get("train_lengths", [r["T"]]))) == 1]
    problems = _problem_order(r["problem"] for r in rows)
    groups = sorted({(r["method"], r.get("tag", "")) for r in rows},
                    key=lambda g: (_method_rank(g[0]), g[1]))
    colours = dict(zip(METHODS, plt.get_cmap("tab10").colors))
    styles, markers = ["-", "--", ":", "-."], ["o", "s", "^", "D"]  # a tag of one point: its marker
    ncols = min(4, max(1, len(problems)))
    nrows = max(1, -(-len(problems) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols + 1.8, 2.3 * nrows + 0.4),
                             sharex=True, sharey=True, squeeze=False)
    ticks = sorted({int(r["T"]) for r in rows})
    handles = {}
    for ax, problem in zip(axes.flat, problems):
        for method, tag in groups:
            mine = [r for r in rows if r["problem"] == problem and r["method"] == method
                    and r.get("tag", "") == tag]
            if not mine:
                continue
            lengths = sorted({int(r["T"]) for r in mine})
            won = [sum(r["solved"] for r in mine if int(r["T"]) == T) for T in lengths]
            counts = [sum(int(r["T"]) == T for r in mine) for T in lengths]
            nth = [t for m, t in groups if m == method].index(tag)
            # Lines that agree would hide each other: each group sits a little apart.
            lift = 0.03 * (groups.index((method, tag)) - (len(groups) - 1) / 2)
            line, = ax.plot(lengths, [w / n + lift for w, n in zip(won, counts)],
                            marker=markers[nth % len(markers)], linestyle=styles[nth % len(styles)],
                            color=colours.get(method, "grey"), markersize=4)
            handles[f"{method} {tag}".strip()] = line
            for T, w, n in zip(lengths, won, counts):  # solved/run beside each point
                ax.annotate(f"{w}/{n}", (T, w / n + lift), textcoords="offset points",
                            xytext=(4, -2), fontsize=6, color=line.get_color())
        ax.set_title(problem, fontsize=8)
        ax.set_xscale("log")
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_ylim(-0.15, 1.15)
        ax.set_yticks([0, 0.5, 1])
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(problems):]:
        ax.set_visible(False)
    fig.supxlabel("T (nominal sequence length)", fontsize=8)
    fig.supylabel("fraction of seeds solved", fontsize=8)
    fig.suptitle("Long-term-dependency problems (labels: seeds solved/run; lines drawn slightly "
                 "apart where they agree)", fontsize=9)
    fig.legend(handles.values(), handles.keys(), fontsize=7, loc="center right")
    legend_width = 0.5 + 0.06 * max(map(len, handles), default=20)  # inches, at fontsize 7
    fig.tight_layout(rect=(0, 0, 1 - legend_width / fig.get_figwidth(), 1))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_generalization(rows: list[dict], path: str) -> None:
    """Error rate against test length, a line per row scored with ``--generalize_to``:
    its test at T, then each longer length; the training lengths are drawn as a bar."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("generalization")]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    ax.set_prop_cycle(color=plt.get_cmap("tab20").colors)  # twenty lines before a colour repeats
    for r in rows:
        lengths = [int(r["T"])] + [int(L) for L in r["generalization"]]
        wrong = [r["error_rate"]] + list(r["generalization"].values())
        lo, hi = r.get("train_lengths", [r["T"], r["T"]])
        init = r.get("budget", {}).get("init")
        trained = f"{lo}–{hi}" if lo != hi else f"{hi}"
        label = (f"{r['method']}{f' ({init})' if init else ''}, {r['problem']} trained on "
                 f"{trained}, seed {r['seed']}, {r.get('tag', '')}").strip(", ")
        line, = ax.plot(lengths, [100 * w for w in wrong], "o-", label=label, markersize=4)
        ax.plot([lo, hi], [-3, -3], color=line.get_color(), linewidth=4, alpha=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("test length (log scale; bars: the training lengths)")
    ax.set_ylabel("% of 10,000 fresh sequences wrong")
    ax.set_ylim(-6, 100)
    ax.set_title("Generalisation to longer sequences", fontsize=9)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")  # the legend sits beside the axes
    plt.close(fig)
