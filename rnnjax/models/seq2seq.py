"""Encoder–decoder translation (Sutskever, Vinyals & Le 2014) with attention
(Bahdanau, Cho & Bengio 2015), trained by teacher forcing, decoded greedily or by
beam search.

The model, as pure functions of a params pytree and a hashable :class:`Config`:

* the **encoder** (any ``rnnjax`` cell, optionally bidirectional, optionally reading
  the source reversed, the 2014 paper's trick) reads the embedded source
  ``src [B, S]`` into states ``[B, S, He]`` and a final summary ``[B, He]``
  (``He = H`` or ``2H`` bidirectional). Padding is masked: the carry freezes after
  each source ends.
* a **bridge** maps the summary to the decoder's initial carry (one ``tanh``
  layer per carry array, so any encoder and decoder cells fit together);
* the **decoder** (any cell) reads the previous target character and, with
  attention, a context ``c_t = sum_s a_ts m_s`` over the encoder states ``m_s``,
  computed from its previous output ``q = h_{t-1}``:

  - ``additive`` (Bahdanau 2015): ``e_ts = v . tanh(W_q q + W_k m_s + b)``;
  - ``dot`` (scaled dot product, Vaswani et al. 2017): ``e_ts = (W_q q) . (W_k m_s) / sqrt(A)``;

  ``a_t = softmax_s(e_ts)`` over the real source positions only (padding gets
  weight 0). Logits come from ``[h_t; c_t]`` (``h_t`` alone without attention).

Training: :func:`loss_fn` (teacher forcing, masked mean cross-entropy in nats per
target character, ``<eos>`` included). Decoding: :func:`greedy_decode` and
:func:`beam_search`, both jitted and batched, each one ``lax.scan`` over output
steps. Both return the attention weights ``[B, L, S]`` in source order (also when
the source was read reversed) for plotting.

Shapes: B batch, S source length, T target length (teacher forcing), L decoding
steps, V target vocabulary, K beam width, E embedding, H hidden size.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rnnjax import cells as cells_lib
from rnnjax import losses, recurrence
from rnnjax.data.translation import BOS_ID, EOS_ID, PAD_ID

Params = dict[str, Any]
ATTENTIONS = ("none", "additive", "dot")
NEG_INF = -jnp.inf


class Config(NamedTuple):
    """The architecture (hashable: a static argument of the jitted functions)."""

    src_vocab_size: int
    tgt_vocab_size: int
    embed_size: int = 32
    hidden_size: int = 64
    encoder_cell: str = "gru"
    decoder_cell: str = "gru"
    bidirectional: bool = False
    attention: str = "none"        # none | additive | dot
    attention_size: int = 64
    reverse_source: bool = False

    def validate(self) -> "Config":
        if self.attention not in ATTENTIONS:
            raise ValueError(f"--attention={self.attention!r} is not known; accepted: "
                             f"{', '.join(ATTENTIONS)}")
        for name in ("src_vocab_size", "tgt_vocab_size", "embed_size", "hidden_size",
                     "attention_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.tgt_vocab_size <= max(PAD_ID, BOS_ID, EOS_ID):
            raise ValueError(f"tgt_vocab_size={self.tgt_vocab_size} leaves no room for the "
                             "specials <pad>, <bos>, <eos>")
        for name in ("encoder_cell", "decoder_cell"):
            if getattr(self, name) not in cells_lib.CELL_NAMES:
                raise ValueError(f"{name}={getattr(self, name)!r} is not known; accepted: "
                                 f"{', '.join(cells_lib.CELL_NAMES)}")
        return self

    @property
    def memory_size(self) -> int:
        """He, the size of an encoder state (2H when bidirectional)."""
        return self.hidden_size * (2 if self.bidirectional else 1)

    @property
    def context_size(self) -> int:
        return self.memory_size if self.attention != "none" else 0


class Memory(NamedTuple):
    """What the decoder reads from the encoder."""

    states: jax.Array   # [B, S, He] encoder outputs (zero on padding)
    keys: jax.Array     # [B, S, A] states projected for attention ([B, S, 0] without)
    mask: jax.Array     # [B, S] bool, True on real source positions
    final: jax.Array    # [B, He] the summary the bridge turns into the decoder's carry


class Decoded(NamedTuple):
    """A batch of decoded outputs.

    tokens [B, L]: ids, ``<eos>`` after the last character, ``<pad>`` after that.
    lengths [B]: characters before ``<eos>`` (L if none was emitted).
    log_prob [B]: the sequence's log-probability (its ``<eos>`` included).
    attention [B, L, S]: the attention at each output step, in source order
      (zeros without attention and after ``<eos>``).
    """

    tokens: jax.Array
    lengths: jax.Array
    log_prob: jax.Array
    attention: jax.Array


class Beams(NamedTuple):
    """Beam search results, best first along K.

    tokens [B, K, L], lengths [B, K], log_prob [B, K], score [B, K] (log_prob
    divided by (length + 1) ** length_penalty, the ranking), attention [B, K, L, S].
    """

    tokens: jax.Array
    lengths: jax.Array
    log_prob: jax.Array
    score: jax.Array
    attention: jax.Array

    def best(self) -> Decoded:
        return Decoded(self.tokens[:, 0], self.lengths[:, 0], self.log_prob[:, 0],
                       self.attention[:, 0])


# --------------------------------------------------------------------------- building blocks

def _cell(config: Config, which: str) -> cells_lib.Cell:
    name = config.encoder_cell if which == "encoder" else config.decoder_cell
    return cells_lib.by_name(name, config.hidden_size)


def _dense_init(key: jax.Array, fan_in: int, fan_out: int) -> dict[str, jax.Array]:
    limit = math.sqrt(6.0 / (fan_in + fan_out))  # Glorot uniform
    return {"W": jax.random.uniform(key, (fan_in, fan_out), jnp.float32, -limit, limit),
            "b": jnp.zeros((fan_out,), jnp.float32)}


def _dense(p: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    return x @ p["W"] + p["b"]


@functools.partial(jax.jit, static_argnames=("config",))
def init(key: jax.Array, config: Config) -> Params:
    """Parameters of the model described by ``config`` (jitted: one compilation)."""
    config.validate()
    keys = iter(jax.random.split(key, 16))
    E, H, He, A = config.embed_size, config.hidden_size, config.memory_size, config.attention_size
    enc, dec = _cell(config, "encoder"), _cell(config, "decoder")
    params: Params = {
        "src_embed": jax.random.normal(next(keys), (config.src_vocab_size, E), jnp.float32),
        "tgt_embed": jax.random.normal(next(keys), (config.tgt_vocab_size, E), jnp.float32),
    }
    if config.bidirectional:
        params["encoder"] = (enc.init(next(keys), E), enc.init(next(keys), E))
    else:
        params["encoder"] = enc.init(next(keys), E)
    params["decoder"] = dec.init(next(keys), E + config.context_size)
    # One tanh layer per array of the decoder's carry (h; c and h for the LSTM).
    template = dec.initial_carry(params["decoder"], 1)
    leaves = jax.tree.leaves(template)
    params["bridge"] = [_dense_init(next(keys), He, leaf.shape[-1]) for leaf in leaves]
    if config.attention != "none":
        limit_q, limit_k = math.sqrt(6.0 / (H + A)), math.sqrt(6.0 / (He + A))
        params["attention"] = {
            "W_q": jax.random.uniform(next(keys), (H, A), jnp.float32, -limit_q, limit_q),
            "W_k": jax.random.uniform(next(keys), (He, A), jnp.float32, -limit_k, limit_k),
        }
        if config.attention == "additive":
            params["attention"]["b"] = jnp.zeros((A,), jnp.float32)
            params["attention"]["v"] = jax.random.normal(next(keys), (A,), jnp.float32) / math.sqrt(A)
    params["readout"] = _dense_init(next(keys), H + config.context_size, config.tgt_vocab_size)
    return params


def reverse_padded(x: jax.Array, lengths: jax.Array) -> jax.Array:
    """Reverse each row of ``x`` [B, S, ...] within its length; padding stays in place.

    Its own inverse: used to read the source backwards and to put attention weights
    back into source order.
    """
    S = x.shape[1]
    pos = jnp.arange(S)[None, :]
    idx = jnp.where(pos < lengths[:, None], lengths[:, None] - 1 - pos, pos)
    idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, jnp.broadcast_to(idx, x.shape), axis=1)


def encode(params: Params, config: Config, src: jax.Array, src_lengths: jax.Array) -> Memory:
    """Encode ``src`` [B, S] (int ids, <pad> after ``src_lengths`` [B]) into a :class:`Memory`.

    With ``reverse_source`` the encoder reads each source backwards (padding stays
    at the end); the states are then in reversed order too.
    """
    if src.ndim != 2 or src_lengths.shape != src.shape[:1]:
        raise ValueError(f"encode needs src [B, S] and src_lengths [B]; got {src.shape} and "
                         f"{src_lengths.shape}")
    if config.reverse_source:
        src = reverse_padded(src, src_lengths)
    enc = _cell(config, "encoder")
    xs = jnp.swapaxes(params["src_embed"][src], 0, 1)  # [S, B, E]
    if config.bidirectional:
        (fw, bw), hs = recurrence.bidirectional(enc, enc, params["encoder"], xs,
                                                lengths=src_lengths)
        final = jnp.concatenate([enc.output(fw), enc.output(bw)], axis=-1)
    else:
        carry, hs = recurrence.unroll(enc, params["encoder"], xs, lengths=src_lengths)
        final = enc.output(carry)
    states = jnp.swapaxes(hs, 0, 1)  # [B, S, He]
    mask = jnp.arange(src.shape[1])[None, :] < src_lengths[:, None]
    if config.attention != "none":
        keys = states @ params["attention"]["W_k"]  # once per source, not per output step
    else:
        keys = jnp.zeros(states.shape[:2] + (0,), states.dtype)
    return Memory(states, keys, mask, final)


def initial_decoder_carry(params: Params, config: Config, memory: Memory) -> Any:
    """The decoder's first carry: ``tanh(final W + b)`` for each of its arrays."""
    dec = _cell(config, "decoder")
    template = dec.initial_carry(params["decoder"], memory.final.shape[0])
    leaves, treedef = jax.tree.flatten(template)
    new = [jnp.tanh(_dense(p, memory.final)) for p, _ in zip(params["bridge"], leaves)]
    return jax.tree.unflatten(treedef, new)


def attend(params: Params, config: Config, memory: Memory,
           query: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Attention of ``query`` [B, H] over the memory: (context [B, He], weights [B, S]).

    The weights sum to one over the real source positions and are exactly zero on
    padding.
    """
    p = params["attention"]
    q = query @ p["W_q"]  # [B, A]
    if config.attention == "additive":
        scores = jnp.tanh(q[:, None, :] + memory.keys + p["b"]) @ p["v"]  # [B, S]
    else:
        scores = jnp.einsum("ba,bsa->bs", q, memory.keys) / math.sqrt(config.attention_size)
    scores = jnp.where(memory.mask, scores, -1e30)  # finite: an all-padding row stays NaN-free
    weights = jax.nn.softmax(scores, axis=-1) * memory.mask
    context = jnp.einsum("bs,bsh->bh", weights, memory.states)
    return context, weights


def decoder_step(params: Params, config: Config, memory: Memory, carry: Any,
                 prev_tokens: jax.Array) -> tuple[Any, jax.Array, jax.Array]:
    """One decoder step from the previous character ``prev_tokens`` [B].

    Returns ``(carry, logits [B, V], attention [B, S])`` (attention zeros without it).
    """
    dec = _cell(config, "decoder")
    x = params["tgt_embed"][prev_tokens]  # [B, E]
    if config.attention != "none":
        context, weights = attend(params, config, memory, dec.output(carry))
        x = jnp.concatenate([x, context], axis=-1)
    else:
        weights = jnp.zeros(memory.mask.shape, jnp.float32)
    carry, h = dec.step(params["decoder"], carry, x)
    features = jnp.concatenate([h, context], axis=-1) if config.attention != "none" else h
    return carry, _dense(params["readout"], features), weights


def _source_order(attention: jax.Array, config: Config, src_lengths: jax.Array) -> jax.Array:
    """Attention [B, L, S] over (maybe reversed) encoder positions -> source order."""
    if not config.reverse_source:
        return attention
    return jnp.swapaxes(reverse_padded(jnp.swapaxes(attention, 1, 2), src_lengths), 1, 2)


# --------------------------------------------------------------------------- teacher forcing

@functools.partial(jax.jit, static_argnames=("config",))
def forward(params: Params, config: Config, src: jax.Array, src_lengths: jax.Array,
            tgt_in: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Teacher forcing: the decoder reads the true previous characters ``tgt_in`` [B, T].

    Returns ``(logits [B, T, V], attention [B, T, S])``, attention in source order.
    """
    memory = encode(params, config, src, src_lengths)
    carry = initial_decoder_carry(params, config, memory)

    def body(carry, prev):
        carry, logits, weights = decoder_step(params, config, memory, carry, prev)
        return carry, (logits, weights)

    _, (logits, attention) = jax.lax.scan(body, carry, jnp.swapaxes(tgt_in, 0, 1))
    logits, attention = jnp.swapaxes(logits, 0, 1), jnp.swapaxes(attention, 0, 1)
    return logits, _source_order(attention, config, src_lengths)


def target_mask(batch) -> jax.Array:
    """[B, T] float: 1 on predicted positions (``<eos>`` included) of real rows."""
    T = batch.tgt_out.shape[1]
    mask = jnp.arange(T)[None, :] < batch.tgt_lengths[:, None]
    return mask.astype(jnp.float32) * batch.weights[:, None]


def loss_fn(params: Params, config: Config, batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Masked mean cross-entropy (nats per target character) and token accuracy."""
    logits, _ = forward(params, config, batch.src, batch.src_lengths, batch.tgt_in)
    mask = target_mask(batch)
    loss = losses.cross_entropy(logits, batch.tgt_out, mask)
    return loss, {"token_accuracy": losses.accuracy(logits, batch.tgt_out, mask)}


@functools.partial(jax.jit, static_argnames=("config",))
def eval_sums(params: Params, config: Config, batch) -> dict[str, jax.Array]:
    """Summed nats and counted positions, so batches add up exactly."""
    logits, _ = forward(params, config, batch.src, batch.src_lengths, batch.tgt_in)
    nats, count = losses.cross_entropy_sum(logits, batch.tgt_out, target_mask(batch))
    return {"nats": nats, "count": count}


# --------------------------------------------------------------------------- decoding

def token_log_probs(logits: jax.Array) -> jax.Array:
    """Log-probabilities of the next character, renormalised without <pad> and <bos>
    (which are never outputs). The same for greedy, beam search and scoring."""
    banned = jnp.zeros(logits.shape[-1], bool).at[PAD_ID].set(True).at[BOS_ID].set(True)
    return jax.nn.log_softmax(jnp.where(banned, NEG_INF, logits), axis=-1)


@functools.partial(jax.jit, static_argnames=("config",))
def sequence_log_prob(params: Params, config: Config, src: jax.Array, src_lengths: jax.Array,
                      tgt_in: jax.Array, tgt_out: jax.Array, tgt_lengths: jax.Array) -> jax.Array:
    """log p(target | source) [B] under the decoding distribution (:func:`token_log_probs`)."""
    logits, _ = forward(params, config, src, src_lengths, tgt_in)
    logp = jnp.take_along_axis(token_log_probs(logits), tgt_out[..., None], -1)[..., 0]
    mask = jnp.arange(tgt_out.shape[1])[None, :] < tgt_lengths[:, None]
    return jnp.sum(jnp.where(mask, logp, 0.0), axis=1)


@functools.partial(jax.jit, static_argnames=("config", "max_len"))
def greedy_decode(params: Params, config: Config, src: jax.Array, src_lengths: jax.Array,
                  max_len: int) -> Decoded:
    """The most probable next character at each step, for ``max_len`` steps at most.

    Args:
      src [B, S], src_lengths [B]: the sources (as in :func:`encode`).
      max_len: L, output steps (the ``<eos>`` counts as one).
    """
    memory = encode(params, config, src, src_lengths)
    B = src.shape[0]
    init_state = (initial_decoder_carry(params, config, memory), jnp.full((B,), BOS_ID, jnp.int32),
                  jnp.zeros((B,), bool), jnp.zeros((B,), jnp.float32),
                  jnp.zeros((B,), jnp.int32))

    def body(state, _):
        carry, prev, done, log_prob, length = state
        new_carry, logits, weights = decoder_step(params, config, memory, carry, prev)
        logp = token_log_probs(logits)
        token = jnp.argmax(logp, axis=-1).astype(jnp.int32)
        token_logp = jnp.take_along_axis(logp, token[:, None], -1)[:, 0]
        out = jnp.where(done, PAD_ID, token)
        log_prob = log_prob + jnp.where(done, 0.0, token_logp)
        length = length + (~done & (token != EOS_ID)).astype(jnp.int32)
        weights = jnp.where(done[:, None], 0.0, weights)
        return (new_carry, token, done | (token == EOS_ID), log_prob, length), (out, weights)

    (_, _, _, log_prob, length), (tokens, attention) = jax.lax.scan(
        body, init_state, None, length=max_len)
    attention = _source_order(jnp.swapaxes(attention, 0, 1), config, src_lengths)
    return Decoded(jnp.swapaxes(tokens, 0, 1), length, log_prob, attention)


def _gather_beams(x: jax.Array, beam_idx: jax.Array) -> jax.Array:
    """x [B, K', ...] gathered along axis 1 by beam_idx [B, K] -> [B, K, ...]."""
    idx = beam_idx.reshape(beam_idx.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1)


def _length_norm(log_prob: jax.Array, steps: jax.Array | int, alpha: float) -> jax.Array:
    return log_prob / (jnp.asarray(steps, jnp.float32) ** alpha)


@functools.partial(jax.jit, static_argnames=("config", "beam_width", "max_len"))
def beam_search(params: Params, config: Config, src: jax.Array, src_lengths: jax.Array,
                beam_width: int, max_len: int, length_penalty: float | jax.Array = 0.0) -> Beams:
    """Batched beam search, one ``lax.scan`` over output steps.

    At each step every live beam is extended by every character; of the best 2K
    candidates, those ending in ``<eos>`` among the first K are finished, and the
    best K others stay live (fairseq's rule). Finished hypotheses are ranked by
    ``log_prob / steps ** length_penalty`` (steps counting the ``<eos>``; 0 ranks by
    log-probability, 1 by its mean per step). A source is done once it has K
    finished hypotheses and no live beam can still beat the worst of them (a
    live beam's score is at most ``log_prob / max_len ** length_penalty``, as
    log-probabilities only fall). Sources not done after ``max_len`` steps also
    rank their live beams, cut off at ``max_len``. With ``length_penalty=0``,
    width 1 is exactly greedy decoding; with a positive penalty, width 1 may go on
    past a greedy ``<eos>`` to find a longer output with a better mean.

    Args:
      beam_width: K >= 1.
      max_len: L, output steps (the ``<eos>`` counts as one).
      length_penalty: alpha above.

    Returns:
      :class:`Beams`, best first.
    """
    if beam_width < 1:
        raise ValueError(f"beam_width must be a positive integer, got {beam_width!r}")
    K, L, V = beam_width, max_len, config.tgt_vocab_size
    B, S = src.shape
    memory = encode(params, config, src, src_lengths)
    memory = jax.tree.map(lambda x: jnp.repeat(x, K, axis=0), memory)  # [B*K, ...]
    carry = initial_decoder_carry(params, config, memory)

    alive_logp = jnp.tile(jnp.array([0.0] + [NEG_INF] * (K - 1), jnp.float32), (B, 1))
    init_state = dict(
        carry=carry,
        prev=jnp.full((B, K), BOS_ID, jnp.int32),
        alive_tokens=jnp.full((B, K, L), PAD_ID, jnp.int32),
        alive_logp=alive_logp,
        alive_attn=jnp.zeros((B, K, L, S), jnp.float32),
        fin_tokens=jnp.full((B, K, L), PAD_ID, jnp.int32),
        fin_logp=jnp.full((B, K), NEG_INF, jnp.float32),
        fin_score=jnp.full((B, K), NEG_INF, jnp.float32),
        fin_steps=jnp.zeros((B, K), jnp.int32),
        fin_attn=jnp.zeros((B, K, L, S), jnp.float32),
        fin_count=jnp.zeros((B,), jnp.int32),
    )
    n_cand = min(2 * K, K * V)
    rank = jnp.arange(n_cand)[None, :]

    def merge_finished(st, tokens, logp, score, steps, attn):
        """Keep the best K of the finished hypotheses and the new ones."""
        all_score = jnp.concatenate([st["fin_score"], score], axis=1)
        top_score, idx = jax.lax.top_k(all_score, K)
        cat = lambda a, b: jnp.concatenate([a, b], axis=1)
        return dict(st, fin_score=top_score,
                    fin_tokens=_gather_beams(cat(st["fin_tokens"], tokens), idx),
                    fin_logp=_gather_beams(cat(st["fin_logp"], logp), idx),
                    fin_steps=_gather_beams(cat(st["fin_steps"], steps), idx),
                    fin_attn=_gather_beams(cat(st["fin_attn"], attn), idx))

    def is_done(st):
        """[B]: K finished, and the best live beam cannot beat the worst of them."""
        best_alive = _length_norm(st["alive_logp"][:, 0], L, length_penalty)
        return (st["fin_count"] >= K) & (best_alive <= st["fin_score"][:, K - 1])

    def body(st, t):
        new_carry, logits, weights = decoder_step(params, config, memory, st["carry"],
                                                  st["prev"].reshape(B * K))
        logp = token_log_probs(logits).reshape(B, K, V)
        cand = (st["alive_logp"][:, :, None] + logp).reshape(B, K * V)
        vals, idx = jax.lax.top_k(cand, n_cand)  # [B, 2K]
        beam, token = idx // V, (idx % V).astype(jnp.int32)
        tokens = _gather_beams(st["alive_tokens"], beam).at[:, :, t].set(token)
        attn = _gather_beams(st["alive_attn"], beam)
        attn = attn.at[:, :, t].set(_gather_beams(weights.reshape(B, K, S), beam))

        # <eos> among the first K candidates finishes a hypothesis.
        done = is_done(st)
        is_eos = token == EOS_ID
        finishing = is_eos & (rank < K) & jnp.isfinite(vals) & ~done[:, None]
        steps = jnp.full(vals.shape, t + 1, jnp.int32)
        score = jnp.where(finishing, _length_norm(vals, steps, length_penalty), NEG_INF)
        st = merge_finished(st, tokens, jnp.where(finishing, vals, NEG_INF), score, steps, attn)
        st["fin_count"] = st["fin_count"] + jnp.sum(finishing, axis=1).astype(jnp.int32)

        # The best K candidates that did not end stay alive.
        alive_vals, sel = jax.lax.top_k(jnp.where(is_eos, NEG_INF, vals), K)
        sel_beam = _gather_beams(beam, sel)
        flat = (jnp.arange(B)[:, None] * K + sel_beam).reshape(B * K)
        st["carry"] = jax.tree.map(lambda x: x[flat], new_carry)
        st["prev"] = _gather_beams(token, sel)
        st["alive_tokens"] = _gather_beams(tokens, sel)
        st["alive_logp"] = alive_vals
        st["alive_attn"] = _gather_beams(attn, sel)
        return st, None

    st, _ = jax.lax.scan(body, init_state, jnp.arange(L))
    # Sources not done rank their live beams too (cut off after L steps).
    not_done = ~is_done(st)[:, None] & jnp.isfinite(st["alive_logp"])
    steps = jnp.full((B, K), L, jnp.int32)
    st = merge_finished(st, st["alive_tokens"], jnp.where(not_done, st["alive_logp"], NEG_INF),
                        jnp.where(not_done, _length_norm(st["alive_logp"], steps, length_penalty),
                                  NEG_INF),
                        steps, st["alive_attn"])
    tokens = st["fin_tokens"]
    lengths = jnp.sum((tokens != PAD_ID) & (tokens != EOS_ID), axis=-1).astype(jnp.int32)
    attention = st["fin_attn"].reshape(B * K, L, S)
    attention = _source_order(attention, config, jnp.repeat(src_lengths, K)).reshape(B, K, L, S)
    return Beams(tokens, lengths, st["fin_logp"], st["fin_score"], attention)
