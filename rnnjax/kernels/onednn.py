"""oneDNN's fused RNN primitives on the CPU, called from JAX through ``jax.ffi``.

PyTorch's CPU LSTM and GRU are oneDNN's fused RNN primitives; this module gives
rnnjax's LSTM, GRU and vanilla cells the same kernels, with XLA fusing everything
around them (the readout, the loss, the optimizer):

* ``unroll(kind, params, xs, carry)``: one layer over [T, B, D] time-major inputs,
  rnnjax's params and carries, any direction;
* ``with_backend(cell, backend)``: a cell whose ``recurrence.unroll`` runs on oneDNN
  where it can (``"onednn"``, or ``"auto"``: only where it is known to be correct),
  and on the cell's own XLA unroll everywhere else;
* ``available()``: whether the kernel could be built and loaded.

Requirements: ``pip install 'rnnjax[onednn]'`` (the ``onednn-cpu-gomp`` and
``onednn-devel-cpu-gomp`` wheels: oneDNN 3.2's ``libdnnl.so`` and headers) and a C++17
compiler (``$CXX``, else ``g++`` or ``c++``). ``onednn_rnn.cc`` beside this file is
compiled the first time it is needed into ``$RNNJAX_KERNEL_CACHE``, else
``$XDG_CACHE_HOME/rnnjax/kernels`` (default ``~/.cache/rnnjax/kernels``), one
directory per hash of the source, the compiler, oneDNN, jaxlib and the CPU; later
processes load it from there. Without oneDNN or a compiler: one warning line, and
every cell keeps its XLA unroll.

**Autodiff.** The primitive's forward runs in training mode and keeps oneDNN's
workspace. ``core`` is a ``jax.custom_jvp`` whose tangent is one linear primitive,
``onednn_rnn_tangent``: transposing it (reverse mode: ``grad``, ``vjp``) runs oneDNN's
backward primitive on that workspace; evaluating it (forward mode: ``jvp``,
``linearize``, Hessian-free's Gauss-Newton products) runs the same math in XLA. So
first-order autodiff works in both modes. Derivatives of the backward itself are not
available (``grad`` of ``grad``, ``hessian``); ``backend="auto"`` sees nested
differentiation and ``vmap`` in its inputs and uses XLA there, but not through a
``jit`` boundary: for second derivatives of a jitted function, use ``backend="xla"``.

**Threads.** oneDNN runs on OpenMP threads (the ``gomp`` build: libgomp), XLA on its
own pool; they take turns (the custom call blocks its XLA thread), and oneDNN uses
``omp_get_max_threads()`` threads unless ``threads=`` says otherwise.

Shapes: T steps, B batch, D inputs, H hidden; G = 4H (LSTM), 3H (GRU), H (vanilla).
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import hashlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.interpreters import ad, batching, mlir

from rnnjax import recurrence
from rnnjax.cell_base import mark_step_equivalent

__all__ = ["BACKENDS", "KINDS", "AUTO_KINDS", "available", "unroll", "core", "with_backend", "uses_onednn",
           "cache_root"]

BACKENDS = ("auto", "xla", "onednn")
# Cell kinds and the C++ side's codes. Vanilla cells: the activations oneDNN has.
KINDS = {"tanh": 0, "relu": 1, "logistic": 2, "lstm": 3, "gru": 4}
# What backend="auto" runs on oneDNN: the cells whose training step it made faster in
# bench.lm_step on a 2-core CPU. The vanilla cell's step was faster on XLA's fused unroll
# (one small matmul per step, where the primitive's per-step overhead shows).
AUTO_KINDS = ("lstm", "gru")
_SOURCE = Path(__file__).with_name("onednn_rnn.cc")
_FORWARD, _BACKWARD = "rnnjax_onednn_forward", "rnnjax_onednn_backward"
CACHE_ENV = "RNNJAX_KERNEL_CACHE"


# ----------------------------------------------------------------------------
# Building and loading the kernel
# ----------------------------------------------------------------------------

def cache_root() -> Path:
    """``$RNNJAX_KERNEL_CACHE``, else ``$XDG_CACHE_HOME/rnnjax/kernels`` (~/.cache/...)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "rnnjax" / "kernels"


def _find_onednn() -> tuple[Path, Path]:
    """(include dir, lib dir) of the onednn-cpu-gomp / onednn-devel-cpu-gomp wheels."""
    def locate(dist_name: str, suffix: str) -> Path:
        dist = importlib.metadata.distribution(dist_name)   # PackageNotFoundError if absent
        for f in dist.files or ():
            path = Path(dist.locate_file(f)).resolve()      # the wheels install into <prefix>
            if path.as_posix().endswith(suffix):
                return path
        raise FileNotFoundError(f"{dist_name} has no {suffix}")
    header = locate("onednn-devel-cpu-gomp", "include/oneapi/dnnl/dnnl.hpp")
    lib = locate("onednn-cpu-gomp", "lib/libdnnl.so.3")
    return header.parents[2], lib.parent


def _compiler() -> str:
    for name in (os.environ.get("CXX"), "g++", "c++"):
        if name and shutil.which(name):
            return shutil.which(name)
    raise FileNotFoundError("no C++ compiler ($CXX, g++ or c++) on PATH")


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            lines = [l for l in f if l.startswith(("model name", "flags", "Features"))]
        return "".join(dict.fromkeys(lines))
    except OSError:
        return f"{platform.machine()} {platform.processor()}"


def _build(cxx: str, include: Path, libdir: Path) -> Path:
    """Compile onednn_rnn.cc unless a build for this source/compiler/oneDNN/CPU exists."""
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True,
                             check=True).stdout
    key = hashlib.sha256("\0".join([
        _SOURCE.read_text(), version, str(libdir), str(include), jax.ffi.include_dir(),
        jax.__version__, _cpu()]).encode()).hexdigest()[:16]
    target = cache_root() / key / "librnnjax_onednn.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # One process builds (the others wait on the lock, then find the file); the build goes
    # to a temporary name and is renamed, so no process ever loads half a file.
    with open(target.parent / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():
            return target
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        cmd = [cxx, "-O2", "-std=c++17", "-shared", "-fPIC", "-fopenmp", "-w",
               f"-I{jax.ffi.include_dir()}", f"-I{include}", str(_SOURCE), "-o", tmp,
               f"-L{libdir}", "-l:libdnnl.so.3", f"-Wl,-rpath,{libdir}"]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            os.unlink(tmp)
            raise RuntimeError(f"{Path(cxx).name} failed: "
                               f"{' '.join(result.stderr.strip().splitlines()[-1:])}")
        os.replace(tmp, target)
    return target


_registered: list[ctypes.CDLL] = []


@functools.cache
def _library() -> ctypes.CDLL | None:
    """The loaded kernel library with its FFI targets registered, or None (warned once)."""
    try:
        include, libdir = _find_onednn()
        lib = ctypes.CDLL(str(_build(_compiler(), include, libdir)))
        lib.rnnjax_onednn_workspace_bytes.restype = ctypes.c_int64
        lib.rnnjax_onednn_workspace_bytes.argtypes = [ctypes.c_int64] * 7
        if not _registered:   # once per process (the same library if loaded again)
            jax.ffi.register_ffi_target(_FORWARD, jax.ffi.pycapsule(lib.RnnjaxOnednnForward),
                                        platform="cpu")
            jax.ffi.register_ffi_target(_BACKWARD, jax.ffi.pycapsule(lib.RnnjaxOnednnBackward),
                                        platform="cpu")
            _registered.append(lib)
        return lib
    except (importlib.metadata.PackageNotFoundError, OSError, RuntimeError,
            subprocess.SubprocessError) as e:
        warnings.warn(f"rnnjax: oneDNN RNN kernels unavailable, using XLA ({type(e).__name__}: "
                      f"{e}); pip install 'rnnjax[onednn]' and a C++ compiler enable them",
                      RuntimeWarning, stacklevel=3)
        return None


def available() -> bool:
    """Whether oneDNN's RNN kernels are built and loaded (building them if needed)."""
    return _library() is not None


def _workspace_bytes(kind: str, T: int, B: int, D: int, H: int, reverse: bool,
                     threads: int) -> int:
    n = _library().rnnjax_onednn_workspace_bytes(KINDS[kind], T, B, D, H, int(reverse), threads)
    if n < 0:
        raise ValueError(f"oneDNN has no {kind} primitive for T={T}, B={B}, D={D}, H={H}")
    return n


# ----------------------------------------------------------------------------
# The custom calls, in oneDNN's layout: x [T, B, D], wx [D, G], wh [H, G] (gate-major
# columns in oneDNN's gate order), b [Gb] (GRU: 4H), h0 [B, H], c0 [B, H] (LSTM) or [0].
# ----------------------------------------------------------------------------

def _attrs(kind, reverse, threads):
    return dict(kind=np.int64(KINDS[kind]), reverse=np.int64(bool(reverse)),
                threads=np.int64(threads))


def _forward_call(kind, reverse, threads, x, wx, wh, b, h0, c0):
    """-> hs [T, B, H], hT [B, H], cT (like c0), workspace [bytes] uint8."""
    T, B, D = x.shape
    H = h0.shape[-1]
    f32 = jnp.float32
    out = (jax.ShapeDtypeStruct((T, B, H), f32), jax.ShapeDtypeStruct((B, H), f32),
           jax.ShapeDtypeStruct(c0.shape, f32),
           jax.ShapeDtypeStruct((_workspace_bytes(kind, T, B, D, H, reverse, threads),),
                                jnp.uint8))
    return jax.ffi.ffi_call(_FORWARD, out, vmap_method="sequential")(
        x, wx, wh, b, h0, c0, **_attrs(kind, reverse, threads))


def _backward_call(kind, reverse, threads, primals, outs, ws, cts):
    x, wx, wh, b, h0, c0 = primals
    out = tuple(jax.ShapeDtypeStruct(a.shape, jnp.float32) for a in primals)
    return jax.ffi.ffi_call(_BACKWARD, out, vmap_method="sequential")(
        *primals, *outs, ws, *cts, **_attrs(kind, reverse, threads))


def _reference(kind, reverse, x, wx, wh, b, h0, c0):
    """The primitive's math as a plain ``lax.scan`` (its forward-mode derivative)."""
    H = h0.shape[-1]
    xp = x @ wx

    if kind == "lstm":
        def body(carry, xp_t):
            c, h = carry
            z = xp_t + h @ wh + b
            i, f, g, o = (z[:, k * H:(k + 1) * H] for k in range(4))
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (c, h), h
        (cT, hT), hs = lax.scan(body, (c0, h0), xp, reverse=reverse)
        return hs, hT, cT
    if kind == "gru":
        def body(h, xp_t):
            hp = h @ wh
            u = jax.nn.sigmoid(xp_t[:, :H] + hp[:, :H] + b[:H])
            r = jax.nn.sigmoid(xp_t[:, H:2 * H] + hp[:, H:2 * H] + b[H:2 * H])
            o = jnp.tanh(xp_t[:, 2 * H:] + b[2 * H:3 * H] + r * (hp[:, 2 * H:] + b[3 * H:]))
            h = u * h + (1.0 - u) * o
            return h, h
    else:
        act = {"tanh": jnp.tanh, "relu": jax.nn.relu, "logistic": jax.nn.sigmoid}[kind]

        def body(h, xp_t):
            h = act(xp_t + h @ wh + b)
            return h, h
    hT, hs = lax.scan(body, h0, xp, reverse=reverse)
    return hs, hT, c0


# The tangent map of the primitive at a point: linear in the tangents (the last six
# operands), given the primals, outputs and workspace (the first ten).
onednn_rnn_tangent = jax.extend.core.Primitive("onednn_rnn_tangent")
onednn_rnn_tangent.multiple_results = True
_N_RES = 10


@onednn_rnn_tangent.def_abstract_eval
def _tangent_abstract(*args, kind, reverse, threads):
    hs, hT, cT = args[6:9]
    return [jax.core.ShapedArray(a.shape, a.dtype) for a in (hs, hT, cT)]


def _tangent_xla(*args, kind, reverse, threads):
    primals, tangents = args[:6], args[_N_RES:]
    return list(jax.jvp(functools.partial(_reference, kind, reverse), primals, tangents)[1])


def _tangent_transpose(cts, *args, kind, reverse, threads):
    """Reverse mode: oneDNN's backward primitive on the saved workspace."""
    primals, outs, ws = args[:6], args[6:9], args[9]
    if any(ad.is_undefined_primal(a) for a in args[:_N_RES]):
        raise NotImplementedError("onednn_rnn_tangent is linear only in its tangents")
    cts = [ad.instantiate_zeros(ct) for ct in cts]
    grads = _backward_call(kind, reverse, threads, primals, outs, ws, cts)
    return [None] * _N_RES + [g if ad.is_undefined_primal(t) else None
                              for g, t in zip(grads, args[_N_RES:])]


def _tangent_jvp(primals, tangents, *, kind, reverse, threads):
    """Derivative of the tangent map (second order), in XLA."""
    tangents = [ad.instantiate_zeros(t) for t in tangents]
    f = functools.partial(_tangent_xla, kind=kind, reverse=reverse, threads=threads)
    out, d_out = jax.jvp(lambda *a: f(*a), tuple(primals), tuple(tangents))
    return out, d_out


def _tangent_batch(args, dims, *, kind, reverse, threads):
    """vmap: one primitive per example (``lax.map``), which still transposes to oneDNN."""
    args = [a if d is batching.not_mapped else jnp.moveaxis(a, d, 0) for a, d in zip(args, dims)]
    size = next(a.shape[0] for a, d in zip(args, dims) if d is not batching.not_mapped)
    args = [a if d is not batching.not_mapped else jnp.broadcast_to(a, (size,) + a.shape)
            for a, d in zip(args, dims)]
    out = lax.map(lambda a: tuple(onednn_rnn_tangent.bind(*a, kind=kind, reverse=reverse,
                                                          threads=threads)), tuple(args))
    return list(out), [0, 0, 0]


onednn_rnn_tangent.def_impl(
    lambda *args, **params: jax.jit(functools.partial(_tangent_xla, **params))(*args))
mlir.register_lowering(onednn_rnn_tangent,
                       mlir.lower_fun(_tangent_xla, multiple_results=True))
ad.primitive_transposes[onednn_rnn_tangent] = _tangent_transpose
ad.primitive_jvps[onednn_rnn_tangent] = _tangent_jvp
batching.primitive_batchers[onednn_rnn_tangent] = _tangent_batch


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2))
def core(kind: str, reverse: bool, threads: int, x, wx, wh, b, h0, c0):
    """One oneDNN RNN layer in oneDNN's layout -> (hs [T, B, H], hT [B, H], cT).

    ``kind`` is a key of ``KINDS``; ``c0``/``cT`` are [B, H] for the LSTM, else [0].
    ``threads``: OpenMP threads for oneDNN, 0 for its default.
    """
    hs, hT, cT, _ = _forward_call(kind, reverse, threads, x, wx, wh, b, h0, c0)
    return hs, hT, cT


@core.defjvp
def _core_jvp(kind, reverse, threads, primals, tangents):
    hs, hT, cT, ws = _forward_call(kind, reverse, threads, *primals)
    t_out = onednn_rnn_tangent.bind(*primals, hs, hT, cT, ws, *tangents, kind=kind,
                                    reverse=reverse, threads=threads)
    return (hs, hT, cT), tuple(t_out)


# ----------------------------------------------------------------------------
# rnnjax's cells on the primitive
# ----------------------------------------------------------------------------

def _gru_order(w: jax.Array) -> jax.Array:
    """rnnjax's GRU blocks (r, z, n) -> oneDNN's (u = z, r, o = n), along the last axis."""
    r, z, n = jnp.split(w, 3, axis=-1)
    return jnp.concatenate([z, r, n], axis=-1)


def _onednn_weights(kind: str, params) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(wx [D, G], wh [H, G], b) in oneDNN's gate order from rnnjax's params."""
    wx, wh = params["W_xh"], params["W_hh"]
    H = wh.shape[0]
    if kind == "lstm":    # i, f, g, o in both
        return wx, wh, params["b"]
    if kind == "gru":     # the linear-before-reset bias b_hn is oneDNN's fourth bias
        b = jnp.concatenate([_gru_order(params["b_x"]), params["b_hn"]])
        return _gru_order(wx), _gru_order(wh), b
    return wx, wh, params.get("b_h", jnp.zeros((H,), wh.dtype))


def unroll(kind: str, params, xs: jax.Array, carry, *, reverse: bool = False,
           threads: int = 0):
    """One rnnjax cell layer on oneDNN: ``(final_carry, hs [T, B, H])``.

    Args:
      kind: ``lstm``, ``gru`` or a vanilla activation (``tanh``, ``relu``, ``logistic``).
      params: the cell's params (``cells.lstm/gru/vanilla``'s ``init``), float32.
      xs: inputs [T, B, D], float32, time-major.
      carry: the initial carry, ``LSTMCarry(c, h)`` for the LSTM, else h [B, H].
      reverse: run from the last step to the first (outputs stay in input order).
      threads: oneDNN's OpenMP threads (0: its default).
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} has no oneDNN primitive; accepted: {', '.join(KINDS)}")
    if _library() is None:
        raise RuntimeError("oneDNN RNN kernels are unavailable (see the warning above)")
    wx, wh, b = _onednn_weights(kind, params)
    if kind == "lstm":
        h0, c0 = carry.h, carry.c
    else:
        h0, c0 = carry, jnp.zeros((0,), jnp.float32)
    hs, hT, cT = core(kind, bool(reverse), int(threads), xs, wx, wh, b, h0, c0)
    return (type(carry)(cT, hT) if kind == "lstm" else hT), hs


def _kind_of(cell) -> str | None:
    """The oneDNN kind of an rnnjax cell, from its name, or None."""
    if cell.name in ("lstm", "gru"):
        return cell.name
    if cell.name.startswith("vanilla[") and cell.name[8:-1] in KINDS:
        return cell.name[8:-1]
    return None


def _tracer_blocks_onednn(tree) -> bool:
    """Whether an input is traced by vmap or by nested differentiation (JVP of a JVP/VJP):
    transformations the primitive supports poorly (vmap: one call per example) or not at
    all (derivatives of its backward)."""
    from jax._src.interpreters import ad as ad_internal, batching as batching_internal
    ad_types = (ad_internal.JVPTracer, ad_internal.LinearizeTracer)
    for leaf in jax.tree_util.tree_leaves(tree):
        depth = 0
        while isinstance(leaf, jax.core.Tracer):
            if isinstance(leaf, batching_internal.BatchTracer):
                return True
            if isinstance(leaf, ad_types):
                depth += 1
                if depth > 1:
                    return True
                leaf = leaf.primal
            else:
                break
    return False


def uses_onednn(backend: str, kind: str | None, params, xs, carry, lengths=None,
                remat: bool = False) -> bool:
    """Whether ``backend`` runs this unroll on oneDNN.

    ``"xla"``: never. ``"auto"``: for the kinds in ``AUTO_KINDS`` (LSTM, GRU) when the
    kernel is available, JAX runs on the CPU on one device (with several, a batch split
    over them would be gathered for the custom call), there are no ``lengths``, no
    ``remat``, every input is float32 and no vmap or nested differentiation traces it.
    ``"onednn"``: also vanilla cells, several devices, vmap; a request it cannot serve
    at all is an error (a missing kernel only warns).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "xla" or backend == "auto" and kind not in AUTO_KINDS:
        return False
    reasons = []
    if kind is None:
        reasons.append("the cell has no oneDNN primitive (LSTM, GRU, vanilla tanh/relu/"
                       "logistic only)")
    if lengths is not None:
        reasons.append("lengths= (per-sequence lengths) is not supported")
    if remat:
        reasons.append("remat=True is not supported")
    leaves = jax.tree_util.tree_leaves((params, xs, carry))
    if any(jnp.result_type(a) != jnp.float32 for a in leaves):
        reasons.append("params, inputs and carry must be float32")
    if xs.ndim != 3:
        reasons.append(f"inputs must be [T, B, D], got shape {tuple(xs.shape)}")
    if jax.default_backend() != "cpu":
        reasons.append(f"JAX runs on {jax.default_backend()}, oneDNN only on the CPU")
    elif 0 in xs.shape:
        reasons.append(f"inputs of shape {tuple(xs.shape)} are empty")
    if reasons and backend == "onednn":
        raise ValueError(f"backend='onednn': {'; '.join(reasons)}; use backend='auto' or 'xla'")
    # Under auto, also XLA for vmap / nested autodiff, and with several devices: XLA's
    # partitioner would gather a split batch to run the custom call whole on each device.
    if reasons or (backend == "auto" and (jax.device_count() > 1
                                          or _tracer_blocks_onednn((params, xs, carry)))):
        return False
    return _library() is not None


def with_backend(cell, backend: str = "auto", *, threads: int = 0):
    """``cell`` whose ``recurrence.unroll`` runs on oneDNN per ``backend`` (``BACKENDS``).

    ``cell`` is a float32 cell from ``cells.lstm``, ``cells.gru`` or ``cells.vanilla``
    (tanh, relu, logistic); where oneDNN is not used (see ``uses_onednn``) the cell's
    own unroll runs, the fused XLA one if it has one. ``backend="xla"`` returns ``cell``;
    ``"auto"`` leaves vanilla cells on XLA (``AUTO_KINDS``), ``"onednn"`` does not.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    kind = _kind_of(cell)
    if backend == "xla" or backend == "auto" and kind not in AUTO_KINDS:
        return cell
    if kind is None:
        if backend == "onednn":
            raise ValueError(f"backend='onednn': cell {cell.name!r} has no oneDNN primitive; "
                             f"accepted: lstm, gru, vanilla[{'|'.join(list(KINDS)[:3])}]")
        return cell
    fallback_cell = cell

    def unroll_override(params, xs, *, carry, lengths, reverse, unroll, remat):
        if uses_onednn(backend, kind, params, xs, carry, lengths, remat):
            return unroll_onednn(params, xs, carry, reverse)
        return recurrence.unroll(fallback_cell, params, xs, carry=carry, lengths=lengths,
                                 reverse=reverse, unroll=unroll, remat=remat)

    def unroll_onednn(params, xs, carry, reverse):
        # The primitive never calls cell.project: trace it for its argument checks (the
        # input size named in the cell's own words), at no run-time cost.
        jax.eval_shape(cell.project, params, xs)
        return globals()["unroll"](kind, params, xs, carry, reverse=reverse, threads=threads)

    # Marked step-equivalent like the fused unroll (recurrence.unroll drops a stale one),
    # and carrying the fused core, so that fused.with_projection (token-id lookups, which
    # oneDNN cannot take) keeps the fused XLA unroll.
    mark_step_equivalent(unroll_override, cell.project, cell.recurrent_step)
    unroll_override.core = getattr(cell.unroll, "core", None)
    unroll_override.backend = backend
    return cell._replace(unroll=unroll_override)
