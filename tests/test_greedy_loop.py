"""greedy_loop.py: the static-state greedy loop gives the reference loop's results
(DecodingTask._main_loop with fast_greedy off): tokens, sum logprobs, no_speech_prob.

Scripted logits (a fake model whose next-token logits are a seeded function of row, position
and last token) drive every timestamp rule (pairs, monotonic, initial limit, forced timestamp),
rows finishing at different steps or never, and the context limit; then tiny.en on real speech
(a batch of four windows as qwhisper.batched decodes them), with and without timestamps and with
a prompt; on CUDA the graph replays equal the eager loop and the reference."""

from __future__ import annotations

import wave
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import LIBRIVOX_DIR, SHARED_MODEL_Q5_1, SPEECH_DIR, need

from qwhisper import greedy_loop
from qwhisper.decoding import ApplyTimestampRules, DecodingOptions, DecodingTask


def _run(model, tok, features, options, fast: bool, graphs: bool = True):
    task = DecodingTask(model, tok, options)
    task.fast_greedy = fast
    if fast and not graphs:
        task._main_loop = lambda inference, decoder, tokens: greedy_loop.main_loop(
            task, inference, tokens, graphs=False)
    return task.run(features)


def _same(ref, new, rel=1e-6):
    assert [r.tokens for r in new] == [r.tokens for r in ref]
    assert [r.no_speech_prob for r in new] == pytest.approx([r.no_speech_prob for r in ref], rel=rel)
    assert [r.avg_logprob for r in new] == pytest.approx([r.avg_logprob for r in ref], rel=rel, abs=1e-6)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the test machine's cores are shared: no oversubscription
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tok():
    from qwhisper.ggml_file import read_ggml
    from qwhisper.tokenizer import Tokenizer

    return Tokenizer.from_ggml(read_ggml(need(SHARED_MODEL_Q5_1)))


# --- scripted logits -----------------------------------------------------------------------------


class Scripted:
    """A decoder whose logits at (row, position) are a seeded function of (row, position, token
    at that position): both loops see the same logits for the same history. Mass goes to a few
    text tokens, the first 40 timestamps (scaled so their total often beats the best text token)
    and EOT, whose boost grows with the position at a rate of its row (some rows never end)."""

    def __init__(self, tok, n_ctx: int = 448, seed: int = 0):
        self.dims = SimpleNamespace(n_text_ctx=n_ctx, n_audio_ctx=1500, n_audio_state=2, n_vocab=tok.n_vocab)
        self.device = torch.device("cpu")
        self.tb, self.eot, self.seed = tok.timestamp_begin, tok.eot, seed
        self.text = torch.tensor(tok.encode(" the cat sat on a mat and then it ran away"))
        self._memo: dict[tuple[int, int, int], torch.Tensor] = {}  # both loops ask for the same rows

    def new_kv_cache(self, audio_features, n_group=1):
        return SimpleNamespace(offset=0, reorder=lambda index: None)  # beams: logits follow the tokens

    def _row(self, r: int, pos: int, token: int) -> torch.Tensor:
        if (r, pos, token) in self._memo:
            return self._memo[r, pos, token]
        g = torch.Generator().manual_seed(zlib.crc32(f"{self.seed} {r} {pos} {token}".encode()))
        x = torch.randn(self.dims.n_vocab, generator=g)
        x[self.text] += 6 + 3 * torch.rand(len(self.text), generator=g)
        x[self.tb: self.tb + 40] += 4 + (1 + r % 3) * torch.rand(40, generator=g)
        x[self.eot] += 2 + pos * (0.0, 0.05, 0.15, 0.3)[r % 4]
        self._memo[r, pos, token] = x
        return x

    def logits(self, tokens, cache, logit_positions=None):
        b, t = tokens.shape
        out = torch.stack([torch.stack([self._row(r, cache.offset + j, int(tokens[r, j])) for j in range(t)])
                           for r in range(b)])
        cache.offset += t
        return out if logit_positions is None else out[:, list(logit_positions)]


class CountForced(ApplyTimestampRules):
    """The reference rules, counting the rows where a timestamp was forced after the first step
    (all of [:timestamp_begin], EOT included, masked though some was allowed before)."""

    forced = 0

    def apply(self, logits, tokens):
        before = torch.isfinite(logits[:, :self.timestamp_begin]).any(dim=-1)
        super().apply(logits, tokens)
        after = torch.isfinite(logits[:, :self.timestamp_begin]).any(dim=-1)
        if tokens.shape[1] > self.sample_begin:
            CountForced.forced += int((before & ~after).sum())


@pytest.mark.parametrize("seed", range(3))
def test_scripted_logits_every_timestamp_rule(tok, seed, monkeypatch):
    model = Scripted(tok, seed=seed)
    features = torch.zeros(8, 1500, 2)
    options = DecodingOptions(sample_len=60, max_initial_timestamp=0.2)  # first ts <= index 10
    monkeypatch.setattr("qwhisper.decoding.ApplyTimestampRules", CountForced)
    CountForced.forced = 0
    ref = _run(model, tok, features, options, fast=False)
    assert CountForced.forced > 0  # the forced-timestamp rule changed some step
    new = _run(model, tok, features, options, fast=True)
    _same(ref, new)
    monkeypatch.setattr(greedy_loop, "SPECULATE", True)  # a read every step, one step queued after it
    _same(ref, _run(model, tok, features, options, fast=True))
    # the reference's output does exercise the grammar
    tb = tok.timestamp_begin
    lengths = {len(r.tokens) for r in ref}
    assert len(lengths) >= 3 and max(lengths) == 60  # rows end at different steps, some never
    for r in ref:
        ts = [t for t in r.tokens if t >= tb]
        assert r.tokens[0] >= tb and r.tokens[0] - tb <= 10  # initial timestamp limit
        assert ts == sorted(ts)  # monotonic
    pairs = sum(a >= tb and b >= tb for r in ref for a, b in zip(r.tokens[1:], r.tokens[2:]))
    assert pairs > 0


@pytest.mark.parametrize("speculate", [None, True])
def test_scripted_without_timestamps_prompt_and_context_limit(tok, speculate, monkeypatch):
    """n_ctx 64: 32 steps at most; a 31-token prompt and a 10-token prefix leave fewer (the
    reference stops once the history would exceed n_ctx), with and without the step queued
    after each read of "all finished" (SPECULATE)."""
    monkeypatch.setattr(greedy_loop, "SPECULATE", speculate)
    model = Scripted(tok, n_ctx=64, seed=7)
    features = torch.zeros(4, 1500, 2)
    prompt, prefix = list(range(100, 131)), list(range(200, 210))
    for options in (DecodingOptions(without_timestamps=True),
                    DecodingOptions(prompt=prompt, prefix=prefix),
                    DecodingOptions(prompt=prompt, prefix=prefix, without_timestamps=True,
                                    suppress_blank=False, suppress_tokens="")):
        ref = _run(model, tok, features, options, fast=False)
        new = _run(model, tok, features, options, fast=True)
        _same(ref, new)
        if options.prompt:
            limit = 64 - DecodingTask(model, tok, options).sample_begin + 1
            assert limit < 32 and max(len(r.tokens) for r in ref) == limit


def test_used_only_where_it_applies(tok, monkeypatch):
    calls = []
    real = greedy_loop.main_loop
    monkeypatch.setattr(greedy_loop, "main_loop", lambda *a, **k: calls.append(1) or real(*a, **k))
    model = Scripted(tok, seed=3)
    features = torch.zeros(1, 1500, 2)
    expected = {(): 1, (("beam_size", 2),): 0, (("temperature", 0.5),): 0, (("no_repeat_ngram_size", 3),): 0}
    for kw, n in expected.items():
        calls.clear()
        DecodingTask(model, tok, DecodingOptions(sample_len=8, **dict(kw))).run(features)
        assert len(calls) == n, kw


# --- real speech ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_en():
    from qwhisper.transcribe import WhisperModel

    try:
        return WhisperModel("tiny.en", "cpu")
    except Exception as e:  # noqa: BLE001 -- no tiny.en weights on this machine
        pytest.skip(f"tiny.en not available: {e}")


def _wav(path) -> np.ndarray:
    """A 16-kHz mono s16 wav as load_audio returns it (s16 / 32768), without PyAV (the GPU
    machine has none)."""
    with wave.open(str(need(path))) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2), path
        return np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / np.float32(32768.0)


CPU_FILES = [SPEECH_DIR / "jfk.wav", SPEECH_DIR / "1089-134691-0000.wav",
             LIBRIVOX_DIR / "sense_and_sensibility_01_austen_64kb-0870.wav",
             LIBRIVOX_DIR / "sense_and_sensibility_01_austen_64kb-0920.wav"]
GPU_FILES = [SPEECH_DIR / "jfk.wav", SPEECH_DIR / "1089-134691-0000.wav",
             SPEECH_DIR / "1221-135766-0001.wav", SPEECH_DIR / "1089-134686-0000.wav"]


def _windows(wm, paths, device="cpu") -> torch.Tensor:
    from qwhisper.audio import N_FRAMES, log_mel_spectrogram_torch, pad_or_trim

    mels = [pad_or_trim(log_mel_spectrogram_torch(torch.from_numpy(_wav(p)), wm.mel_filters), N_FRAMES)
            for p in paths]
    return torch.stack(mels).to(device)


OPTIONS = [DecodingOptions(), DecodingOptions(without_timestamps=True),
           DecodingOptions(prompt="Elinor and Marianne went to Barton.")]


@pytest.fixture(scope="module")
def speech_features(tiny_en):
    return tiny_en.model.embed_audio(_windows(tiny_en, CPU_FILES))


@pytest.mark.parametrize("options", OPTIONS, ids=["timestamps", "no_timestamps", "prompt"])
def test_speech_batch_equals_reference(tiny_en, speech_features, options):
    m, tok = tiny_en.model, tiny_en.tokenizer
    ref = _run(m, tok, speech_features, options, fast=False)
    assert all(len(r.tokens) > 3 for r in ref) and "fellow Americans" in ref[0].text
    new = _run(m, tok, speech_features, options, fast=True)
    _same(ref, new)
    one = _run(m, tok, speech_features[2:3], options, fast=True)  # a window alone
    _same(ref[2:3], one, rel=1e-4)


class EagerGraph(greedy_loop._LoopGraph):
    """The graphed step's body (device position n - 1, model step on the static state, _advance)
    run eagerly on the CPU, with "all finished" read every SYNC_EVERY steps as on CUDA."""

    def step(self, decoder, cache):
        self._step(decoder, cache)


def test_graph_step_body_on_cpu(tiny_en, speech_features, monkeypatch):
    m, tok = tiny_en.model, tiny_en.tokenizer
    made = []

    def loop_graph(task, inference, key):
        made.append(EagerGraph(inference.cache.batch_size, task.n_ctx, m.dims.n_vocab, *key, device="cpu"))
        return made[-1]

    # sample_len 24: two of the four rows (26 and 28 tokens) are cut, two finish (8, 23); at the
    # default all finish, the loop runs past the last EOT to its next check (SPECULATE: one more
    # step, queued before each read of "all finished" as on CUDA)
    for options in (DecodingOptions(sample_len=24), DecodingOptions()):
        monkeypatch.setattr(greedy_loop, "_loop_graph", greedy_loop._loop_graph)
        ref = _run(m, tok, speech_features, options, fast=False)
        monkeypatch.setattr(greedy_loop, "_loop_graph", loop_graph)
        for speculate in (None, True):
            monkeypatch.setattr(greedy_loop, "SPECULATE", speculate)
            new = _run(m, tok, speech_features, options, fast=True)
            _same(ref, new)
        assert made and len({len(r.tokens) for r in ref}) > 1


@pytest.mark.cuda
def test_cuda_graph_replays_equal_eager_and_reference():
    """Graph replays (captured in the first window, replayed in the next) give the tokens and
    logprob sums of the eager new loop and of the reference loop on the same (graphed) steps."""
    from qwhisper.transcribe import WhisperModel

    wm = WhisperModel(need(SHARED_MODEL_Q5_1), "cuda")
    m, tok = wm.model, wm.tokenizer
    features = m.embed_audio(_windows(wm, GPU_FILES, "cuda"))
    for options in OPTIONS:
        for batch in (features[:1], features[1:2], features):  # 1 row (fused step), 4 rows
            ref = _run(m, tok, batch, options, fast=False)
            eager = _run(m, tok, batch, options, fast=True, graphs=False)
            graphed = _run(m, tok, batch, options, fast=True)
            # tokens equal; average log-probs to 1e-2 relative. On an H100 the two loops gave
            # 1.2e-5 on one window and 3.2e-3 on one row of a 4-window batch (same tokens): the
            # loops run the float32 log-softmax on differently laid-out logits, and a near tie of
            # the forced-timestamp rule (timestamp mass vs the best text token) can then mask a
            # step differently without changing its argmax. Not yet traced further (no device time).
            _same(ref, eager, rel=1e-2)
            _same(ref, graphed, rel=1e-2)
    sets = [st for sets in m.decoder._graphed.values() for st in sets]
    graphs = [lg for st in sets for lg in st.loop_graphs.values()]
    assert graphs and all(lg.graph is not None for lg in graphs)
