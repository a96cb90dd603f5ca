"""The lockstep baseline the lecture questions: one RNN that reads the source one
character at a time and emits one output character per input character.

Source and target are padded to the longer of the two (the source with <pad>
inputs, the target with <eos> then <pad>), so at step t the network has read only
``x_1..x_t`` when it must emit ``y_t``. It cannot look ahead: Pig Latin's
``string -> ingstray`` needs the "i" (input step 4) at output step 1. It is here to
be measured against the encoder–decoder (:mod:`rnnjax.models.seq2seq`), not used.

Shapes: B batch, N = max(S, T) steps, V target vocabulary.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rnnjax import cells as cells_lib
from rnnjax import losses, recurrence
from rnnjax.data.translation import EOS_ID, PAD_ID
from rnnjax.models import seq2seq

Params = dict[str, Any]


class Config(NamedTuple):
    src_vocab_size: int
    tgt_vocab_size: int
    embed_size: int = 32
    hidden_size: int = 64
    cell: str = "gru"
    num_layers: int = 1

    def make_cell(self) -> cells_lib.Cell:
        if self.cell not in cells_lib.CELL_NAMES:
            raise ValueError(f"cell={self.cell!r} is not known; accepted: "
                             f"{', '.join(cells_lib.CELL_NAMES)}")
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")
        layers = [cells_lib.by_name(self.cell, self.hidden_size) for _ in range(self.num_layers)]
        return layers[0] if self.num_layers == 1 else recurrence.stack(layers)


@functools.partial(jax.jit, static_argnames=("config",))
def init(key: jax.Array, config: Config) -> Params:
    k_emb, k_rnn, k_out = jax.random.split(key, 3)
    cell = config.make_cell()
    return {
        "src_embed": jax.random.normal(k_emb, (config.src_vocab_size, config.embed_size)),
        "rnn": cell.init(k_rnn, config.embed_size),
        "readout": seq2seq._dense_init(k_out, config.hidden_size, config.tgt_vocab_size),
    }


def lockstep_arrays(batch) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(inputs [B, N], targets [B, N], mask [B, N]) from a translation Batch,
    N = max(S, T): the source and the target (with its <eos>) padded to one length."""
    S, T = batch.src.shape[1], batch.tgt_out.shape[1]
    N = max(S, T)
    inputs = jnp.pad(jnp.asarray(batch.src), ((0, 0), (0, N - S)), constant_values=PAD_ID)
    targets = jnp.pad(jnp.asarray(batch.tgt_out), ((0, 0), (0, N - T)), constant_values=PAD_ID)
    mask = (jnp.arange(N)[None, :] < batch.tgt_lengths[:, None]) * batch.weights[:, None]
    return inputs, targets, mask


def forward(params: Params, config: Config, inputs: jax.Array) -> jax.Array:
    """Logits [B, N, V] for inputs [B, N]: one output per input step."""
    xs = jnp.swapaxes(params["src_embed"][inputs], 0, 1)  # [N, B, E]
    _, hs = recurrence.unroll(config.make_cell(), params["rnn"], xs)
    return jnp.swapaxes(seq2seq._dense(params["readout"], hs), 0, 1)


def loss_fn(params: Params, config: Config, batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Masked mean cross-entropy over the target characters (and <eos>)."""
    inputs, targets, mask = lockstep_arrays(batch)
    logits = forward(params, config, inputs)
    return (losses.cross_entropy(logits, targets, mask),
            {"token_accuracy": losses.accuracy(logits, targets, mask)})


@functools.partial(jax.jit, static_argnames=("config",))
def eval_sums(params: Params, config: Config, batch) -> dict[str, jax.Array]:
    inputs, targets, mask = lockstep_arrays(batch)
    nats, count = losses.cross_entropy_sum(forward(params, config, inputs), targets, mask)
    return {"nats": nats, "count": count}


@functools.partial(jax.jit, static_argnames=("config", "max_len"))
def greedy_decode(params: Params, config: Config, src: jax.Array, src_lengths: jax.Array,
                  max_len: int) -> seq2seq.Decoded:
    """The argmax character at every step, cut at the first <eos>; the input is the
    source followed by <pad> up to max(S, max_len) steps. ``max_len`` outputs at most."""
    del src_lengths  # padding is part of the input: the network decides when to stop
    N = max(src.shape[1], max_len)
    inputs = jnp.pad(src, ((0, 0), (0, N - src.shape[1])), constant_values=PAD_ID)
    logp = seq2seq.token_log_probs(forward(params, config, inputs))[:, :max_len]
    tokens = jnp.argmax(logp, axis=-1).astype(jnp.int32)
    token_logp = jnp.take_along_axis(logp, tokens[..., None], -1)[..., 0]
    ended = jnp.cumsum(tokens == EOS_ID, axis=1)
    before_eos = ended == 0
    live = before_eos | ((ended == 1) & (tokens == EOS_ID))  # steps up to the first <eos>
    out = jnp.where(live, tokens, PAD_ID)
    lengths = jnp.sum(before_eos, axis=1).astype(jnp.int32)
    log_prob = jnp.sum(jnp.where(live, token_logp, 0.0), axis=1)
    attention = jnp.zeros(tokens.shape + (src.shape[1],), jnp.float32)
    return seq2seq.Decoded(out, lengths, log_prob, attention)
