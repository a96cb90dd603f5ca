"""Tests for rnnjax.models.lm: teacher forcing, truncated BPTT, evaluation, sampling,
and learning a tiny repeating text."""

import subprocess

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rnnjax import losses, train
from rnnjax.data import text
from rnnjax.models import lm

V = 7


def _reference_loss(model, params, inputs, targets):
    """Mean nats by an explicit loop over time with one-hot (or embedded) inputs,
    ``cell.step`` per layer and a softmax readout: the lecture's definition."""
    cs = lm.make_cells(model)
    B = inputs.shape[1]
    carry = [c.initial_carry(p, B) for c, p in zip(cs, params["layers"])]
    W = params["embed"].T if model.tie_embeddings else params["readout"]["W"]
    total = 0.0
    for t in range(inputs.shape[0]):
        if model.embed_size:
            x = params["embed"][inputs[t]]
        else:
            x = jax.nn.one_hot(inputs[t], model.vocab_size)
        for i, (c, p) in enumerate(zip(cs, params["layers"])):
            carry[i], x = c.step(p, carry[i], x)
        logp = jax.nn.log_softmax(x @ W + params["readout"]["b"])
        total += -jnp.sum(logp[jnp.arange(B), targets[t]])
    return total / (inputs.shape[0] * B)


@pytest.mark.parametrize("cell,layers,embed,tie", [
    ("tanh", 1, 0, False), ("lstm", 2, 0, False), ("gru", 1, 5, False),
    ("mrnn", 2, 0, False), ("lstm", 1, 6, True)])
def test_teacher_forced_loss_equals_step_by_step_loop(cell, layers, embed, tie):
    model = lm.LanguageModel(V, cell=cell, hidden=6, layers=layers, embed_size=embed,
                             tie_embeddings=tie)
    params = lm.init(model, jax.random.PRNGKey(0))
    ids = jax.random.randint(jax.random.PRNGKey(1), (9, 3), 0, V)
    inputs, targets = ids[:-1], ids[1:]
    carry = lm.initial_carry(model, params, 3)
    loss, _ = lm.sequence_loss(model, params, carry, inputs, targets)
    reference = jax.jit(_reference_loss, static_argnums=0)(model, params, inputs, targets)
    chex.assert_trees_all_close(loss, reference,
                                rtol=1e-5, atol=1e-6)
    _, logits = lm.apply(model, params, carry, inputs)
    chex.assert_shape(logits, (8, 3, V))


def test_tbptt_carries_state_and_stops_gradient_at_segment_borders():
    model = lm.LanguageModel(V, cell="lstm", hidden=5)
    params = lm.init(model, jax.random.PRNGKey(0))
    ids = jax.random.randint(jax.random.PRNGKey(1), (13, 2), 0, V)
    whole, _ = lm.sequence_loss(model, params, lm.initial_carry(model, params, 2),
                                ids[:-1], ids[1:])
    loss_fn = jax.jit(lm.tbptt_loss(model))
    carry = lm.initial_carry(model, params, 2)
    seg1 = (ids[:6], ids[1:7], jnp.array(True))
    seg2 = (ids[6:12], ids[7:13], jnp.array(False))
    l1, (carry, _) = loss_fn(params, carry, seg1, None)
    l2, (carry2, _) = loss_fn(params, carry, seg2, None)
    # Two segments with the state carried see the same history as one long pass.
    chex.assert_trees_all_close((l1 + l2) / 2, whole, rtol=1e-5)
    # No gradient flows into the carried state: the border cuts BPTT.
    g_carry = jax.grad(lambda c: loss_fn(params, c, seg2, None)[0])(carry)
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(g_carry))
    # reset=True replaces the carried state by the initial one.
    l2_reset, _ = loss_fn(params, carry, (seg2[0], seg2[1], jnp.array(True)), None)
    fresh, _ = lm.sequence_loss(model, params, lm.initial_carry(model, params, 2),
                                seg2[0], seg2[1])
    chex.assert_trees_all_close(l2_reset, fresh, rtol=1e-6)
    assert not np.allclose(l2_reset, l2)


def test_evaluate_over_segments_equals_one_long_pass():
    model = lm.LanguageModel(V, cell="gru", hidden=5)
    params = lm.init(model, jax.random.PRNGKey(2))
    ids = np.asarray(jax.random.randint(jax.random.PRNGKey(3), (50,), 0, V), np.int32)
    result = lm.evaluate(model, params, text.eval_segments(ids, batch_size=1, seq_len=8))
    whole, _ = lm.sequence_loss(model, params, lm.initial_carry(model, params, 1),
                                jnp.asarray(ids[:-1, None]), jnp.asarray(ids[1:, None]))
    assert result["tokens"] == 49
    assert result["nats"] == pytest.approx(float(whole), rel=1e-5)
    assert result["bits"] == pytest.approx(float(whole) / np.log(2), rel=1e-5)
    assert result["perplexity"] == pytest.approx(float(np.exp(whole)), rel=1e-5)


def _greedy_by_stepping(model, params, prime, length):
    """Greedy continuation by an explicit loop: one-hot (or embedded) input, ``cell.step``
    per layer, argmax of the readout, fed back in (one jitted step, a Python loop)."""
    cs = lm.make_cells(model)

    @jax.jit
    def step(carry, token):
        x = params["embed"][token] if model.embed_size else jax.nn.one_hot(token, model.vocab_size)
        new = []
        for c, p, cr in zip(cs, params["layers"], carry):
            cr, x = c.step(p, cr, x)
            new.append(cr)
        return tuple(new), jnp.argmax(x @ params["readout"]["W"] + params["readout"]["b"], -1)

    carry = lm.initial_carry(model, params, 1)
    for token in prime:
        carry, nxt = step(carry, jnp.array([token]))
    out = []
    for _ in range(length):
        out.append(int(nxt[0]))
        carry, nxt = step(carry, nxt)
    return out


@pytest.mark.parametrize("cell,embed", [("mrnn", 0), ("lstm", 4)])
def test_sampler_greedy_at_zero_temperature_and_deterministic_per_seed(cell, embed):
    model = lm.LanguageModel(V, cell=cell, hidden=8, layers=2, embed_size=embed)
    params = lm.init(model, jax.random.PRNGKey(4))
    # Larger logits make greedy and near-zero-temperature sampling agree robustly.
    params["readout"]["W"] = params["readout"]["W"] * 20
    prime = jnp.array([1, 2, 3], jnp.int32)
    expected = _greedy_by_stepping(model, params, [1, 2, 3], 12)
    for t in (0.0, 1e-4):
        got = lm.sample(model, params, jax.random.PRNGKey(9), prime, length=12, temperature=t)
        assert got.tolist() == expected
    a = lm.sample(model, params, jax.random.PRNGKey(5), prime, length=12, temperature=3.0)
    b = lm.sample(model, params, jax.random.PRNGKey(5), prime, length=12, temperature=3.0)
    c = lm.sample(model, params, jax.random.PRNGKey(6), prime, length=12, temperature=3.0)
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()
    batch = lm.sample(model, params, jax.random.PRNGKey(5), jnp.stack([prime, prime]),
                      length=12, temperature=3.0, top_k=1)
    chex.assert_shape(batch, (2, 12))
    assert batch[0].tolist() == batch[1].tolist() == expected     # top-1 is greedy too
    assert int(batch.min()) >= 0 and int(batch.max()) < V


def test_top_k_restricts_samples_to_the_k_most_likely():
    logits = jnp.array([[0.0, 3.0, 1.0, 2.0]] * 200)
    picks = lm._pick(jax.random.PRNGKey(0), logits, jnp.float32(5.0), 2)
    assert set(np.asarray(picks).tolist()) == {1, 3}


def test_dropout_needs_a_key_and_changes_outputs():
    model = lm.LanguageModel(V, cell="lstm", hidden=8, layers=2, embed_size=4, dropout=0.5)
    params = lm.init(model, jax.random.PRNGKey(0))
    carry = lm.initial_carry(model, params, 2)
    ids = jnp.ones((4, 2), jnp.int32)
    _, a = lm.apply(model, params, carry, ids)
    _, b = lm.apply(model, params, carry, ids)
    _, c = lm.apply(model, params, carry, ids, dropout_key=jax.random.PRNGKey(1))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_bad_configurations_are_refused():
    with pytest.raises(ValueError, match="--tie_embeddings"):
        lm.init(lm.LanguageModel(V, hidden=8, embed_size=4, tie_embeddings=True),
                jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="--cell"):
        lm.init(lm.LanguageModel(V, cell="transformer"), jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="--dropout"):
        lm.init(lm.LanguageModel(V, dropout=1.0), jax.random.PRNGKey(0))


def test_learns_a_tiny_repeating_text_and_samples_it_back():
    corpus = "the quick brown fox. " * 40
    vocab = text.build_vocabulary(corpus, "char")
    streams = text.make_streams(vocab.encode(corpus), batch_size=8, seq_len=20)
    model = lm.LanguageModel(len(vocab), cell="lstm", hidden=32)
    params = lm.init(model, jax.random.PRNGKey(0))
    optimizer = optax.adam(2e-2)
    state = train.init_state(params, optimizer, seed=0,
                             extra=lm.initial_carry(model, params, 8))
    step_fn = train.make_train_step(lm.tbptt_loss(model), optimizer, clip_norm=5.0,
                                    uses_extra=True)
    state, history = train.run(None, state, step_fn, streams.segment, steps=150,
                               log_every=50, progress=False)
    assert history[-1]["loss"] < 0.05, history
    result = lm.evaluate(model, state.params, text.eval_segments(vocab.encode(corpus), 4, 20))
    assert result["bits"] < 0.1
    out = lm.sample(model, state.params, jax.random.PRNGKey(1),
                    jnp.asarray(vocab.encode("the qu")), length=40, temperature=0.5)
    assert vocab.decode(out) == "ick brown fox. the quick brown fox. the "
    assert losses.bits_per_character(0.0) == 0.0


def _run_char_lm(*args, cwd, env=None):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "experiments.char_lm", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=600, env=env)


def test_char_lm_data_parallel_equals_one_device(tmp_path):
    """--data_parallel over two CPU devices (batch and carried state split along B) gives
    the losses of the one-device run, to float32 summation order, also after resuming
    from its checkpoint; a batch that does not split is refused, naming the flag."""
    import json
    import os
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")
    data = tmp_path / "tiny.txt"
    data.write_text("ROMEO:\nO, she doth teach the torches to burn bright!\n\n" * 30,
                    encoding="utf-8")
    common = [f"--data_path={data}", "--hidden=16", "--batch_size=4", "--seq_len=16",
              "--eval_every=0", "--checkpoint_every=10", "--log_every=5", "--eval_tokens=200",
              "--eval_batch_size=2", "--progress=false", "--eval_test=false"]

    def losses_of(workdir):
        return [r["loss"] for r in map(json.loads, (workdir / "metrics.jsonl").read_text()
                                       .splitlines()) if "loss" in r]

    runs = {}
    for name, flags, commands in (("one", [], (20,)),
                                  ("dp", ["--data_parallel"], (10, 20))):  # 20 resumes at 10
        workdir = tmp_path / name
        for steps in commands:
            r = _run_char_lm(*common, *flags, f"--steps={steps}", f"--workdir={workdir}",
                             cwd=repo, env=env)
            assert r.returncode == 0, r.stderr[-3000:]
        runs[name] = losses_of(workdir)
    assert len(runs["dp"]) == 4 and runs["dp"][-1] < runs["dp"][0]
    np.testing.assert_allclose(runs["dp"], runs["one"], rtol=1e-5)
    r = _run_char_lm(*common, "--data_parallel", "--batch_size=5", f"--workdir={tmp_path / 'x'}",
                     cwd=repo, env=env)
    assert r.returncode != 0 and "--batch_size=5 is invalid: does not split over the 2 devices" \
        in r.stderr


def test_char_lm_experiment_trains_saves_vocab_and_samples_from_workdir(tmp_path):
    """The README's first command on a tiny file: train, checkpoint, then --sample_only
    with the saved vocabulary; a bad --data_path stops with its reason."""
    import json
    import os
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    data = tmp_path / "tiny.txt"
    data.write_text("ROMEO:\nO, she doth teach the torches to burn bright!\n\n" * 30,
                    encoding="utf-8")
    workdir = tmp_path / "run"
    common = ["--hidden=16", "--batch_size=4", "--seq_len=16", "--eval_tokens=200",
              "--eval_batch_size=2", "--progress=false", f"--workdir={workdir}"]
    r = _run_char_lm(f"--data_path={data}", "--steps=30", "--eval_every=15",
                     "--checkpoint_every=15", "--sample_length=40", *common, cwd=repo)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "validation:" in r.stdout and "bits/char" in r.stdout
    results = json.loads((workdir / "results.json").read_text())
    assert results["steps"] == 30 and results["valid"]["bits"] > 0
    # the run says what it ran on (the subprocess sees the same backend as this one)
    assert results["device"].startswith(f"{jax.default_backend()}: ")
    assert results["steps_per_second"] > 0
    vocab = text.Vocabulary.load(str(workdir / "vocab.json"))
    assert set(vocab.tokens[1:]) == set(data.read_text(encoding="utf-8"))
    r = _run_char_lm("--sample_only", "--prime=ROMEO:", "--sample_length=30", *common,
                     cwd=repo)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "loaded step 30" in r.stdout and "ROMEO:" in r.stdout
    binary = tmp_path / "model.bin"
    binary.write_bytes(b"\x00\x01" * 500)
    r = _run_char_lm(f"--data_path={binary}", *common[:-1], f"--workdir={tmp_path / 'bad'}",
                     cwd=repo)
    assert r.returncode != 0 and "looks binary" in r.stderr


def test_word_lm_experiment_with_its_defaults_learns_a_tiny_text(tmp_path):
    """experiments.word_lm with its own defaults (tied embeddings, dropout, SGD with
    clipping, annealing on plateau, the allocator re-exec) on a tiny word-level file; the
    rate is lowered from PTB's 20, which is too large for a 16-unit model."""
    import json
    import os
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    data = tmp_path / "tiny.txt"
    data.write_text("the cat sat on the mat and the dog lay by the door .\n" * 200,
                    encoding="utf-8")
    workdir = tmp_path / "run"
    r = subprocess.run(
        [sys.executable, "-m", "experiments.word_lm", f"--data_path={data}", "--hidden=16",
         "--embed_size=16", "--batch_size=4", "--learning_rate=5", "--steps=200",
         "--eval_every=40", "--eval_tokens=200", "--eval_batch_size=2", "--checkpoint_every=40",
         "--progress=false", f"--workdir={workdir}"],
        capture_output=True, text=True, cwd=repo, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    config = results["config"]
    assert config["optimizer"] == "sgd" and config["tie_embeddings"] and config["dropout"] > 0
    assert results["steps"] == 200 and results["vocab_size"] == 13  # 12 words + <unk>
    assert results["valid"]["perplexity"] < 2.0  # uniform over the vocabulary: 13


def test_hessian_free_trains_the_mrnn_on_a_tiny_repeating_text():
    """--optimizer=hf's step: HF updates on truncated-BPTT segments with the state
    carried (Sutskever et al. 2011 trained the MRNN this way)."""
    from rnnjax.optim import hessian_free
    corpus = "the quick brown fox. " * 40
    vocab = text.build_vocabulary(corpus, "char")
    streams = text.make_streams(vocab.encode(corpus), batch_size=8, seq_len=20)
    model = lm.LanguageModel(len(vocab), cell="mrnn", hidden=32)
    params = lm.init(model, jax.random.PRNGKey(0))
    carry = lm.initial_carry(model, params, 8)
    opt = hessian_free.hessian_free(lm.hf_network(model), hessian_free.softmax_cross_entropy(),
                                    net_returns_hidden=True, structural_damping=1 / 30,
                                    max_cg_iters=30, preconditioner=True,
                                    example_axes=lm.hf_example_axes(carry))
    state = train.init_state(params, None, opt_state=opt.init(params), seed=0, extra=carry)
    step_fn = lm.hf_tbptt_step(model, opt, curvature_batch_size=4)
    state, history = train.run(None, state, step_fn, streams.segment, steps=16, log_every=4,
                               progress=False)
    chex.assert_trees_all_equal_shapes(state.extra, carry)
    assert history[-1]["loss"] < 0.05 < history[0]["loss"], history
    result = lm.evaluate(model, state.params, text.eval_segments(vocab.encode(corpus), 4, 20))
    assert result["bits"] < 0.2
    with pytest.raises(ValueError, match="dropout"):
        lm.hf_network(lm.LanguageModel(len(vocab), dropout=0.5))


@pytest.mark.parametrize("cell", ["tanh", "lstm", "gru"])
def test_one_hot_lookup_keeps_the_fused_unroll(cell):
    """Token ids look up rows of the input projection; the fused BPTT still runs."""
    from rnnjax import cell_base
    model = lm.LanguageModel(7, cell=cell, hidden=8)
    first = lm.one_hot_cell(lm.make_cells(model)[0], 7)
    assert first.unroll is not None and cell_base.has_valid_override(first)
    plain = lm.LanguageModel(7, cell=cell, hidden=8, fused=False)
    params = lm.init(model, jax.random.PRNGKey(0))
    ids = jax.random.randint(jax.random.PRNGKey(1), (5, 3), 0, 7)
    carry = lm.initial_carry(model, params, 3)

    def loss(m, p):
        return lm.sequence_loss(m, p, carry, ids[:-1], ids[1:])[0]
    chex.assert_trees_all_close(jax.grad(lambda p: loss(model, p))(params),
                                jax.grad(lambda p: loss(plain, p))(params), atol=1e-5)


# ----------------------------------------------------------------------------- experiments from Python

TINY = "ROMEO:\nO, she doth teach the torches to burn bright!\n\n" * 30


def _tiny_char_config(tmp_path, **changes):
    import dataclasses

    from experiments import char_lm
    data = tmp_path / "tiny.txt"
    data.write_text(TINY, encoding="utf-8")
    return dataclasses.replace(
        char_lm.Config(), data_path=str(data), hidden=16, batch_size=4, seq_len=16, steps=30,
        eval_every=15, checkpoint_every=15, log_every=5, eval_tokens=200, eval_batch_size=2,
        sample_length=20, max_minutes=None, progress=False, **changes)


def test_char_lm_run_from_python_learns_resumes_and_survives_a_mistaken_rerun(tmp_path):
    """``char_lm.run(config, workdir)`` trains, writes results.json; the same config again
    resumes the finished run (same numbers); a rerun with another model size is refused
    before anything is written, after which sampling from the workdir still works."""
    import dataclasses
    import json
    import math

    from experiments import char_lm
    from rnnjax import errors
    config = _tiny_char_config(tmp_path)
    workdir = tmp_path / "run"
    results = char_lm.run(config, str(workdir))
    assert json.loads((workdir / "results.json").read_text())["valid"] == results["valid"]
    losses_seen = [r["loss"] for r in map(json.loads, (workdir / "metrics.jsonl").read_text()
                                          .splitlines()) if "loss" in r]
    assert results["steps"] == 30 and losses_seen[-1] < losses_seen[0]
    assert results["valid"]["bits"] < math.log2(results["vocab_size"])  # beats uniform
    # TensorBoard: the logged losses as scalars at their steps, the samples as text.
    from rnnjax import tensorboard
    events = tensorboard.read_events(str(workdir / tensorboard.SUBDIR))
    logged = [r for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())]
    assert [s for s, _ in events["loss"]] == [r["step"] for r in logged]
    assert events["sample"][-1][0] == 30 and events["sample"][-1][1] == results["sample"]
    assert char_lm.run(config, str(workdir))["valid"] == results["valid"]  # resumed at 30

    saved = (workdir / "config.json").read_text()
    with pytest.raises(errors.ConfigMismatchError, match="hidden: saved 16, given 8"):
        char_lm.run(dataclasses.replace(config, hidden=8), str(workdir))
    assert (workdir / "config.json").read_text() == saved
    sample = char_lm.run(dataclasses.replace(config, sample_only=True, prime="ROMEO:",
                                             sample_length=12), str(workdir))["sample"]
    assert sample.startswith("ROMEO:") and len(sample) == len("ROMEO:") + 12


def test_lm_settings_are_checked_before_any_work(tmp_path):
    """Every rule between settings is a ConfigError naming the setting (from the command
    line the same message names the flag)."""
    import dataclasses

    from experiments import cli, word_lm
    base = _tiny_char_config(tmp_path)
    for changes, match in [
        (dict(optimizer="hf", dropout=0.2), "dropout=0.2 is invalid: must be 0 with optimizer=hf"),
        (dict(optimizer="hf", curvature_batch_size=5), "curvature_batch_size=5"),
        (dict(optimizer="hf", data_parallel=True), "data_parallel=True is invalid: is for the optax"),
        (dict(plateau_factor=1.5), "plateau_factor=1.5 is invalid: expected a factor"),
        (dict(plateau_factor=0.5, eval_every=0), "plateau_factor=0.5 is invalid: needs periodic"),
        (dict(plateau_threshold=-0.1), "plateau_threshold=-0.1 is invalid"),
        (dict(temperature=float("nan")), "temperature=nan is invalid: expected a finite"),
        (dict(hf_lambda=float("inf")), "hf_lambda=inf is invalid"),
        (dict(embed_size=8, tie_embeddings=True), "tie_embeddings=True is invalid: needs embed_size"),
        (dict(factors=4), "factors=4 is invalid: applies to cell=mrnn only"),
        (dict(max_vocab=1), "max_vocab=1 is invalid: expected at least 2"),
    ]:
        with pytest.raises(cli.ConfigError, match=match.replace("(", r"\(")):
            cli.validate(dataclasses.replace(base, **changes))
    cli.validate(dataclasses.replace(base, optimizer="hf", curvature_batch_size=2))
    cli.validate(dataclasses.replace(base, data_parallel=True))  # one CPU device: any batch
    cli.validate(word_lm.Config())


def test_lm_bad_inputs_stop_before_the_workdir_is_touched(tmp_path):
    """A model too large for the machine, a prime with no tokens, a data path that is a
    FIFO, sampling from a workdir without a model: one-line errors before any work."""
    import dataclasses
    import os

    from experiments import cli, word_lm
    from experiments.lm import train as lm_train
    from rnnjax import errors
    words = tmp_path / "words.txt"
    words.write_text("the cat sat on the mat and the dog lay by the door .\n" * 40,
                     encoding="utf-8")
    config = dataclasses.replace(word_lm.Config(), data_path=str(words), steps=2,
                                 progress=False, eval_every=0, plateau_factor=1.0)
    workdir = tmp_path / "run"
    with pytest.raises(cli.ConfigError, match=r"hidden=2000000 is invalid: the model has "
                       r"[\d,]+ parameters .* GiB"):
        word_lm.run(dataclasses.replace(config, hidden=2_000_000, embed_size=0,
                                        tie_embeddings=False), str(workdir))
    with pytest.raises(cli.ConfigError, match="prime=' ' is invalid: it has no tokens"):
        word_lm.run(dataclasses.replace(config, prime=" "), str(workdir))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(errors.RunError, match="not a regular file"):
        word_lm.run(dataclasses.replace(config, data_path=str(fifo)), str(workdir))
    assert not workdir.exists()
    with pytest.raises(errors.RunError, match="has no config.json"):
        word_lm.run(dataclasses.replace(config, sample_only=True), str(workdir))
    with pytest.raises(cli.ConfigError, match="sample_only=True is invalid: needs workdir"):
        word_lm.run(dataclasses.replace(config, sample_only=True), None)
    # A diverged run still prints its numbers (NaN and Inf format like any float).
    assert "perplexity inf (nan nats/word" in lm_train.summary(
        {"nats": float("nan"), "bits": float("nan"), "perplexity": float("inf"), "tokens": 3},
        "word")


def test_an_eval_batch_larger_than_the_split_still_evaluates_nearly_all_of_it(tmp_path):
    """--eval_batch_size=100000 on a 1,000-token split: streams of at least
    MIN_EVAL_STREAM tokens, so at most a tenth of the split goes unpredicted."""
    import dataclasses

    from experiments.lm import train as lm_train
    config = dataclasses.replace(_tiny_char_config(tmp_path), eval_batch_size=100_000)
    ids = np.arange(1000) % 7
    assert lm_train.eval_batch(config, len(ids)) == 1000 // lm_train.MIN_EVAL_STREAM
    predicted = sum(mask.sum() for _, _, mask in lm_train._eval_segments(config, ids))
    assert predicted >= 0.9 * len(ids)


def test_lm_compare_run_trains_each_cell_at_the_size_and_checks_its_lists(tmp_path):
    """lm_compare calls the trainer with one replaced Config per cell (no flags written):
    a row per cell at about ``params`` parameters; bad cell lists and sizes are refused."""
    import dataclasses

    from experiments import cli, lm_compare
    data = tmp_path / "tiny.txt"
    data.write_text(TINY, encoding="utf-8")
    config = dataclasses.replace(
        lm_compare.Config(), data_path=str(data), cells=("tanh", "mrnn"), params=1500, steps=6,
        minutes_each=5.0, batch_size=4, seq_len=16, eval_batch_size=2, log_every=3,
        progress=False, sample_length=10)
    workdir = tmp_path / "compare"
    results = lm_compare.run(config, str(workdir))
    assert [r["cell"] for r in results["rows"]] == ["tanh", "mrnn"]
    for row in results["rows"]:
        assert abs(row["parameters"] - 1500) < 300 and row["steps"] == 6
    assert results["rows"][1]["learning_rate"] == 3e-3  # the mrnn=3e-3 default
    assert (workdir / "table.md").exists() and (workdir / "results.json").exists()
    assert (workdir / "tanh" / "results.json").exists()
    for changes, match in [
        (dict(cells=()), "cells=() is invalid: expected at least one cell"),
        (dict(cells=("tanh", "tanh")), "a cell is given twice"),
        (dict(cell_learning_rates=("fooo=1e-3",)), "'fooo' is not a cell"),
        (dict(cell_learning_rates=("tanh=x",)), "expected cell=rate"),
        (dict(params=-5), "params=-5 is invalid: expected a positive integer"),
    ]:
        with pytest.raises(cli.ConfigError, match=match.replace("(", r"\(").replace(")", r"\)")):
            lm_compare.run(dataclasses.replace(config, **changes), str(tmp_path / "x"))
    with pytest.raises(cli.ConfigError, match="params=5 is invalid: the smallest tanh model"):
        lm_compare.run(dataclasses.replace(config, params=5), str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()
