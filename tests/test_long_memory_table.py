"""experiments.long_memory_table: rows appended to a JSONL file; a rerun skips them."""

import dataclasses
import json
import os

import numpy as np
import pytest

from experiments import cli, long_memory_report as report, long_memory_table as table


def tiny(path, **kw):
    settings = dict(results=str(path), problems=("temporal_order",), lengths=(10,),
                    methods=("adam_clip",), seeds=(0,), max_updates=2, eval_every=1, hidden=4,
                    test_sequences=100, progress=False)
    return dataclasses.replace(table.Config(), **{**settings, **kw})


def test_rows_are_appended_and_a_rerun_skips_them(tmp_path, monkeypatch):
    path = tmp_path / "table.jsonl"
    first = table.run(tiny(path), None)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(first["rows"]) == 1 and rows == first["rows"]
    row = rows[0]
    assert {row[k] for k in ("problem", "T", "method", "seed")} >= {"temporal_order", 10}
    assert row["updates"] == 2 and row["grad_evals"] == 2 and row["budget"]["max_updates"] == 2
    assert isinstance(row["solved"], bool) and row["machine"]

    def no_training(*args, **kwargs):
        raise AssertionError("a finished row was recomputed")

    monkeypatch.setattr(table, "run_cell", no_training)
    again = table.run(dataclasses.replace(tiny(path), max_updates=5), None)
    assert again == {"rows": [], "skipped": 1}
    assert path.read_text().count("\n") == 1
    monkeypatch.undo()
    # Another tag is another row.
    table.run(tiny(path, tag="other"), None)
    assert [json.loads(x)["tag"] for x in path.read_text().splitlines()] == ["", "other"]
    # The summary pools the seeds of a cell; it trains nothing.
    table.run(tiny(path, seeds=(1,)), None)
    summary = report.summarize(table.cli.read_jsonl(str(path)))
    assert "| temporal_order | 10 | adam_clip |  | " in summary and summary.count("\n") == 3
    assert table.run(dataclasses.replace(tiny(path), summary=True), None)["skipped"] == 3
    # The plot reads the rows and trains nothing.
    out = table.run(dataclasses.replace(tiny(path), plot=str(tmp_path / "img" / "s.png")), None)
    assert out["skipped"] == 3 and (tmp_path / "img" / "s.png").stat().st_size > 0
    # The generalisation plot needs rows scored at longer lengths, and says so.
    drawn = dataclasses.replace(tiny(path), plot_generalization=str(tmp_path / "img" / "g.png"))
    with pytest.raises(table.cli.ConfigError, match="scored with --generalize_to"):
        table.run(drawn, None)
    with path.open("a") as f:
        f.write(json.dumps(dict(problem="temporal_order", T=100, method="sgd_cr", seed=0,
                                solved=True, error_rate=0.0, train_lengths=[50, 100],
                                generalization={"1000": 0.6})) + "\n")
    table.run(drawn, None)
    assert (tmp_path / "img" / "g.png").stat().st_size > 0


@pytest.mark.parametrize("field,value,message", [
    ("problems", ("adding",), "accepted values are addition"),
    ("methods", ("sgd",), "accepted values are hf_sd"),
    ("lengths", (5,), "expected at least 10"),
    ("stop_error_rate", 0.5, r"expected a rate in \[0, 0.01\]"),
])
def test_bad_settings_fail_before_any_work(tmp_path, field, value, message):
    config = dataclasses.replace(tiny(tmp_path / "t.jsonl"), **{field: value})
    with pytest.raises(cli.ConfigError, match=message):
        table.run(config, None)
    assert not (tmp_path / "t.jsonl").exists()


@pytest.mark.parametrize("method", ["adam_clip", "hf_sd"])
def test_seeds_vmapped_in_one_program_match_seeds_run_alone(tmp_path, method):
    """Two seeds trained together give each seed's row of a run on its own."""
    config = tiny(tmp_path / "a.jsonl", seeds=(0, 1), max_updates=3, vmap_seeds=True,
                  methods=(method,), hf_gradient_batch=40, hf_curvature_batch=20, cg_iters=3)
    together = table.run(config, None)["rows"]
    alone = table.run(dataclasses.replace(config, results=str(tmp_path / "b.jsonl"),
                                          vmap_seeds=False), None)["rows"]
    assert [r["seeds_in_program"] for r in together] == [2, 2]
    assert [r["seeds_in_program"] for r in alone] == [1, 1]
    for a, b in zip(together, alone):
        assert (a["seed"], a["updates"], a["solved"]) == (b["seed"], b["updates"], b["solved"])
        np.testing.assert_allclose(a["final_loss"], b["final_loss"], rtol=1e-5)
        assert a["error_rate"] == pytest.approx(b["error_rate"], abs=0.02)
        assert a["curvature_products"] == b["curvature_products"]  # HF's CG: the same solves
    assert together[0]["final_loss"] != together[1]["final_loss"]  # seeds differ


def test_training_to_zero_errors_goes_on_past_the_first_solve(tmp_path):
    """Pascanu et al.'s stopping rule: the same trajectory, kept training until no test
    sequence is wrong; the row says when it first counted as solved."""
    settings = dict(hidden=16, max_updates=3000, eval_every=20, test_sequences=500)
    first = table.run(tiny(tmp_path / "a.jsonl", **settings), None)["rows"][0]
    zero = table.run(tiny(tmp_path / "b.jsonl", stop_error_rate=0.0, **settings), None)["rows"][0]
    assert first["solved"] and zero["solved"] and "first_solved_updates" not in first
    assert zero["error_rate"] == 0.0 and zero["budget"]["stop_error_rate"] == 0.0
    assert zero["first_solved_updates"] == first["updates"] <= zero["updates"]
    assert "trained to zero errors" in report.summarize([zero])


def test_summary_names_the_machine_of_each_seed_when_they_differ():
    row = dict(problem="addition", T=200, method="hf_sd", tag="t", solved=True, error_rate=0.0,
               updates=5, train_seconds=1.0, budget={"max_minutes": 1.0}, seed=0,
               machine="AMD EPYC, 1 core(s) usable")
    other = dict(row, seed=1, machine="Intel(R) Xeon(R) Processor, 2 core(s) usable")
    assert report.summarize([row]).endswith("| AMD EPYC ×1 |")
    assert report.summarize([row, other]).endswith("| AMD EPYC ×1/Intel Xeon ×2 |")


@pytest.mark.parametrize("init", ["smart_tanh", "basic_tanh"])
def test_sgd_cr_starts_from_pascanus_initialisations(tmp_path, init):
    """smart_tanh: N(0, 0.01²) inputs and readout, W_hh with 15 inputs per unit at spectral
    radius 0.95; basic_tanh: every weight dense N(0, 0.1²) (RNN.py of Pascanu's code)."""
    config = tiny(tmp_path / "t.jsonl", sgd_cr_hidden=50, sgd_cr_init=init)
    task = table.synthetic.get("temporal_order")
    _, params, _ = table.build("sgd_cr", task, config, table.jax.random.key(0))
    w_hh = np.asarray(params["cell"]["W_hh"])
    w_in, w_out = (np.asarray(params["cell"]["W_xh"]), np.asarray(params["W_hy"]))
    if init == "smart_tanh":
        assert ((w_hh != 0).sum(axis=0) == 15).all() or ((w_hh != 0).sum(axis=1) == 15).all()
        assert np.abs(np.linalg.eigvals(w_hh)).max() == pytest.approx(0.95, rel=1e-4)
        expected = 0.01
    else:
        assert (w_hh != 0).all() and w_hh.std() == pytest.approx(0.1, rel=0.05)
        expected = 0.1
    for w in (w_in, w_out):
        assert w.std() == pytest.approx(expected, rel=0.3)
    row = table.run(dataclasses.replace(config, methods=("sgd_cr",)), None)["rows"][0]
    assert row["budget"]["init"] == init
    assert ("basic_tanh init" in report.summarize([row])) == (init == "basic_tanh")
    assert f"Ω weight {config.omega:g}" in report.summarize([row])


def test_variable_length_training_is_its_own_row(tmp_path):
    path = tmp_path / "v.jsonl"
    fixed = table.run(tiny(path, lengths=(12,)), None)["rows"]
    varied = table.run(tiny(path, lengths=(12,), min_train_length=10), None)["rows"]
    assert "train_lengths" not in fixed[0] and varied[0]["train_lengths"] == [10, 12]
    assert table.run(tiny(path, lengths=(12,), min_train_length=10), None)["skipped"] == 1
    with pytest.raises(cli.ConfigError, match="min_train_length.*at most the shortest"):
        table.run(tiny(path, lengths=(12,), min_train_length=13), None)


@pytest.mark.parametrize("method", ["adam_clip", "hf"])
def test_a_program_resumes_from_its_saved_state_exactly(tmp_path, monkeypatch, capsys, method):
    """A program stopped after 3 updates and rerun to 5 gives the row of 5 updates in one go."""
    settings = dict(methods=(method,), seeds=(0, 1) if method == "adam_clip" else (0,),
                    vmap_seeds=True,
                    hf_gradient_batch=40, hf_curvature_batch=20, cg_iters=3,
                    checkpoint_minutes=1e-9)  # save at every check
    whole = table.run(tiny(tmp_path / "whole.jsonl", max_updates=5, **settings), None)["rows"]
    monkeypatch.setattr(table._Saver, "finish", lambda self: None)  # as if killed after saving
    table.run(tiny(tmp_path / "cut.jsonl", max_updates=3, **settings), str(tmp_path / "w"))
    monkeypatch.undo()
    saved = list((tmp_path / "w" / "programs").iterdir())
    assert len(saved) == 1
    capsys.readouterr()
    resumed = table.run(tiny(tmp_path / "resumed.jsonl", max_updates=5, **settings),
                        str(tmp_path / "w"))["rows"]
    assert "at update 3" in capsys.readouterr().err
    for a, b in zip(whole, resumed):
        assert (a["updates"], a["error_rate"], a["solved"]) == (b["updates"], b["error_rate"],
                                                                 b["solved"])
        np.testing.assert_allclose(a["final_loss"], b["final_loss"], rtol=1e-6)
    assert not saved[0].exists()  # removed once the rows were written


def test_length_buckets_pad_less_and_leave_the_update_unchanged(tmp_path):
    """A batch of length 30 padded to its bucket (50 steps) or to T = 200 gives the same
    SGD-CR update (Omega included): padding is unscored and the network is causal."""
    config = tiny(tmp_path / "b.jsonl", methods=("sgd_cr",), sgd_cr_hidden=8)
    task = table.synthetic.get("temporal_order")
    lengths = table.Lengths(task, 200, 30, 0, bucket=25)
    assert lengths.padded(30) == 50 and lengths.padded(51) == 75 and lengths.padded(200) == 200
    assert set(lengths.buckets()) == {50, 75, 100, 125, 150, 175, 200}
    assert table.Lengths(task, 200, 30, 0).padded(30) == 200  # without buckets: T
    model, _, net = table.build("sgd_cr", task, config, table.jax.random.key(0))
    opt, one_step = table._first_order_step("sgd_cr", task, model, net, config)
    state = table.train.init_state(model.init(table.jax.random.key(1)), opt, seed=0)
    key = table.jax.random.key(2)
    short, full = (task.generate_padded(key, 20, 30, s) for s in (50, 200))
    (a, ma), (b, mb) = one_step(state, short), one_step(state, full)
    np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-6)
    for x, y in zip(table.jax.tree.leaves(a.params), table.jax.tree.leaves(b.params)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)


def test_trained_networks_are_kept_beside_earlier_ones(tmp_path):
    config = tiny(tmp_path / "k.jsonl", seeds=(0, 1), vmap_seeds=True)
    table.run(config, str(tmp_path / "w"))
    table.run(dataclasses.replace(config, results=str(tmp_path / "k2.jsonl")), str(tmp_path / "w"))
    (kept,) = (tmp_path / "w" / "networks").iterdir()
    assert table.checkpoint.all_steps(str(kept)) == [0, 1]
    programs = tmp_path / "w" / "programs"  # the resumable state is gone
    assert not programs.exists() or not list(programs.iterdir())
    task = table.synthetic.get("temporal_order")
    _, params, _ = table.build("adam_clip", task, config, table.jax.random.key(0))
    template = table.jax.tree.map(lambda x: np.zeros((2, *x.shape), x.dtype), params)
    restored = table.checkpoint.restore(str(kept), template, step=0)
    for leaf in table.jax.tree.leaves(restored):
        assert leaf.shape[0] == 2 and np.isfinite(leaf).all()


def test_overview_counts_each_seed_once_by_its_last_row():
    row = lambda seed, solved, tag, **kw: dict(problem="addition", T=100, method="hf_sd",
                                              seed=seed, solved=solved, tag=tag, **kw)
    rows = [row(0, False, "short"), row(1, True, "short"), row(0, True, "long"),
            row(0, False, "vary", train_lengths=[50, 100]),
            dict(row(2, False, "short"), problem="xor", method="sgd_cr"),
            dict(row(2, True, "b"), problem="xor", method="sgd_cr", budget={"init": "basic_tanh"}),
            dict(row(2, True, "w"), problem="xor", method="sgd_cr",
                 budget={"init": "basic_tanh", "omega": 4.0}),
            dict(row(2, False, "w2"), problem="xor", method="sgd_cr",
                 budget={"init": "basic_tanh", "omega": 2.0})]
    lines = report.overview(rows).splitlines()
    assert lines[0] == "| method | T | addition | xor |"
    assert lines[2:] == ["| hf_sd | 100 | 2/2 |  |", "| hf_sd | 50–100 | 0/1 |  |",
                         "| sgd_cr | 100 |  | 0/1 |", "| sgd_cr (basic_tanh) | 100 |  | 1/1 |",
                         "| sgd_cr (basic_tanh, Ω 2) | 100 |  | 0/1 |",
                         "| sgd_cr (basic_tanh, Ω 4) | 100 |  | 1/1 |"]


@pytest.mark.parametrize("method", ["adam_clip", "hf"])
def test_a_network_that_loses_its_solve_is_reported_and_kept_at_its_best(tmp_path, monkeypatch,
                                                                         method):
    """Training past a solve (--stop_error_rate=0) can lose it: the row reports the best
    10,000-sequence test, when it was, and the last check; that network is the one kept."""
    quick = iter([0.005, 0.5, 0.6])  # the 1,000-sequence checks after updates 1, 2, 3
    seen = []

    def scripted(task, predict, params, keys, L, n):
        seen.append(np.asarray(table.jax.tree.leaves(params)[0]).copy())
        return np.array([next(quick) if n == 1000 else 0.004])

    monkeypatch.setattr(table, "_error_rates", scripted)
    config = tiny(tmp_path / "z.jsonl", max_updates=3, stop_error_rate=0.0, methods=(method,),
                  hf_gradient_batch=40, hf_curvature_batch=20, cg_iters=3)
    (row,) = table.run(config, str(tmp_path / "w"))["rows"]
    assert row["solved"] and row["error_rate"] == 0.004 and row["updates"] == 3
    assert row["best_updates"] == 1 and row["last_error_rate"] == 0.6
    assert "0.4 (last 60.0)" in report.summarize([row])
    (kept,) = (tmp_path / "w" / "networks").iterdir()
    task = table.synthetic.get("temporal_order")
    _, params, _ = table.build(method, task, config, table.jax.random.key(0))
    template = table.jax.tree.map(lambda x: np.zeros((1, *x.shape), x.dtype), params)
    restored = table.checkpoint.restore(str(kept), template)
    first = table.jax.tree.leaves(restored)[0]
    np.testing.assert_array_equal(first, seen[1])  # the params of the 10,000-sequence test
    assert not np.array_equal(first, seen[-1])


def test_the_zero_error_rule_on_variable_lengths_also_tests_the_training_lengths(tmp_path,
                                                                                 monkeypatch):
    """Pascanu's validation spans the training lengths: a network with no errors at T but
    some at shorter training lengths trains on, and its row reports both rates."""
    asked = []

    def scripted(task, predict, params, keys, L, n):
        asked.append((L, n))
        return np.array([0.0 if L == 12 else 0.3])

    monkeypatch.setattr(table, "_error_rates", scripted)
    vary = dict(lengths=(12,), min_train_length=10, max_updates=3)
    (usual,) = table.run(tiny(tmp_path / "u.jsonl", **vary), None)["rows"]
    assert usual["updates"] == 1 and "train_lengths_error_rate" not in usual
    asked.clear()
    (row,) = table.run(tiny(tmp_path / "z.jsonl", stop_error_rate=0.0, **vary), None)["rows"]
    assert row["updates"] == 3 and row["solved"] and row["error_rate"] == 0.0
    assert row["train_lengths_error_rate"] == pytest.approx(0.2)  # 0.3 at 10 and 11, 0 at 12
    assert {(10, 34), (11, 34), (12, 34)} <= set(asked)
    line = report.summarize([row]).splitlines()[-1]
    assert "training lengths: 20.0%" in line and "across the training lengths" in line


def test_the_summary_pools_seeds_scored_at_different_lengths():
    row = lambda seed, general: dict(problem="temporal_order", T=200, method="sgd_cr", seed=seed,
                                     tag="t", solved=True, error_rate=0.0, updates=10,
                                     train_seconds=1.0, generalization=general,
                                     budget=dict(max_minutes=5.0, omega=4.0))
    line = report.summarize([row(0, {"300": 0.1, "1000": 0.5}), row(1, {"250": 0.0, "1000": 0.25})])
    assert "T=250: –/0.0%; T=300: 10.0%/–; T=1000: 50.0%/25.0%" in line


def test_checks_thin_out_on_long_runs_except_under_the_zero_error_rule(tmp_path):
    """Checks every --eval_every updates, or every 5% of the updates so far; training to
    zero errors (Pascanu's rule) keeps checking every --eval_every updates."""
    usual = tiny(tmp_path / "c.jsonl", eval_every=20)
    assert table._until_check(100, 20, usual) == 20
    assert table._until_check(500_000, 20, usual) == 25_000
    zero = dataclasses.replace(usual, stop_error_rate=0.0)
    assert table._until_check(500_000, 20, zero) == 20


def test_a_snapshot_saved_before_new_keys_joined_it_still_resumes(tmp_path):
    config = tiny(tmp_path / "s.jsonl", checkpoint_minutes=0.0)
    saver = table._Saver(str(tmp_path), "p", config)
    old = dict(states=np.arange(3.0), rates=np.array([0.5]), loss=np.array([np.nan]),
               clock=np.array([7, 1.5]))
    saver(old, train_time=1.0)
    newer = dict(old, best=np.zeros(3), best_rate=np.full(1, 2.0))
    back = table._Saver(str(tmp_path), "p", config).restore(newer, added=("best", "best_rate"))
    assert set(back) == set(old) and np.isnan(back["loss"]).all()
    np.testing.assert_array_equal(back["states"], old["states"])
    with pytest.raises(ValueError):
        table._Saver(str(tmp_path), "p", config).restore(newer)


def test_a_snapshot_resumes_with_the_keys_it_had(tmp_path):
    """A snapshot saved before the last of the added keys joined keeps the earlier ones."""
    config = tiny(tmp_path / "s.jsonl", checkpoint_minutes=0.0)
    saved = dict(states=np.arange(3.0), rates=np.array([0.5]), loss=np.array([0.1]),
                 clock=np.array([7, 1.5]), best=np.ones(3), best_rate=np.full(1, 0.25))
    table._Saver(str(tmp_path), "p", config)(saved, train_time=1.0)
    newer = dict(saved, best_parts=np.full((1, 2), np.nan))
    back = table._Saver(str(tmp_path), "p", config).restore(
        newer, added=("best", "best_rate", "best_parts"))
    assert set(back) == set(saved)
    np.testing.assert_array_equal(back["best"], saved["best"])
    assert back["best_rate"][0] == 0.25
    best = table._Best(dict(w=np.zeros((1, 3))))
    best.load(dict(back, best=dict(w=np.ones((1, 3))), best_at=np.array([7])))
    assert best.tested[0] and best.rates(np.array([0.9]))[0] == 0.25  # its full test at T
    assert np.isnan(best.across[0])


@pytest.mark.parametrize("problem", ["temporal_order", "addition"])
def test_a_solved_row_scores_longer_lengths_and_splits_them_by_class(tmp_path, monkeypatch,
                                                                     problem):
    """--generalize_to scores a solved network at longer lengths; a problem answered by
    one class at its last step also gets each class's rate, whose mean over the
    sequences is the overall rate (so it lies between the classes' extremes)."""
    monkeypatch.setattr(table, "_error_rates", lambda *a: np.array([0.0]))  # "solved"
    config = tiny(tmp_path / "g.jsonl", problems=(problem,), generalize_to=(15, 20),
                  test_sequences=300)
    (row,) = table.run(config, None)["rows"]
    assert row["solved"] and set(row["generalization"]) == {"15", "20"}
    if problem == "addition":
        assert "generalization_by_class" not in row
        return
    for L, rate in row["generalization"].items():
        by_class = [r for r in row["generalization_by_class"][L] if r is not None]
        assert len(row["generalization_by_class"][L]) == 4 and len(by_class) >= 3
        assert min(by_class) <= rate <= max(by_class)


def test_an_hf_program_state_of_the_one_seed_layout_gets_a_one_line_error(tmp_path):
    """HF programs once saved one seed's unstacked state; such a state is not resumed,
    and is left where it is."""
    config = tiny(tmp_path / "h.jsonl", methods=("hf",), hf_gradient_batch=40,
                  hf_curvature_batch=20, cg_iters=3)
    _, saver = table._program("temporal_order", 10, "hf", (0,), config, str(tmp_path / "w"))
    old = dict(states=np.arange(3.0), rates=np.array([0.5]), loss=np.array([0.1]),
               clock=np.array([7, 1.5, 0]))
    saver(old, train_time=1e9)  # saved at once, where the program looks for its state
    with pytest.raises(cli.ConfigError, match="earlier version"):
        table.run(config, str(tmp_path / "w"))
    assert os.path.isdir(saver.path)
    assert not (tmp_path / "h.jsonl").exists()
