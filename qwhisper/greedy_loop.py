"""The greedy (temperature 0) decode loop on static per-row state: no host sync per token.

DecodingTask._main_loop (decoding.py) is the reference: per token it re-slices and grows the
token history, runs the logit filters on it (~45 small ops, two log_softmax over the vocabulary)
and reads `all rows finished` back to the host. Here the same decisions are made from a few
fixed-shape tensors per row, updated in place:

    buf       (rows, n_ctx + 1) long   the tokens so far (prompt + sampled), written at column n
    n         (1,) long                how many tokens buf holds (the next token's column)
    last      (rows, 1) long           the last token: the next model step's input
    last_ts   (rows,) bool             the last sampled token is a timestamp
    pen_ts    (rows,) bool             the one before it is (or there is only one sampled token)
    ts_val    (rows,) long             the last sampled timestamp (timestamp_begin - 1 if none:
                                       then "> it" allows every timestamp, no has-any flag needed)
    finished  (rows,) bool             the last token is EOT (the row only emits EOT from now on)
    sum_lp    (rows,) float32          sum of the sampled tokens' logprobs, finished rows frozen

One step (`_advance`) = suppress mask + timestamp rules + argmax + logprob + state update,
tensor ops only, no host reads: with the model's one-token step (TextDecoder.forward_at at
device position n - 1) it is captured as ONE CUDA graph per KV buffer set (model._GraphedStep,
stored in its `loop_graphs`) and replayed; "all rows finished" is read back every SYNC_EVERY
steps, with the next step already queued while the host waits for the read (SPECULATE). Extra
steps after every row finished only append EOT and add nothing to sum_lp, so the result equals
the reference loop's. On CPU there is no graph and the check is every step (an extra step would
cost a whole model step).

The first sampled step (SuppressBlank, the first-timestamp limit, the prompt pass that also
gives no_speech_prob) runs through the task's own logit filters; steps after it use `_advance`.
The masks are the reference filters' (same -inf entries, so bit-identical log_softmax inputs).
On CUDA `_advance` is two Triton kernels (quants/triton_greedy.py: chunks of each row reduced,
then combined; FUSED_ADVANCE) instead of ~20 torch kernels: the same tokens, sum_lp to float32
rounding. On an H100 that took tiny.en's sequential 10-minute run from 0.69 to 0.48 s.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

NEG_INF = float("-inf")

# CUDA: replayed steps between two reads of "all rows finished" (one host sync per this many
# tokens; at most this many - 1 wasted steps of ~0.2 ms per window).
SYNC_EVERY = 8
# After the steps before a read, launch one more step before the host waits for the read, so
# that the GPU is busy while the host checks and launches the next steps. Without it each read
# left the GPU idle 0.65-2.4 ms (large-v3 q5_0, 25 windows, H100: 14 reads, ~16 ms of a 0.63-s
# long form; docs/reports/performance.md 20). The extra step is one of the steps that would
# follow anyway, or, once every row has finished, one more EOT that adds nothing to sum_lp.
# None: on for CUDA; True / False force it (True also on the CPU: the tests run its logic there).
SPECULATE: bool | None = None
# CUDA: a step's rules, argmax and state update in two Triton kernels (quants/triton_greedy.py)
# instead of ~20 torch kernels; None once Triton turned out to be missing. Module switch for
# benchmarks and tests.
FUSED_ADVANCE: bool | None = True


def applies(task) -> bool:
    """Whether `task` (a decoding.DecodingTask) can use this loop: greedy at temperature 0, one
    row per window, no n-gram ban (it needs the whole history)."""
    o = task.options
    return (o.temperature == 0 and o.beam_size is None and task.n_group == 1
            and o.no_repeat_ngram_size == 0)


class _State:
    """The per-row state above, for `rows` rows, on `device`."""

    def __init__(self, rows: int, n_ctx: int, device):
        self.buf = torch.zeros(rows, n_ctx + 1, dtype=torch.long, device=device)
        self.n = torch.zeros(1, dtype=torch.long, device=device)
        self.last = torch.zeros(rows, 1, dtype=torch.long, device=device)
        self.last_ts = torch.zeros(rows, dtype=torch.bool, device=device)
        self.pen_ts = torch.zeros(rows, dtype=torch.bool, device=device)
        self.ts_val = torch.zeros(rows, dtype=torch.long, device=device)
        self.finished = torch.zeros(rows, dtype=torch.bool, device=device)
        self.sum_lp = torch.zeros(rows, dtype=torch.float32, device=device)

    def reset(self, tokens: torch.Tensor, eot: int, timestamp_begin: int) -> None:
        """Start from the initial tokens (rows, T0): nothing sampled yet."""
        t0 = tokens.shape[1]
        self.buf[:, :t0].copy_(tokens)
        self.n.fill_(t0)
        self.last.copy_(tokens[:, -1:])
        # before the first sampled token: "last was a timestamp" so that after it pen_ts is
        # True, the reference's rule for a single sampled token
        self.last_ts.fill_(True)
        self.pen_ts.fill_(True)
        self.ts_val.fill_(timestamp_begin - 1)
        torch.eq(tokens[:, -1], eot, out=self.finished)
        self.sum_lp.zero_()


class _Rules:
    """The constant part of the filters: suppressed ids, timestamp_begin, eot."""

    def __init__(self, suppress: torch.Tensor, timestamps: bool, timestamp_begin: int, eot: int):
        n_vocab = suppress.shape[0]
        vocab = torch.arange(n_vocab, device=suppress.device)
        self.suppress = suppress  # (n_vocab,) bool: SuppressTokens (+ <|notimestamps|> with timestamps)
        self.timestamps = timestamps
        self.tb, self.eot = timestamp_begin, eot
        self.vocab = vocab
        self.is_ts = vocab >= timestamp_begin  # (n_vocab,)
        self.text_ids, self.ts_ids = vocab[:eot], vocab[timestamp_begin:]


def _advance(st: _State, rules: _Rules, logits: torch.Tensor) -> None:
    """One step after the first: logits (rows, n_vocab) float32 (masked in place) -> next
    token of every row appended to st, state updated. Tensor ops on fixed shapes only; on
    CUDA two kernels (FUSED_ADVANCE)."""
    global FUSED_ADVANCE
    if FUSED_ADVANCE and logits.is_cuda:
        try:
            from .quants import triton_greedy
        except ImportError as e:
            warnings.warn(f"Triton unavailable ({e}); the greedy step's rules run as torch ops")
            FUSED_ADVANCE = None
        else:
            triton_greedy.advance(st, rules, logits)
            return
    if rules.timestamps:
        # per row, two bounds make the whole mask: text (below EOT) is banned below text_hi,
        # timestamps below ts_lo
        closes = st.last_ts & ~st.pen_ts  # text ts -> ts or EOT next
        text_hi = torch.where(closes, rules.eot, 0)
        # ts ts -> text next (no timestamp); else monotonic: > the last one, >= if closing a pair
        ts_lo = torch.where(st.last_ts & st.pen_ts, rules.vocab.shape[0],
                            torch.where(closes, st.ts_val, st.ts_val + 1))
        logits.masked_fill_(rules.suppress, NEG_INF)
        logits[:, :rules.eot].masked_fill_(rules.text_ids < text_hi[:, None], NEG_INF)
        logits[:, rules.tb:].masked_fill_(rules.ts_ids < ts_lo[:, None], NEG_INF)
        # a timestamp if their total probability beats every single text token
        logprobs = F.log_softmax(logits, dim=-1)
        ts_lp = logprobs[:, rules.tb:].logsumexp(dim=-1)
        max_text = logprobs[:, :rules.tb].max(dim=-1).values
        logits[:, :rules.tb].masked_fill_((ts_lp > max_text)[:, None], NEG_INF)
    else:
        logits.masked_fill_(rules.suppress, NEG_INF)
    _pick(st, rules, logits)


def _pick(st: _State, rules: _Rules, logits: torch.Tensor) -> None:
    """GreedyDecoder.update on the state: argmax, its logprob added unless the row had finished,
    finished rows forced to EOT, the token appended, the timestamp state moved on."""
    nxt = logits.argmax(dim=-1)
    current = F.log_softmax(logits, dim=-1).gather(1, nxt[:, None])[:, 0]
    st.sum_lp.add_(current.masked_fill_(st.finished, 0.0))
    nxt.masked_fill_(st.finished, rules.eot)
    st.buf.index_copy_(1, st.n, nxt[:, None])
    st.n.add_(1)
    st.last.copy_(nxt[:, None])
    is_ts = nxt >= rules.tb
    st.pen_ts.copy_(st.last_ts)
    st.last_ts.copy_(is_ts)
    torch.where(is_ts, nxt, st.ts_val, out=st.ts_val)
    torch.eq(nxt, rules.eot, out=st.finished)


class _LoopGraph:
    """Static state + rules for one KV buffer set and one filter layout, and the CUDA graph of
    model step + _advance on them (captured after a first eager step that compiles kernels)."""

    def __init__(self, rows: int, n_ctx: int, n_vocab: int, timestamps: bool, tb: int, eot: int, device):
        self.state = _State(rows, n_ctx, device)
        self.rules = _Rules(torch.zeros(n_vocab, dtype=torch.bool, device=device), timestamps, tb, eot)
        self.positions = torch.zeros(1, dtype=torch.long, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.failed = False  # capture failed once: this buffer set's loop runs eagerly
        self._keep: list[torch.Tensor] = []

    def _step(self, decoder, cache) -> None:
        torch.sub(self.state.n, 1, out=self.positions)  # the last token's position
        logits = decoder.forward_at(self.state.last, self.positions, cache)[:, 0]  # (rows, n_vocab)
        _advance(self.state, self.rules, logits)

    def step(self, decoder, cache) -> None:
        """One step: a replay, or (first time) an eager step on a side stream, then the capture
        (recorded, not run). A failed capture leaves `failed` set and the step done."""
        if self.graph is not None:
            self.graph.replay()
            return
        dev = self.positions.device
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):  # compiles kernels, creates handles: a real step
            self._step(decoder, cache)
        torch.cuda.current_stream(dev).wait_stream(side)
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._step(decoder, cache)
        except RuntimeError as e:  # an op that cannot be captured: stay correct, go eager
            warnings.warn(f"CUDA graph capture of the greedy loop failed ({e}); decoding eagerly")
            self.failed = True
            return
        self.graph = graph
        from .quants import triton_ops

        self._keep = triton_ops.scratch_buffers()  # the scratch buffers the graph writes


def _loop_graph(task, inference, rules_key) -> _LoopGraph | None:
    """The _LoopGraph of this cache's buffer set (created on first use), or None where steps
    can't be graphed (CPU and caches beyond GRAPH_MAX_ROWS have no persistent buffers; graphs
    off; capture failed)."""
    cache = inference.cache
    st = getattr(cache, "_graphed", None)
    decoder = getattr(task.model, "decoder", None)
    if (st is None or st.failed or decoder is None or not getattr(decoder, "cuda_graphs", False)
            or not hasattr(st, "loop_graphs")):
        return None
    lg = st.loop_graphs.get(rules_key)
    if lg is not None and lg.failed:
        return None
    if lg is None:
        rows = st.self_k[0].shape[0]
        lg = st.loop_graphs[rules_key] = _LoopGraph(rows, task.n_ctx, task.model.dims.n_vocab, *rules_key,
                                                    device=st.self_k[0].device)
    return lg


def _suppress_mask(task, n_vocab: int, device) -> torch.Tensor:
    """(n_vocab,) bool: the ids SuppressTokens and ApplyTimestampRules mask at every step."""
    from .decoding import ApplyTimestampRules, SuppressTokens

    mask = torch.zeros(n_vocab, dtype=torch.bool, device=device)
    for f in task.logit_filters:
        if isinstance(f, SuppressTokens):
            mask[torch.tensor(f.suppress_tokens, dtype=torch.long, device=device)] = True
        elif isinstance(f, ApplyTimestampRules):
            mask[f.no_timestamps] = True
    return mask


def main_loop(task, inference, tokens: torch.Tensor, graphs: bool = True
              ) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """DecodingTask._main_loop for greedy decoding at T = 0 (see `applies`): tokens (rows, T0)
    initial tokens -> (tokens (rows, T0 + steps), sum_logprobs (rows,), no_speech_probs).
    graphs=False: never a CUDA graph (the eager form of the same steps)."""
    from .decoding import ApplyTimestampRules

    tok = task.tokenizer
    rows, t0 = tokens.shape
    device = tokens.device
    eot, tb = tok.eot, tok.timestamp_begin
    timestamps = any(isinstance(f, ApplyTimestampRules) for f in task.logit_filters)
    # the reference runs sample_len steps, stopping once the history exceeds n_ctx tokens
    n_steps = min(task.sample_len, task.n_ctx - t0 + 1)

    # step 0 on the ordinary path: the prompt pass, no_speech_prob, the first-token filters
    logits = inference.logits(tokens, [task.sot_index, -1])  # (rows, 2, n_vocab)
    no_speech_probs = logits[:, 0].float().softmax(dim=-1)[:, tok.no_speech].tolist()
    logits = logits[:, -1].float()
    for logit_filter in task.logit_filters:
        logit_filter.apply(logits, tokens)

    lg = _loop_graph(task, inference, (timestamps, tb, eot)) if graphs else None
    if lg is not None:
        st, rules = lg.state, lg.rules
        rules.suppress.copy_(_suppress_mask(task, rules.suppress.shape[0], device))
    else:
        st = _State(rows, task.n_ctx, device)
        rules = _Rules(_suppress_mask(task, logits.shape[-1], device), timestamps, tb, eot)
    st.reset(tokens, eot, tb)
    _pick(st, rules, logits)
    done = 1

    cache = inference.cache

    def one_step(done: int) -> None:
        if lg is not None and not lg.failed:
            lg.step(task.model.decoder, cache)
            cache.offset = t0 + done  # all tokens but the new last one are in the cache
        else:
            logits = inference.logits(st.buf[:, :t0 + done])[:, -1].float()  # feeds the last token
            _advance(st, rules, logits)

    # "all rows finished" is read back every `check` steps: each read is a host sync on CUDA; on
    # the CPU it is free and a step past the end is a whole model step
    check = SYNC_EVERY if lg is not None or device.type == "cuda" else 1
    speculate = SPECULATE if SPECULATE is not None else device.type == "cuda"
    if done < n_steps and not bool(st.finished.all()):
        # SPECULATE: the read is copied into `flag` in stream order, then one more step is queued
        # before the host waits for the copy (`ready`); check - 1 steps follow that extra step
        cuda = device.type == "cuda"
        flag = torch.empty((), dtype=torch.bool, pin_memory=cuda) if speculate else None
        ready = torch.cuda.Event() if speculate and cuda else None
        steps = check
        while done < n_steps:
            for _ in range(min(steps, n_steps - done)):
                one_step(done)
                done += 1
            if done >= n_steps:
                break
            if not speculate:
                if bool(st.finished.all()):
                    break
                continue
            flag.copy_(st.finished.all(), non_blocking=True)
            if ready is not None:
                ready.record()
            one_step(done)
            done += 1
            if ready is not None:
                ready.synchronize()
            if bool(flag):
                break
            steps = check - 1
    return st.buf[:, :t0 + done].clone(), st.sum_lp.clone(), no_speech_probs


__all__ = ["SPECULATE", "SYNC_EVERY", "applies", "main_loop"]
