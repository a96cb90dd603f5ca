"""Time one character-level language-model training step: rnnjax beside PyTorch and Flax.

The step: tokens [B, T] from a vocabulary of V = 65, one-hot (or embedded) inputs,
one recurrent layer of H = 256 (vanilla tanh, LSTM or GRU), a linear readout to
V logits at every step, mean cross-entropy over all B*T positions, its gradient,
and an Adam update; the loss is fetched to the host at every step, as a training
loop that logs it would. Defaults: B = 32, T = 100.

Columns:
  torch        PyTorch's nn.RNN / nn.LSTM / nn.GRU + nn.Linear, torch.optim.Adam.
  flax         flax.linen nn.RNN(SimpleCell / LSTMCell / GRUCell) + nn.Dense, optax.adam.
  rnnjax_scan  rnnjax's generic lax.scan (cells.X(..., fused=False)), jax.grad through it.
  rnnjax       rnnjax's fused XLA cells (rnnjax.fused, custom JVP: all autodiff works;
               backend="xla", since the cells' default "auto" is oneDNN's where installed).
  rnnjax_onednn  rnnjax's cells on oneDNN's fused RNN primitives (rnnjax.kernels.onednn,
               backend="onednn"; needs the onednn extra and a C++ compiler), XLA around
               them. It takes dense inputs: one-hot vectors also with --input=ids.
  rnnjax_dp    rnnjax's default cells, data-parallel (rnnjax.parallel): the batch split
               over all JAX devices, the gradients all-reduced. On a CPU, --cpu_devices=N
               makes N CPU devices, one per core, instead of one device whose matmuls
               use the cores together.
  torch_dp_ideal  PyTorch with one thread on a batch of B/N (N = --cpu_devices): the step
               time of one of N data-parallel replicas alone, so a lower bound on the step
               time of PyTorch's own N-way data parallelism (no all-reduce, no sharing).

All models run in one process, interleaved round by round so that a busy
machine slows them alike; the table gives medians and the range over rounds.
The process re-executes itself under one allocator (``--allocator``, default
mimalloc from the ``cmeel-mimalloc`` wheel when installed), the same for all
frameworks. ``matmul %`` is the model's matmul FLOPs per second as a fraction of
a large float32 matmul's rate measured in the same run (the best of JAX and torch).
On a GPU, JAX runs on it and the torch column on CUDA (cuDNN's RNN kernels); the
matmul rate is then an 8192^3 product at each framework's default float32
precision, and ``matmul %`` uses wall-clock time.

    python -m bench.lm_step                          # all cells, all frameworks
    python -m bench.lm_step --cells=lstm --rounds=9 --input=embedding
    python -m bench.lm_step --input=ids              # rnnjax's language-model input path
    python -m bench.lm_step --cpu_devices=2 --frameworks=torch,torch_dp_ideal,rnnjax_dp

Run the data-parallel columns on their own: with several CPU devices the one-device
JAX columns are slower than in a run without --cpu_devices.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

from absl import app, flags

from rnnjax import allocator

FRAMEWORKS = ("torch", "flax", "rnnjax_scan", "rnnjax", "rnnjax_onednn", "rnnjax_dp",
              "torch_dp_ideal")
CELLS = ("tanh", "lstm", "gru")
GATES = {"tanh": 1, "lstm": 4, "gru": 3}

FLAGS = flags.FLAGS
flags.DEFINE_list("cells", list(CELLS), f"cells to time, from {CELLS}")
flags.DEFINE_list("frameworks", ["torch", "flax", "rnnjax_scan", "rnnjax"],
                  f"columns, from {FRAMEWORKS}")
flags.DEFINE_integer("batch", 32, "B")
flags.DEFINE_integer("length", 100, "T")
flags.DEFINE_integer("hidden", 256, "H")
flags.DEFINE_integer("vocab", 65, "V")
flags.DEFINE_enum("input", "onehot", ["onehot", "ids", "embedding"],
                  "one-hot inputs (D = V); 'ids': the same one-hot model, but the rnnjax "
                  "columns take token ids and look up rows of the input weights "
                  "(rnnjax.models.lm.one_hot_cell, as rnnjax's language models run), while "
                  "PyTorch and Flax, whose RNN modules take dense vectors, get the one-hot "
                  "vectors; or a learned embedding of size --embed for every framework")
flags.DEFINE_integer("embed", 64, "embedding size with --input=embedding")
flags.DEFINE_integer("steps", 10, "timed steps per round")
flags.DEFINE_integer("rounds", 5, "rounds; each times every model once")
flags.DEFINE_integer("warmup", 3, "untimed steps after compiling")
flags.DEFINE_list("unroll", ["tanh:1", "lstm:1", "gru:1"],
                  "rnnjax unroll per cell, as cell:n (JAX models only)")
flags.DEFINE_integer("xla_opt_level", None, "compile the JAX models with compiler_options="
                     "{'xla_backend_optimization_level': N} (LLVM level; unset: XLA's default)")
flags.DEFINE_enum("allocator", "auto", list(allocator.ALLOCATORS),
                  "allocator for the whole process (all frameworks alike)")
flags.DEFINE_integer("cpu_devices", 1, "on a CPU, split it into this many JAX devices "
                     "(--xla_force_host_platform_device_count), for the rnnjax_dp and "
                     "torch_dp_ideal columns; typically the number of cores")
flags.DEFINE_float("learning_rate", 2e-3, "Adam step size")
flags.DEFINE_integer("threads", 0,
                     "threads per framework (torch.set_num_threads and XLA's CPU thread pool); "
                     "0 = their defaults (all cores). On a shared, loaded machine use 1: torch's "
                     "OpenMP threads spin-wait for descheduled peers and slow down 10x")


# ----------------------------------------------------------------------------
# FLOPs and the machine's matmul rate
# ----------------------------------------------------------------------------

def model_flops(cell: str, B: int, T: int, H: int, V: int, D: int) -> float:
    """Matmul FLOPs of one training step: forward, input/hidden gradients, weight gradients."""
    G = GATES[cell] * H
    recurrent = 2 * T * B * H * G * 3      # h W_hh forward, dh W_hh^T, dW_hh
    projection = 2 * T * B * D * G * 2     # x W_xh forward and dW_xh (no dx for data)
    readout = 2 * T * B * H * V * 3
    return float(recurrent + projection + readout)


def matmul_rate(n: int = 1024, repeats: int = 5, clock=time.perf_counter,
                torch_device: str = "cpu") -> float:
    """The best float32 GFLOP/s of an n x n x n matmul, in JAX and in torch, by ``clock``."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), np.float32))
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    best = 0.0
    for _ in range(repeats):
        t = clock()
        f(a, a).block_until_ready()
        best = max(best, 2 * n ** 3 / (clock() - t) / 1e9)
    try:
        import torch
        x = torch.randn(n, n, device=torch_device)
        sync = torch.cuda.synchronize if torch_device == "cuda" else (lambda: None)
        x @ x
        sync()
        for _ in range(repeats):
            t = clock()
            x @ x
            sync()
            best = max(best, 2 * n ** 3 / (clock() - t) / 1e9)
    except ImportError:
        pass
    return best


# ----------------------------------------------------------------------------
# The models: each builder returns (compile_seconds, step) where step() runs one
# training step and returns the loss as a Python float.
# ----------------------------------------------------------------------------

def _data(B, T, V, seed=0):
    import numpy as np
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, V, (T + 1, B))  # time-major
    return tokens[:-1], tokens[1:]


def build_jax(framework: str, cell_name: str, cfg: dict):
    import jax
    import jax.numpy as jnp
    import optax

    B, T, H, V, E = cfg["B"], cfg["T"], cfg["H"], cfg["V"], cfg["E"]
    onehot = cfg["input"] in ("onehot", "ids")
    x_np, y_np = _data(B, T, V)
    x, y = jnp.asarray(x_np), jnp.asarray(y_np)
    key = jax.random.PRNGKey(0)
    opt = optax.adam(cfg["lr"])

    if framework == "flax":
        import flax.linen as nn
        cell_cls = {"tanh": nn.SimpleCell, "lstm": nn.LSTMCell, "gru": nn.GRUCell}[cell_name]

        class LM(nn.Module):
            @nn.compact
            def __call__(self, tokens):  # [T, B]
                xs = (jax.nn.one_hot(tokens, V) if onehot
                      else nn.Embed(V, E, name="embed")(tokens))
                hs = nn.RNN(cell_cls(H), time_major=True)(xs)
                return nn.Dense(V, name="readout")(hs)

        model = LM()
        params = model.init(key, x)["params"]

        def loss_fn(p, x, y):
            logits = model.apply({"params": p}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    else:
        from rnnjax import cells, recurrence
        fused = framework != "rnnjax_scan"
        # XLA's unrolls; the oneDNN column wraps the same cell below (with its threads)
        cell = {"tanh": lambda: cells.vanilla(H, "tanh", fused=fused, backend="xla"),
                "lstm": lambda: cells.lstm(H, fused=fused, backend="xla"),
                "gru": lambda: cells.gru(H, fused=fused, backend="xla")}[cell_name]()
        ids = cfg["input"] == "ids" and framework != "rnnjax_onednn"  # oneDNN: dense inputs
        if framework == "rnnjax_onednn":
            from rnnjax.kernels import onednn
            cell = onednn.with_backend(cell, "onednn", threads=cfg.get("threads", 0))
        if ids:  # token ids in, a row lookup for the one-hot projection
            from rnnjax.models import lm
            cell = lm.one_hot_cell(cell, V)
        unroll = cfg["unroll"].get(cell_name, 1)
        k1, k2, k3 = jax.random.split(key, 3)
        D = V if onehot else E
        params = {"rnn": cell.init(k1, D),
                  "W_hy": jax.random.normal(k2, (H, V)) / jnp.sqrt(H),
                  "b_y": jnp.zeros((V,))}
        if not onehot:
            params["embed"] = jax.random.normal(k3, (V, E))

        def loss_fn(p, x, y):
            xs = (x[..., None] if ids else jax.nn.one_hot(x, V) if onehot
                  else p["embed"][x])
            _, hs = recurrence.unroll(cell, p["rnn"], xs, unroll=unroll)
            logits = hs @ p["W_hy"] + p["b_y"]
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def train_step(p, s, x, y):
        loss, g = jax.value_and_grad(loss_fn)(p, x, y)
        updates, s = opt.update(g, s, p)
        return optax.apply_updates(p, updates), s, loss

    state = [params, opt.init(params)]
    jit_kwargs = {}
    if framework.startswith("rnnjax_dp"):  # state replicated, tokens [T, B] split along B
        from rnnjax import parallel
        mesh = parallel.data_mesh()
        state = parallel.replicate(state, mesh)
        x, y = parallel.shard_batch((x, y), mesh, batch_axis=1)
        jit_kwargs["out_shardings"] = parallel.replicated(mesh)
    t0, c0 = time.perf_counter(), time.process_time()
    options = (None if cfg.get("opt_level") is None
               else {"xla_backend_optimization_level": cfg["opt_level"]})
    compiled = (jax.jit(train_step, donate_argnums=(0, 1), **jit_kwargs)
                .lower(*state, x, y).compile(options))
    compile_s = (time.perf_counter() - t0, time.process_time() - c0)

    def step() -> float:
        state[0], state[1], loss = compiled(*state, x, y)
        return float(loss)

    return compile_s, step


def build_torch(cell_name: str, cfg: dict, threads: int | None = None):
    """PyTorch's model; with ``threads``, each step runs on that many threads."""
    import torch

    B, T, H, V, E = cfg["B"], cfg["T"], cfg["H"], cfg["V"], cfg["E"]
    onehot = cfg["input"] in ("onehot", "ids")  # torch's nn.RNN takes dense vectors
    torch.manual_seed(0)
    device = cfg["torch_device"]
    x_np, y_np = _data(B, T, V)
    x, y = torch.as_tensor(x_np, device=device), torch.as_tensor(y_np, device=device)
    rnn_cls = {"tanh": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell_name]

    class LM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = None if onehot else torch.nn.Embedding(V, E)
            self.rnn = rnn_cls(V if onehot else E, H)  # [T, B, D] layout
            self.readout = torch.nn.Linear(H, V)

        def forward(self, tokens):
            xs = (torch.nn.functional.one_hot(tokens, V).float() if onehot
                  else self.embed(tokens))
            hs, _ = self.rnn(xs)
            return self.readout(hs)

    model = LM().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])

    def train_step() -> float:
        opt.zero_grad(set_to_none=True)
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
        loss.backward()
        opt.step()
        return loss.item()

    def step() -> float:
        # Only a column that asks for its own thread count touches it: set_num_threads
        # also clears oneDNN's primitive cache, which the plain column must keep.
        if not threads:
            return train_step()
        saved = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return train_step()
        finally:
            torch.set_num_threads(saved)

    t0, c0 = time.perf_counter(), time.process_time()
    step()  # eager: the first step is the nearest thing to a compile
    return (time.perf_counter() - t0, time.process_time() - c0), step


def _time(step, n: int) -> tuple[float, float]:
    """Seconds per step: (wall clock, this process's CPU time)."""
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        loss = step()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if loss != loss:
        raise FloatingPointError("loss became NaN during the benchmark")
    return wall / n, cpu / n


def main(argv):
    del argv
    allocator.ensure(FLAGS.allocator)  # re-executes once, before anything is allocated
    bad = [c for c in FLAGS.cells if c not in CELLS] + [f for f in FLAGS.frameworks
                                                        if f not in FRAMEWORKS]
    if bad:
        raise app.UsageError(f"unknown --cells/--frameworks {bad}; accepted cells {CELLS}, "
                             f"frameworks {FRAMEWORKS}")
    try:
        unroll = {k: int(v) for k, v in (item.split(":") for item in FLAGS.unroll)}
    except ValueError:
        raise app.UsageError(f"--unroll must look like tanh:8,lstm:1, got {FLAGS.unroll}")

    if FLAGS.xla_opt_level is not None and FLAGS.xla_opt_level not in (0, 1, 2, 3):
        raise app.UsageError(f"--xla_opt_level={FLAGS.xla_opt_level} is invalid: expected 0, 1, "
                             "2 or 3 (or leave it unset)")
    if FLAGS.threads < 0:
        raise app.UsageError(f"--threads must be >= 0, got {FLAGS.threads}")
    if FLAGS.cpu_devices < 1:
        raise app.UsageError(f"--cpu_devices must be >= 1, got {FLAGS.cpu_devices}")
    # XLA_FLAGS is read when XLA's CPU backend starts, i.e. before the first jax op.
    xla_flags = []
    if FLAGS.cpu_devices > 1:
        xla_flags.append(f"--xla_force_host_platform_device_count={FLAGS.cpu_devices}")
    if FLAGS.threads:
        xla_flags += [f"--xla_cpu_multi_thread_eigen={FLAGS.threads > 1}",
                      f"intra_op_parallelism_threads={FLAGS.threads}"]
    if xla_flags:
        os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", "")] + xla_flags)
    import flax
    import jax

    # On an accelerator both sides run there: JAX on its default backend, torch on CUDA.
    on_cpu = jax.default_backend() == "cpu"
    torch_device = "cpu"
    frameworks = list(FLAGS.frameworks)
    n_dp = jax.device_count()  # replicas of the data-parallel columns
    data_parallel = [f for f in frameworks if f.startswith("rnnjax_dp")]
    if data_parallel and n_dp == 1:
        raise app.UsageError(f"--frameworks={data_parallel[0]} needs several JAX devices; on a "
                             "CPU pass --cpu_devices=N (N = its cores)")
    if "torch_dp_ideal" in frameworks and (n_dp == 1 or not on_cpu):
        raise app.UsageError("--frameworks=torch_dp_ideal needs --cpu_devices=N > 1 on a CPU")
    if (data_parallel or "torch_dp_ideal" in frameworks) and FLAGS.batch % n_dp:
        raise app.UsageError(f"--batch={FLAGS.batch} does not split over {n_dp} devices; use a "
                             f"multiple of {n_dp}")
    if any(f.startswith("torch") for f in frameworks):
        try:
            import torch
            if FLAGS.threads:
                torch.set_num_threads(FLAGS.threads)
            if not on_cpu:
                if not torch.cuda.is_available():
                    raise app.UsageError(f"JAX runs on {jax.default_backend()} but torch sees no "
                                         "CUDA device; leave torch out of --frameworks")
                torch_device = "cuda"
            torch_info = (f"torch {torch.__version__} ({torch.get_num_threads()} threads, "
                          f"{torch_device})")
        except ImportError:
            print("torch is not installed (pip install '.[bench]'); skipping the torch column",
                  file=sys.stderr)
            frameworks = [f for f in frameworks if not f.startswith("torch")]
            torch_info = "torch missing"
    else:
        torch_info = "torch not run"

    cfg = dict(B=FLAGS.batch, T=FLAGS.length, H=FLAGS.hidden, V=FLAGS.vocab, E=FLAGS.embed,
               input=FLAGS.input, lr=FLAGS.learning_rate, unroll=unroll, threads=FLAGS.threads,
               opt_level=FLAGS.xla_opt_level, torch_device=torch_device)
    D = cfg["E"] if cfg["input"] == "embedding" else cfg["V"]
    tokens = cfg["B"] * cfg["T"]
    print(f"# lm_step: B={cfg['B']} T={cfg['T']} H={cfg['H']} V={cfg['V']} input={cfg['input']} "
          f"Adam; steps/round={FLAGS.steps} rounds={FLAGS.rounds}; rnnjax unroll {unroll}")
    print(f"# jax {jax.__version__} ({jax.default_backend()}), flax {flax.__version__}, "
          f"{torch_info}; allocator: {allocator.current()}; --threads={FLAGS.threads}; "
          f"--xla_opt_level={FLAGS.xla_opt_level}; JAX devices: {jax.device_count()}")
    if on_cpu:
        peak = matmul_rate(clock=time.process_time)
        peak_wall = matmul_rate()
        print(f"# float32 matmul rate (1024^3, best of JAX/torch): {peak:.0f} GFLOP per "
              f"CPU-second, {peak_wall:.0f} GFLOP/s wall")
    else:  # host CPU time says nothing about an accelerator: wall clock, a large matmul
        peak = matmul_rate(n=8192, torch_device=torch_device)
        print(f"# float32 matmul rate on {jax.devices()[0].device_kind} (8192^3, default "
              f"precision, best of JAX/torch): {peak:.0f} GFLOP/s wall")

    if "rnnjax_onednn" in frameworks:  # the kernel build (or cache load), before any model
        from rnnjax.kernels import onednn
        t0 = time.perf_counter()
        if not onednn.available():
            raise app.UsageError("--frameworks=rnnjax_onednn needs oneDNN's kernel: pip install "
                                 "'.[onednn]' and a C++ compiler (see the warning above)")
        print(f"# oneDNN kernel ready in {time.perf_counter() - t0:.2f} s (compiled unless "
              f"cached in {onednn.cache_root()})", flush=True)

    models = {}
    for cell in FLAGS.cells:
        for fw in frameworks:
            if fw == "torch":
                compile_s, step = build_torch(cell, cfg)
            elif fw == "torch_dp_ideal":  # one replica: B / n_dp sequences on one thread
                compile_s, step = build_torch(cell, dict(cfg, B=cfg["B"] // n_dp), threads=1)
            else:
                compile_s, step = build_jax(fw, cell, cfg)
            for _ in range(FLAGS.warmup):
                step()
            models[(cell, fw)] = (compile_s, step)
            print(f"# built {cell}/{fw}: compile {compile_s[0]:.2f} s wall, "
                  f"{compile_s[1]:.2f} s cpu", flush=True)

    times = {k: [] for k in models}
    for r in range(FLAGS.rounds):
        for k, (_, step) in models.items():
            wall, cpu = _time(step, FLAGS.steps)
            # the ideal replica stands for n_dp of them: the CPU time of all n_dp
            times[k].append((wall, cpu * n_dp if k[1] == "torch_dp_ideal" else cpu))
        print(f"# round {r + 1}/{FLAGS.rounds} done", flush=True)

    print()
    print("tokens/s: wall clock; tokens/cpu-s: per second of this process's CPU time (robust "
          "on a shared machine when --threads=1). Ratios are per round, medians (range).")
    print()
    print("| cell | framework | tokens/cpu-s | range | vs torch (cpu) | tokens/s (wall) | range "
          f"| vs torch (wall) | compile s (wall / cpu) | matmul % ({'cpu' if on_cpu else 'wall'}) |")
    print("|---|---|---|---|---|---|---|---|---|---|")

    def ratio(ref, ts):
        rs = [tr / t for tr, t in zip(ref, ts)]
        return f"{statistics.median(rs):.2f}x ({min(rs):.2f}-{max(rs):.2f})"

    for cell in FLAGS.cells:
        flops = model_flops(cell, cfg["B"], cfg["T"], cfg["H"], cfg["V"], D)
        ref = times.get((cell, "torch"))
        for fw in frameworks:
            wall = [t[0] for t in times[(cell, fw)]]
            cpu = [t[1] for t in times[(cell, fw)]]
            cols = []
            for i, ts in enumerate((cpu, wall)):
                rates = [tokens / t for t in ts]
                cols += [f"{statistics.median(rates) / 1e3:.1f}k",
                         f"{min(rates) / 1e3:.1f}k-{max(rates) / 1e3:.1f}k",
                         ratio([t[1 - i] for t in ref], ts) if ref else "-"]
            util = flops / statistics.median(cpu if on_cpu else wall) / 1e9 / peak
            c_wall, c_cpu = models[(cell, fw)][0]
            print(f"| {cell} | {fw} | " + " | ".join(cols) +
                  f" | {c_wall:.2f} / {c_cpu:.2f} | {100 * util:.0f}% |")


if __name__ == "__main__":
    app.run(main)
