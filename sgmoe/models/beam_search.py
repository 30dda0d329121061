"""Greedy and beam-search decoding with static shapes (keras.ops only).

Both searches drive an incremental decoder through a `step_fn`:

    logits, state = step_fn(token_ids, state)

with `token_ids` [N] int32 the tokens chosen at the previous step (the start
id at the first), `state` any nested structure of tensors whose leading axis
is N, and `logits` [N, vocabulary]. The decoder carries its own recurrent
state, so a step costs one token per row, not a pass over the prefix.

Everything runs inside one `keras.ops.while_loop` of at most `max_length`
steps, with fixed shapes ([batch, (beam,) max_length] token buffers), so the
search compiles with XLA (`tf.function(jit_compile=True)`, `jax.jit`). The
loop stops early once every sequence has ended (greedy) or once no live
hypothesis can beat the finished ones (beam).

Scores are natural-log probabilities of the model's full softmax, so that
they equal the sum of teacher-forced log-probabilities of the returned
tokens. The padding id is never generated (its log-probability is set to a
large negative value before the choice, not renormalised away).
"""

from keras import ops
from keras import tree

# Log-probability of impossible hypotheses (empty beam slots, the padding
# id). Finite, so that sums and divisions of it never give NaN.
NEGATIVE_SCORE = -1e9


def length_penalty_factor(length, alpha):
    """GNMT's length penalty lp(Y) = ((5 + |Y|) / 6) ** alpha.

    Wu et al. 2016, "Google's Neural Machine Translation System", §7: a
    hypothesis Y is scored log P(Y | X) / lp(Y). alpha = 0 gives the raw
    log-probability; larger alpha favours longer hypotheses. |Y| counts the
    end token.

    Args:
        length: int or int tensor, |Y|.
        alpha: float >= 0.

    Returns:
        float32 tensor of `length`'s shape.
    """
    return ops.power((5.0 + ops.cast(length, "float32")) / 6.0,
                     float(alpha))


def _log_probabilities(logits, padding_id):
    log_probs = ops.log_softmax(ops.cast(logits, "float32"), axis=-1)
    if padding_id is None:
        return log_probs
    vocabulary = ops.arange(ops.shape(log_probs)[-1], dtype="int32")
    return ops.where(ops.equal(vocabulary, padding_id), NEGATIVE_SCORE,
                     log_probs)


def _write_column(buffer, step, values):
    """buffer[..., step] = values, as a select (static shapes)."""
    length = ops.shape(buffer)[-1]
    column = ops.equal(ops.arange(length, dtype="int32"), step)
    return ops.where(column, ops.expand_dims(values, -1), buffer)


def _check_search_arguments(max_length, beam_width=1):
    if isinstance(max_length, bool) or not isinstance(max_length, int) or (
            max_length < 1):
        raise ValueError(
            "`max_length` must be a positive integer (the static length of "
            f"the output), received max_length={max_length!r}.")
    if isinstance(beam_width, bool) or not isinstance(beam_width, int) or (
            beam_width < 1):
        raise ValueError(
            "`beam_width` must be a positive integer, received "
            f"beam_width={beam_width!r}.")


def greedy_search(step_fn, initial_state, batch_size, max_length, bos_id,
                  eos_id, padding_id=0):
    """Greedy decoding: the most probable token at every step.

    Args:
        step_fn: `(token_ids [batch], state) -> (logits [batch, V], state)`.
        initial_state: nested tensors with leading axis `batch_size`.
        batch_size: rows decoded at once.
        max_length: static maximum output length (tokens, end included).
        bos_id: the token fed at the first step.
        eos_id: the token that ends a sequence.
        padding_id: fills the positions after the end; never generated.

    Returns:
        A dict: "token_ids" [batch, max_length] int32 (the end token
        included, padding after it), "log_probs" [batch] (log P of those
        tokens) and "lengths" [batch] (tokens before the padding).
    """
    _check_search_arguments(max_length)
    flat_state = tree.flatten(initial_state)

    def cond(step, tokens, last, finished, log_probs, *state):
        return ops.logical_and(ops.less(step, max_length),
                               ops.logical_not(ops.all(finished)))

    def body(step, tokens, last, finished, log_probs, *state):
        logits, state = step_fn(
            last, tree.pack_sequence_as(initial_state, list(state)))
        step_log_probs = _log_probabilities(logits, padding_id)
        chosen = ops.cast(ops.argmax(step_log_probs, axis=-1), "int32")
        chosen = ops.where(finished, padding_id, chosen)
        chosen_log_prob = ops.take_along_axis(
            step_log_probs, ops.expand_dims(chosen, -1), axis=-1)[:, 0]
        log_probs = log_probs + ops.where(finished, 0.0, chosen_log_prob)
        tokens = _write_column(tokens, step, chosen)
        finished = ops.logical_or(finished, ops.equal(chosen, eos_id))
        return (step + 1, tokens, chosen, finished, log_probs,
                *tree.flatten(state))

    loop_vars = (
        ops.convert_to_tensor(0, "int32"),
        ops.full((batch_size, max_length), padding_id, "int32"),
        ops.full((batch_size,), bos_id, "int32"),
        ops.zeros((batch_size,), "bool"),
        ops.zeros((batch_size,), "float32"),
        *flat_state,
    )
    _, tokens, _, _, log_probs, *_ = ops.while_loop(cond, body, loop_vars)
    return {
        "token_ids": tokens,
        "log_probs": log_probs,
        "lengths": _lengths(tokens, padding_id),
    }


def _lengths(tokens, padding_id):
    return ops.sum(ops.cast(ops.not_equal(tokens, padding_id), "int32"),
                   axis=-1)


def _gather_beams(values, beam_indices):
    """values [batch, beams, ...] at beam_indices [batch, n] -> [batch, n,
    ...]."""
    batch, beams = ops.shape(values)[0], ops.shape(values)[1]
    rows = ops.reshape(
        beam_indices + ops.expand_dims(
            ops.arange(batch, dtype="int32") * beams, 1), (-1,))
    flat = ops.reshape(values, (-1,) + tuple(ops.shape(values)[2:]))
    gathered = ops.take(flat, rows, axis=0)
    return ops.reshape(gathered, tuple(ops.shape(beam_indices))
                       + tuple(ops.shape(values)[2:]))


def beam_search(step_fn, initial_state, batch_size, beam_width, max_length,
                bos_id, eos_id, length_penalty=0.0, padding_id=0,
                return_all_beams=False):
    """Beam search with GNMT's length penalty.

    Wu et al. 2016, §7. Each batch element keeps `beam_width` live
    hypotheses. At every step all beam_width * V extensions are scored by
    their total log-probability and the best `beam_width` kept; an
    extension that ends with `eos_id` moves to the element's finished list
    with score log P(Y | X) / lp(Y) (`length_penalty_factor`), and its live
    slot is emptied, to be refilled by the next step's extensions of the
    other live hypotheses (OpenNMT-style). With beam_width = 1 this is exactly
    greedy decoding, whatever `length_penalty`.

    The search of an element stops when no live hypothesis is left, or when
    its finished list is full and the best live hypothesis cannot beat the
    worst finished one even at `max_length` (log-probabilities only fall
    and lp only grows, so max live log P / lp(max_length) bounds what it
    can reach). An element with no finished hypothesis after `max_length`
    steps returns its live ones (no end token), scored at lp(max_length).

    GNMT's coverage penalty (beta) is not implemented.

    Args:
        step_fn: `(token_ids [batch * beam_width], state) -> (logits [batch
            * beam_width, V], state)`. Row b * beam_width + j is beam j of
            batch element b; anything `step_fn` closes over per row (e.g.
            encoder outputs) must be repeated beam_width times the same way
            (`ops.repeat(x, beam_width, axis=0)`).
        initial_state: nested tensors with leading axis `batch_size`;
            repeated beam_width times here.
        batch_size: batch elements decoded at once.
        beam_width: hypotheses kept per element.
        max_length: static maximum output length (tokens, end included).
        bos_id: the token fed at the first step.
        eos_id: the token that ends a hypothesis.
        length_penalty: alpha of `length_penalty_factor` (0: raw
            log-probability).
        padding_id: fills positions after the end; never generated.
        return_all_beams: return every finished slot, best first, instead
            of the best hypothesis.

    Returns:
        A dict: "token_ids" [batch, max_length] int32 ([batch, beam_width,
        max_length] with `return_all_beams`), "scores" (log P / lp; empty
        slots score `NEGATIVE_SCORE`), "log_probs" (log P) and "lengths",
        each [batch] ([batch, beam_width]).
    """
    _check_search_arguments(max_length, beam_width)
    beams = beam_width
    state = tree.map_structure(lambda s: ops.repeat(s, beams, axis=0),
                               initial_state)
    alpha = float(length_penalty)
    if alpha < 0:
        raise ValueError(
            "`length_penalty` must be >= 0, received "
            f"length_penalty={length_penalty!r}.")
    max_penalty = length_penalty_factor(max_length, alpha)
    half_negative = NEGATIVE_SCORE / 2

    def cond(step, alive_tokens, alive_log_probs, last, finished_tokens,
             finished_scores, finished_log_probs, *flat):
        no_live = ops.all(ops.less_equal(alive_log_probs, half_negative),
                          axis=1)
        full = ops.all(ops.greater(finished_scores, half_negative), axis=1)
        best_reachable = ops.max(alive_log_probs, axis=1) / max_penalty
        settled = ops.logical_and(
            full, ops.less(best_reachable, ops.min(finished_scores, axis=1)))
        done = ops.logical_or(no_live, settled)
        return ops.logical_and(ops.less(step, max_length),
                               ops.logical_not(ops.all(done)))

    def body(step, alive_tokens, alive_log_probs, last, finished_tokens,
             finished_scores, finished_log_probs, *flat):
        logits, new_state = step_fn(
            ops.reshape(last, (-1,)), tree.pack_sequence_as(state, list(flat)))
        step_log_probs = _log_probabilities(logits, padding_id)
        vocabulary = ops.shape(step_log_probs)[-1]
        candidates = ops.reshape(
            ops.expand_dims(alive_log_probs, -1)
            + ops.reshape(step_log_probs, (batch_size, beams, vocabulary)),
            (batch_size, beams * vocabulary))
        top_log_probs, top_indices = ops.top_k(candidates, beams)
        top_indices = ops.cast(top_indices, "int32")
        parent = top_indices // vocabulary  # [batch, beams]
        token = top_indices % vocabulary
        tokens = _write_column(_gather_beams(alive_tokens, parent), step,
                               token)
        live = ops.greater(top_log_probs, half_negative)
        ended = ops.logical_and(live, ops.equal(token, eos_id))

        # Finished list: the best `beams` of the old and the new ones.
        new_scores = ops.where(
            ended, top_log_probs / length_penalty_factor(step + 1, alpha),
            NEGATIVE_SCORE)
        all_scores = ops.concatenate([finished_scores, new_scores], axis=1)
        finished_scores, pick = ops.top_k(all_scores, beams)
        pick = ops.cast(pick, "int32")
        finished_log_probs = ops.take_along_axis(
            ops.concatenate([finished_log_probs,
                             ops.where(ended, top_log_probs, NEGATIVE_SCORE)],
                            axis=1), pick, axis=1)
        finished_tokens = _gather_beams(
            ops.concatenate([finished_tokens, tokens], axis=1), pick)

        alive_log_probs = ops.where(
            ops.logical_and(live, ops.logical_not(ended)), top_log_probs,
            NEGATIVE_SCORE)
        flat_new_state = [
            ops.reshape(_gather_beams(
                ops.reshape(s, (batch_size, beams) + tuple(s.shape[1:])),
                parent), (batch_size * beams,) + tuple(s.shape[1:]))
            for s in tree.flatten(new_state)]
        return (step + 1, tokens, alive_log_probs, token, finished_tokens,
                finished_scores, finished_log_probs, *flat_new_state)

    first_beam_only = ops.concatenate([
        ops.zeros((batch_size, 1), "float32"),
        ops.full((batch_size, beams - 1), NEGATIVE_SCORE, "float32")], axis=1)
    loop_vars = (
        ops.convert_to_tensor(0, "int32"),
        ops.full((batch_size, beams, max_length), padding_id, "int32"),
        first_beam_only,
        ops.full((batch_size, beams), bos_id, "int32"),
        ops.full((batch_size, beams, max_length), padding_id, "int32"),
        ops.full((batch_size, beams), NEGATIVE_SCORE, "float32"),
        ops.full((batch_size, beams), NEGATIVE_SCORE, "float32"),
        *tree.flatten(state),
    )
    (_, alive_tokens, alive_log_probs, _, finished_tokens, finished_scores,
     finished_log_probs, *_) = ops.while_loop(cond, body, loop_vars)

    # Elements that finished nothing return their live hypotheses.
    alive_scores, order = ops.top_k(alive_log_probs / max_penalty, beams)
    order = ops.cast(order, "int32")
    alive_tokens = _gather_beams(alive_tokens, order)
    alive_log_probs = ops.take_along_axis(alive_log_probs, order, axis=1)
    has_finished = ops.any(ops.greater(finished_scores, half_negative),
                           axis=1, keepdims=True)
    tokens = ops.where(ops.expand_dims(has_finished, -1), finished_tokens,
                       alive_tokens)
    scores = ops.where(has_finished, finished_scores, alive_scores)
    log_probs = ops.where(has_finished, finished_log_probs, alive_log_probs)
    if not return_all_beams:
        tokens, scores, log_probs = tokens[:, 0], scores[:, 0], log_probs[:, 0]
    return {
        "token_ids": tokens,
        "scores": scores,
        "log_probs": log_probs,
        "lengths": _lengths(tokens, padding_id),
    }
