"""Recurrent language models: embedding, stacked cells, softmax readout; teacher-forced
loss, truncated BPTT, evaluation over a whole split, and sampling by feeding samples back.

The model predicts token t+1 from tokens 1..t. Its pieces:

* **input**: with ``embed_size=0`` each token is the lecture's indicator (one-hot)
  vector; the first layer's input projection of a one-hot vector is one row of
  ``project(eye(V))``, so the model looks that row up instead of multiplying by a
  one-hot matrix (same result, same gradient; no dropout on one-hot inputs). With
  ``embed_size=E`` a learned embedding [V, E] feeds the first cell.
* **cells**: ``layers`` cells of any kind from :mod:`rnnjax.cells` (tanh RNN, LSTM,
  GRU, MRNN, ...), each unrolled with :func:`rnnjax.recurrence.unroll`; dropout (a
  PRNG key per call, nothing stored) on the embedding, between layers and before the
  readout (the non-recurrent connections, as in Zaremba et al. 2014).
* **readout**: logits = h W + b, [T, B, V]; with ``tie_embeddings`` W is the
  embedding transposed (Press & Wolf 2017; needs ``embed_size == hidden``).

Truncated BPTT: :func:`tbptt_loss` runs one segment from a carried state; the state
enters through ``stop_gradient`` (so the gradient stops at the segment border) and is
reset to the initial state at the start of an epoch. Its signature fits
``rnnjax.train.make_train_step(..., uses_extra=True)`` with the carry as ``extra``.

    >>> import jax, jax.numpy as jnp
    >>> from rnnjax.models import lm
    >>> model = lm.LanguageModel(vocab_size=30, cell="lstm", hidden=16)
    >>> params = lm.init(model, jax.random.PRNGKey(0))
    >>> carry = lm.initial_carry(model, params, batch_size=4)
    >>> carry, logits = lm.apply(model, params, carry, jnp.zeros((7, 4), jnp.int32))
    >>> logits.shape
    (7, 4, 30)
"""

from __future__ import annotations

import functools
import math
from typing import Any, Iterable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax import cells as cells_lib
from rnnjax import fused, losses
from rnnjax import recurrence

Array = jax.Array
Params = dict[str, Any]
Carry = tuple  # one carry per layer


# Names of the cells' input-to-hidden weights (rescaled for one-hot inputs in ``init``).
INPUT_WEIGHTS = ("W_xh", "W_hx")


class LanguageModel(NamedTuple):
    """Static configuration of a recurrent language model (hashable; pass it to jit as a
    static argument or close over it).

    Attributes:
      vocab_size: V.
      cell: a name from ``rnnjax.cells.CELL_NAMES`` (tanh, lstm, gru, mrnn, ...).
      hidden: H, the size of every layer.
      layers: number of stacked cells.
      embed_size: E; 0 feeds one-hot indicator vectors.
      dropout: rate of dropout on layer inputs and on the readout's input (training only).
      tie_embeddings: readout weights = embedding transposed (needs E == H).
      factors: the MRNN's number of factors F (None: F = H).
      unroll: time steps per ``lax.scan`` iteration (a speed knob).
      fused: use ``rnnjax.fused``'s hand-written BPTT for tanh/relu/LSTM/GRU cells
        (faster on CPU); None keeps the cells' default. The MRNN has no fused form.
    """
    vocab_size: int
    cell: str = "lstm"
    hidden: int = 256
    layers: int = 1
    embed_size: int = 0
    dropout: float = 0.0
    tie_embeddings: bool = False
    factors: int | None = None
    unroll: int = 1
    fused: bool | None = None

    def validate(self) -> "LanguageModel":
        if self.vocab_size < 2:
            raise ValueError(f"vocab_size must be at least 2, got {self.vocab_size}")
        if self.cell not in cells_lib.CELL_NAMES:
            raise ValueError(f"--cell={self.cell!r} is unknown; accepted: "
                             f"{', '.join(cells_lib.CELL_NAMES)}")
        for name in ("hidden", "layers", "unroll"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")
        if self.embed_size < 0:
            raise ValueError(f"--embed_size must be 0 (one-hot) or positive, got "
                             f"{self.embed_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.tie_embeddings and self.embed_size != self.hidden:
            raise ValueError(f"--tie_embeddings needs --embed_size equal to --hidden "
                             f"({self.hidden}); got embed_size={self.embed_size}")
        if self.factors is not None and self.cell != "mrnn":
            raise ValueError(f"--factors applies to the mrnn cell only, not {self.cell!r}")
        return self


def make_cells(model: LanguageModel) -> tuple[cells_lib.Cell, ...]:
    """The model's cells, one per layer."""
    kw: dict[str, Any] = {"factors": model.factors} if model.cell == "mrnn" else {}
    if model.fused is not None and model.cell != "mrnn":
        kw["fused"] = model.fused
    return tuple(cells_lib.by_name(model.cell, model.hidden, **kw) for _ in range(model.layers))


@functools.partial(jax.jit, static_argnums=0)   # one compilation, not one per initialiser op
def init(model: LanguageModel, key: Array) -> Params:
    """Parameters: ``{"embed": [V, E] (if E > 0), "layers": (cell params, ...),
    "readout": {"W": [H, V] (unless tied), "b": [V]}}``."""
    model.validate()
    cs = make_cells(model)
    k_embed, k_out, *k_layers = jax.random.split(key, 2 + model.layers)
    V, E, H = model.vocab_size, model.embed_size, model.hidden
    params: Params = {}
    in_size = V
    if E > 0:
        # Small uniform embedding as in Zaremba et al.; the first layer's weights scale it.
        params["embed"] = jax.random.uniform(k_embed, (V, E), jnp.float32, -0.1, 0.1)
        in_size = E
    sizes = [in_size] + [H] * (model.layers - 1)
    layers = [c.init(k, d) for c, k, d in zip(cs, k_layers, sizes)]
    if E == 0:
        # Glorot scales the input weights for V active inputs; a one-hot vector has one,
        # so its drive would start sqrt(V) times too weak and training would sit on the
        # unigram plateau for a long while. Scale it up to unit fan-in.
        layers[0] = {k: v * math.sqrt(V) if k in INPUT_WEIGHTS else v
                     for k, v in layers[0].items()}
    params["layers"] = tuple(layers)
    readout = {"b": jnp.zeros((V,), jnp.float32)}
    if not model.tie_embeddings:
        readout["W"] = jax.random.normal(k_out, (H, V), jnp.float32) / math.sqrt(H)
    params["readout"] = readout
    return params


def count_params(params: Any) -> int:
    """Number of scalars in a params pytree."""
    return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(params)))


def initial_carry(model: LanguageModel, params: Params, batch_size: int) -> Carry:
    """The initial state of every layer (zeros, or learned initial states)."""
    return tuple(c.initial_carry(p, batch_size)
                 for c, p in zip(make_cells(model), params["layers"]))


def one_hot_cell(cell: cells_lib.Cell, vocab_size: int) -> cells_lib.Cell:
    """``cell`` whose input is token ids [..., 1] standing for one-hot vectors.

    ``project`` is affine, so project(one_hot(i)) is row i of project(eye(V)): a
    lookup in a [V, P] table replaces a [N, V] x [V, P] matmul.
    """
    def project(p, ids):
        table = cell.project(p, jnp.eye(vocab_size, dtype=jnp.float32))
        return jnp.take(table, ids[..., 0], axis=0)
    return fused.with_projection(cell, project)   # a fused cell stays fused


def _dropout(x: Array, rate: float, key: Array | None) -> Array:
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


def readout_weights(model: LanguageModel, params: Params) -> Array:
    """[H, V] readout matrix (the embedding transposed when tied)."""
    return params["embed"].T if model.tie_embeddings else params["readout"]["W"]


def features(model: LanguageModel, params: Params, carry: Carry, inputs: Array, *,
             dropout_key: Array | None = None) -> tuple[Carry, Array]:
    """Run the recurrent layers over a segment: everything but the readout.

    Args:
      carry: one carry per layer, each for B sequences.
      inputs: [T, B] int token ids.
      dropout_key: a PRNG key to apply dropout (training); None for no dropout.

    Returns:
      (carry after the last step, the top layer's outputs [T, B, H], dropout applied).
    """
    if inputs.ndim != 2:
        raise ValueError(f"inputs must be token ids [T, B], got shape {inputs.shape}")
    cs = make_cells(model)
    n_drop = model.layers + 1
    keys = (jax.random.split(dropout_key, n_drop) if dropout_key is not None and model.dropout
            else [None] * n_drop)
    if model.embed_size > 0:
        xs = jnp.take(params["embed"], inputs, axis=0)               # [T, B, E]
        first = cs[0]
    else:
        xs = inputs[..., None]                                       # ids as [T, B, 1]
        first = one_hot_cell(cs[0], model.vocab_size)
    new_carry = []
    for i, (c, p, cr) in enumerate(zip((first,) + cs[1:], params["layers"], carry)):
        if i > 0 or model.embed_size > 0:
            xs = _dropout(xs, model.dropout, keys[i])
        cr, xs = recurrence.unroll(c, p, xs, carry=cr, unroll=model.unroll)
        new_carry.append(cr)
    return tuple(new_carry), _dropout(xs, model.dropout, keys[-1])


def readout(model: LanguageModel, params: Params, hs: Array) -> Array:
    """Logits [..., V] of top-layer outputs ``hs`` [..., H]."""
    return hs @ readout_weights(model, params) + params["readout"]["b"]


@functools.partial(jax.jit, static_argnums=0)
def apply(model: LanguageModel, params: Params, carry: Carry, inputs: Array, *,
          dropout_key: Array | None = None) -> tuple[Carry, Array]:
    """Run the model over a segment (:func:`features`, then :func:`readout`): returns
    (carry after the last step, logits [T, B, V]) for ``inputs`` [T, B] token ids."""
    carry, hs = features(model, params, carry, inputs, dropout_key=dropout_key)
    return carry, readout(model, params, hs)


# --------------------------------------------------------------------------- losses

def sequence_loss(model: LanguageModel, params: Params, carry: Carry, inputs: Array,
                  targets: Array, mask: Array | None = None, *,
                  dropout_key: Array | None = None) -> tuple[Array, Carry]:
    """Teacher-forced mean cross-entropy (nats per token) of one segment.

    Args:
      inputs, targets: [T, B] ids; targets are the inputs shifted by one step.
      mask: optional [T, B] (1 = count this position).
    Returns:
      (mean nats over counted positions, carry after the segment).
    """
    carry, logits = apply(model, params, carry, inputs, dropout_key=dropout_key)
    return losses.cross_entropy(logits, targets, mask), carry


def _segment_start(model: LanguageModel, params: Params, carry: Carry, reset: Array,
                   batch_size: int) -> Carry:
    """The carry a segment starts from: the previous segment's, cut from the graph
    (truncated BPTT), or the (learned) initial state where ``reset``."""
    carry = jax.lax.stop_gradient(carry)
    fresh = initial_carry(model, params, batch_size)
    return jax.tree.map(lambda f, c: jnp.where(reset, f, c), fresh, carry)


def tbptt_loss(model: LanguageModel):
    """A loss for ``rnnjax.train.make_train_step(loss, opt, uses_extra=True)``.

    ``loss(params, carry, batch, key) -> (loss, (new_carry, {"bits_per_token": ...}))``
    with ``batch = (inputs [T, B], targets [T, B], reset [] bool)``. The incoming
    carry is cut from the graph (``stop_gradient``: truncated BPTT) and replaced by the
    initial state when ``reset`` (the first segment of an epoch).
    """
    def loss(params, carry, batch, key):
        inputs, targets, reset = batch
        carry = _segment_start(model, params, carry, reset, inputs.shape[1])
        value, new_carry = sequence_loss(model, params, carry, inputs, targets,
                                         dropout_key=key if model.dropout else None)
        return value, (new_carry, {"bits_per_token": value / losses.LN2})
    return loss


# --------------------------------------------------------------------------- Hessian-free

def hf_network(model: LanguageModel):
    """The model split for :mod:`rnnjax.optim.hessian_free` (Martens & Sutskever 2011).

    Returns ``net(params, batch) -> (logits [T, B, V], top-layer outputs [T, B, H])``
    with ``batch = {"inputs": [T, B], "targets": [T, B], "carry": carry, "reset": []}``,
    to pair with ``hessian_free.softmax_cross_entropy()``; the top layer's outputs are
    the hidden states structural damping penalises. The segment starts from the carried
    state as in :func:`tbptt_loss`.

    Raises:
      ValueError: if the model has dropout (the Gauss-Newton products need a
        deterministic network).
    """
    if model.dropout:
        raise ValueError(f"Hessian-free needs a deterministic network: dropout must be 0, got "
                         f"{model.dropout}")

    def net(params: Params, batch: dict[str, Any]) -> tuple[Array, Array]:
        inputs = batch["inputs"]
        carry = _segment_start(model, params, batch["carry"], batch["reset"], inputs.shape[1])
        _, hs = features(model, params, carry, inputs)
        return readout(model, params, hs), hs
    return net


def hf_example_axes(carry: Carry) -> dict[str, Any]:
    """Example axis of each leaf of an :func:`hf_network` batch (for curvature minibatches
    and the preconditioner): tokens [T, B] on axis 1, carries [B, ...] on axis 0."""
    return {"inputs": 1, "targets": 1, "carry": jax.tree.map(lambda _: 0, carry),
            "reset": None}


def hf_tbptt_step(model: LanguageModel, hf: Any, *, curvature_batch_size: int | None = None):
    """A pure ``step_fn(train_state, (inputs, targets, reset))`` for :func:`rnnjax.train.run`:
    one Hessian-free update on the segment, with the carry in ``train_state.extra``.

    ``hf`` is ``hessian_free.hessian_free(hf_network(model), softmax_cross_entropy(), ...)``
    and ``train_state.opt_state`` its state. The next segment starts from the carry the
    old parameters reach, as with the first-order :func:`tbptt_loss`.
    """
    from rnnjax.optim import hessian_free  # keep this module free of the optimizer

    def step_fn(state, segment):
        inputs, targets, reset = segment
        batch = {"inputs": jnp.asarray(inputs), "targets": jnp.asarray(targets),
                 "carry": state.extra, "reset": jnp.asarray(reset)}
        inner = hessian_free.make_train_step(hf, curvature_batch_size=curvature_batch_size,
                                             example_axes=hf_example_axes(state.extra))
        new_state, metrics = inner(state, batch)
        start = _segment_start(model, state.params, state.extra, batch["reset"], inputs.shape[1])
        new_carry, _ = features(model, state.params, start, batch["inputs"])
        metrics = dict(metrics, bits_per_token=metrics["loss"] / losses.LN2)
        return new_state._replace(extra=new_carry), metrics
    return step_fn


# --------------------------------------------------------------------------- evaluation

@functools.partial(jax.jit, static_argnums=0)
def _eval_segment(model, params, carry, inputs, targets, mask):
    carry, logits = apply(model, params, carry, inputs)
    total, count = losses.cross_entropy_sum(logits, targets, mask)
    return carry, total, count


def evaluate(model: LanguageModel, params: Params,
             segments: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Cross-entropy over a whole split with the state carried across all segments.

    Args:
      segments: from ``rnnjax.data.text.eval_segments`` (inputs, targets, mask [T, B]),
        consecutive pieces of the same B streams.
    Returns:
      {"nats": per token, "bits": per token, "perplexity", "tokens": number predicted}.
    """
    carry = None
    total = 0.0
    count = 0.0
    for inputs, targets, mask in segments:
        if carry is None:
            carry = initial_carry(model, params, inputs.shape[1])
        carry, t, c = _eval_segment(model, params, carry, inputs, targets, mask)
        total += float(t)
        count += float(c)
    if count == 0:
        raise ValueError("evaluate got no tokens to predict")
    nats = total / count
    return {"nats": nats, "bits": losses.bits_per_character(nats),
            "perplexity": losses.perplexity(nats), "tokens": int(count)}


# --------------------------------------------------------------------------- sampling

def _step_fn(model: LanguageModel, params: Params):
    """One generation step: (carry, token ids [B]) -> (carry, logits [B, V])."""
    cs = make_cells(model)
    if model.embed_size == 0:
        table = cs[0].project(params["layers"][0], jnp.eye(model.vocab_size, dtype=jnp.float32))
    W = readout_weights(model, params)

    def step(carry, tokens):
        if model.embed_size == 0:
            xp = jnp.take(table, tokens, axis=0)
        else:
            xp = cs[0].project(params["layers"][0], jnp.take(params["embed"], tokens, axis=0))
        c0, h = cs[0].recurrent_step(params["layers"][0], carry[0], xp)
        new = [c0]
        for c, p, cr in zip(cs[1:], params["layers"][1:], carry[1:]):
            cr, h = c.step(p, cr, h)
            new.append(cr)
        return tuple(new), h @ W + params["readout"]["b"]
    return step


def _pick(key: Array, logits: Array, temperature: Array, top_k: int) -> Array:
    """Sample ids [B] from logits [B, V]: top-k filter, temperature, or argmax when
    temperature <= 0."""
    logits = logits.astype(jnp.float32)
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    greedy = jnp.argmax(logits, axis=-1)
    scaled = logits / jnp.maximum(temperature, 1e-8)
    sampled = jax.random.categorical(key, scaled, axis=-1)
    return jnp.where(temperature > 0, sampled, greedy).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("model", "length", "top_k"))
def sample(model: LanguageModel, params: Params, key: Array, prime: Array, *,
           length: int, temperature: float | Array = 1.0, top_k: int = 0) -> Array:
    """Generate ``length`` tokens after a priming text, feeding each sample back in.

    The prime is read in one unrolled pass; generation is one ``lax.scan`` of
    ``length`` steps, all in one compiled function.

    Args:
      prime: [P] or [B, P] token ids, P >= 1 (B independent samples of the same or
        different primes).
      length: number of tokens to generate.
      temperature: divides the logits; 0 means greedy (argmax).
      top_k: sample among the k most likely tokens only (0: all).
    Returns:
      [length] or [B, length] sampled ids (the prime not included).
    """
    squeeze = prime.ndim == 1
    prime = jnp.atleast_2d(prime).astype(jnp.int32)                # [B, P]
    B = prime.shape[0]
    carry = initial_carry(model, params, B)
    carry, logits = apply(model, params, carry, prime.T)            # read the whole prime
    temperature = jnp.asarray(temperature, jnp.float32)
    step = _step_fn(model, params)
    keys = jax.random.split(key, length)
    first = _pick(keys[0], logits[-1], temperature, top_k)

    def body(state, k):
        carry, token = state
        carry, logits = step(carry, token)
        nxt = _pick(k, logits, temperature, top_k)
        return (carry, nxt), token

    # Each iteration emits the token it feeds in; the last one is left in the state.
    (_, last), tokens = jax.lax.scan(body, (carry, first), keys[1:])   # tokens [length-1, B]
    out = jnp.concatenate([tokens, last[None]], axis=0).T             # [B, length]
    return out[0] if squeeze else out
