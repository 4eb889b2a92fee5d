"""Decoding of 30-second windows: greedy / sampling / beam search, logit filters, timestamp rules.

openai/whisper's structure (whisper/decoding.py), as small strategy objects wired together in
`DecodingTask`:

    Inference       the decoder forward pass with a KV cache (model.new_kv_cache / model.logits)
    TokenDecoder    how the next token is chosen: GreedyDecoder (argmax, or sampling at T > 0),
                    BeamSearchDecoder
    SequenceRanker  which finished candidate of a group is returned (length-normalised logprob)
    LogitFilter     rules applied to the next-token logits: SuppressBlank, SuppressTokens,
                    ApplyTimestampRules

A batch is B windows (B mels -> B results); with best_of/beam_size each window becomes a group
of n_group rows, so the decoder sees B * n_group rows. The filters are written on whole (rows,
vocab) tensors, without a Python loop over rows, so that they stay on the device.

Model interface used (qwhisper.model): model.dims (n_text_ctx, n_audio_ctx, n_audio_state, n_vocab),
model.device, model.embed_audio(mel (B, n_mels, 3000)) -> (B, n_audio_ctx, n_audio_state),
model.new_kv_cache(audio_features) -> cache with .offset and .reorder(index),
model.logits(tokens (B, T) int64, cache) -> (B, T, n_vocab) float32 (feeds T new tokens).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from . import greedy_loop
from .errors import QWhisperError
from .tokenizer import TIME_PRECISION, Tokenizer, normalize_language

NEG_INF = float("-inf")


class OptionError(QWhisperError, ValueError):
    """A decoding or transcription option with a bad value (the message names the option)."""


@dataclass(frozen=True)
class DecodingOptions:
    # "transcribe" (X -> X) or "translate" (X -> English); multilingual models only
    task: str = "transcribe"
    # language of the audio; None = detect it (multilingual models), English for .en models
    language: str | None = None

    # sampling
    temperature: float = 0.0  # 0: argmax (or beam search); > 0: sample from softmax(logits / T)
    sample_len: int | None = None  # most tokens to sample; None = n_text_ctx // 2 (224)
    best_of: int | None = None  # independent samples per window at T > 0; the best is kept
    beam_size: int | None = None  # beams of beam search at T == 0; None = greedy
    patience: float | None = None  # beam search patience (arxiv:2204.05424); None = 1.0
    # alpha of Google NMT's length penalty when ranking candidates; None = divide by length
    length_penalty: float | None = None
    seed: int = 0  # seeds the sampling generator, so T > 0 decodes are reproducible

    # text (or token ids) given to the decoder before the window's own tokens
    prompt: str | Sequence[int] | None = None  # previous context, after <|startofprev|>
    prefix: str | Sequence[int] | None = None  # forced start of this window's text

    # token ids to suppress (list or "1,2,3"); -1 stands for tokenizer.non_speech_tokens
    suppress_tokens: str | Sequence[int] | None = "-1"
    suppress_blank: bool = True  # no blank (" " or <|endoftext|>) as the first sampled token
    # > 0: a token that would repeat an n-gram of this size already sampled in the window is
    # banned (faster-whisper's no_repeat_ngram_size; a guard against looping hallucinations)
    no_repeat_ngram_size: int = 0

    # timestamps
    without_timestamps: bool = False  # add <|notimestamps|>: text tokens only
    max_initial_timestamp: float | None = 1.0  # the first timestamp is at most this (seconds)


@dataclass(frozen=True)
class DecodingResult:
    language: str | None
    tokens: list[int] = field(default_factory=list)  # sampled tokens, timestamps included, no EOT
    text: str = ""
    avg_logprob: float = math.nan  # sum of sampled-token logprobs / (len(tokens) + 1)
    no_speech_prob: float = math.nan  # P(<|nospeech|>) at the <|startoftranscript|> position
    temperature: float = math.nan
    compression_ratio: float = math.nan  # len(text) / len(zlib(text)), bytes
    language_probs: dict[str, float] | None = None


def compression_ratio(text: str) -> float:
    """UTF-8 bytes over zlib-compressed bytes: high (> 2.4) means a repetitive transcript."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


# --- inference -----------------------------------------------------------------------------------

class Inference:
    """The decoder forward pass with a KV cache; feeds only the tokens the cache has not seen."""

    def __init__(self, model, audio_features: torch.Tensor, n_group: int = 1):
        """audio_features (B, n_audio_ctx, n_audio_state): the cache has B * n_group rows, each
        window's n_group consecutive rows sharing its cross-attention K/V."""
        self.model = model
        self.cache = model.new_kv_cache(audio_features, n_group=n_group)
        # models that can project only some positions onto the vocabulary (qwhisper.model.Whisper)
        self._select = "logit_positions" in inspect.signature(model.logits).parameters

    def logits(self, tokens: torch.Tensor, positions: Sequence[int] | None = None) -> torch.Tensor:
        """tokens: (rows, T) all tokens so far -> (rows, T_new, n_vocab) for the unseen ones, or
        (rows, len(positions), n_vocab) for those of the unseen ones (indices, negative from the end)."""
        new = tokens[:, self.cache.offset:]
        if positions is None:
            return self.model.logits(new, self.cache)
        if self._select:
            return self.model.logits(new, self.cache, logit_positions=list(positions))
        return self.model.logits(new, self.cache)[:, list(positions)]

    def rearrange_kv_cache(self, source_indices: Sequence[int] | torch.Tensor) -> None:
        """Row i of the cache becomes old row source_indices[i] (beam search)."""
        idx = torch.as_tensor(source_indices, dtype=torch.long)
        if not torch.equal(idx, torch.arange(len(idx))):
            self.cache.reorder(idx.to(self.model.device))


# --- ranking -------------------------------------------------------------------------------------

class SequenceRanker:
    def rank(self, tokens: list[list[list[int]]], sum_logprobs: list[list[float]]) -> list[int]:
        """For each window, the index of the candidate to return."""
        raise NotImplementedError


class MaximumLikelihoodRanker(SequenceRanker):
    """Highest sum logprob / length (or / Google NMT's ((5 + length) / 6) ** alpha). An empty
    candidate (EOT first: possible without timestamps and suppress_blank) scores its sum, where
    openai's ranker divides by zero."""

    def __init__(self, length_penalty: float | None):
        self.length_penalty = length_penalty

    def rank(self, tokens, sum_logprobs):
        def score(logprob: float, length: int) -> float:
            if self.length_penalty is None:
                penalty = max(length, 1)
            else:
                penalty = ((5 + length) / 6) ** self.length_penalty
            return logprob / penalty

        return [max(range(len(lps)), key=lambda i: score(lps[i], len(toks[i])))
                for toks, lps in zip(tokens, sum_logprobs)]


# --- token decoders ------------------------------------------------------------------------------

class TokenDecoder:
    def reset(self) -> None:
        """Forget the state of the previous batch."""

    def update(self, tokens: torch.Tensor, logits: torch.Tensor,
               sum_logprobs: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """tokens (rows, T), logits (rows, n_vocab), sum_logprobs (rows,) updated in place
        -> tokens (rows, T + 1), whether every row has finished."""
        raise NotImplementedError

    def finalize(self, tokens: torch.Tensor, sum_logprobs: torch.Tensor
                 ) -> tuple[list[list[list[int]]], list[list[float]]]:
        """tokens (n_audio, n_group, T), sum_logprobs (n_audio, n_group) -> candidate token
        lists (each ending in EOT) and their sum logprobs, per window."""
        raise NotImplementedError


class GreedyDecoder(TokenDecoder):
    """argmax at temperature 0, else a sample of softmax(logits / T) from a seeded generator."""

    def __init__(self, temperature: float, eot: int, generator: torch.Generator | None = None):
        self.temperature = temperature
        self.eot = eot
        self.generator = generator

    def update(self, tokens, logits, sum_logprobs):
        if self.temperature == 0:
            next_tokens = logits.argmax(dim=-1)
        else:
            probs = F.softmax(logits.float() / self.temperature, dim=-1)
            next_tokens = torch.multinomial(probs, 1, generator=self.generator)[:, 0]
        logprobs = F.log_softmax(logits.float(), dim=-1)
        current = logprobs.gather(1, next_tokens[:, None])[:, 0]
        finished = tokens[:, -1] == self.eot
        sum_logprobs += torch.where(finished, torch.zeros_like(current), current)
        next_tokens = torch.where(finished, torch.full_like(next_tokens, self.eot), next_tokens)
        tokens = torch.cat([tokens, next_tokens[:, None]], dim=-1)
        return tokens, bool((next_tokens == self.eot).all())

    def finalize(self, tokens, sum_logprobs):
        tokens = F.pad(tokens, (0, 1), value=self.eot)  # every row ends in EOT
        return tokens.tolist(), sum_logprobs.tolist()


class BeamSearchDecoder(TokenDecoder):
    """openai/whisper's beam search: per window keep the beam_size best unfinished sequences;
    finished ones are collected until round(beam_size * patience) per window."""

    def __init__(self, beam_size: int, eot: int, inference: Inference, patience: float | None = None):
        self.beam_size = beam_size
        self.eot = eot
        self.inference = inference
        self.patience = patience or 1.0
        self.max_candidates = round(beam_size * self.patience)
        if self.max_candidates <= 0:
            raise ValueError(f"invalid beam_size ({beam_size}) or patience ({patience})")
        self.finished_sequences: list[dict[tuple[int, ...], float]] | None = None

    def reset(self):
        self.finished_sequences = None

    def update(self, tokens, logits, sum_logprobs):
        n_rows = tokens.shape[0]
        if n_rows % self.beam_size != 0:
            raise ValueError(f"{n_rows} rows is not a multiple of beam_size {self.beam_size}")
        n_audio = n_rows // self.beam_size
        if self.finished_sequences is None:
            self.finished_sequences = [{} for _ in range(n_audio)]

        logprobs = F.log_softmax(logits.float(), dim=-1)
        top_lp, top_tok = logprobs.topk(self.beam_size + 1, dim=-1)  # (rows, beam + 1)
        top_lp = (top_lp + sum_logprobs[:, None]).tolist()
        top_tok = top_tok.tolist()
        prefixes = tokens.tolist()
        next_tokens, source_indices, new_sums = [], [], []
        for i in range(n_audio):
            scores: dict[tuple[int, ...], float] = {}
            sources: dict[tuple[int, ...], int] = {}
            for j in range(self.beam_size):
                row = i * self.beam_size + j
                for lp, tok in zip(top_lp[row], top_tok[row]):
                    seq = (*prefixes[row], tok)
                    scores[seq] = lp
                    sources[seq] = row
            saved = 0
            finished = {}
            for seq in sorted(scores, key=scores.get, reverse=True):
                if seq[-1] == self.eot:
                    finished[seq] = scores[seq]
                else:
                    new_sums.append(scores[seq])
                    next_tokens.append(seq)
                    source_indices.append(sources[seq])
                    saved += 1
                    if saved == self.beam_size:
                        break
            done = self.finished_sequences[i]
            for seq in sorted(finished, key=finished.get, reverse=True):
                if len(done) >= self.max_candidates:
                    break
                done[seq] = finished[seq]

        tokens = torch.tensor(next_tokens, device=tokens.device)
        sum_logprobs.copy_(torch.tensor(new_sums, device=sum_logprobs.device))
        self.inference.rearrange_kv_cache(source_indices)
        completed = all(len(s) >= self.max_candidates for s in self.finished_sequences)
        return tokens, completed

    def finalize(self, tokens, sum_logprobs):
        sums = sum_logprobs.cpu()
        for i, done in enumerate(self.finished_sequences):
            if len(done) < self.beam_size:  # not enough finished: add the best unfinished
                for j in sums[i].argsort(descending=True).tolist():
                    done[tuple(tokens[i, j].tolist()) + (self.eot,)] = sums[i, j].item()
                    if len(done) >= self.beam_size:
                        break
        return ([[list(s) for s in done] for done in self.finished_sequences],
                [list(done.values()) for done in self.finished_sequences])


# --- logit filters -------------------------------------------------------------------------------

class LogitFilter:
    def apply(self, logits: torch.Tensor, tokens: torch.Tensor) -> None:
        """Mask `logits` (rows, n_vocab) in place, given `tokens` (rows, T) so far."""
        raise NotImplementedError


class SuppressBlank(LogitFilter):
    """The first sampled token may not be a space or <|endoftext|>."""

    def __init__(self, tokenizer: Tokenizer, sample_begin: int):
        self.suppress = tokenizer.encode(" ") + [tokenizer.eot]
        self.sample_begin = sample_begin

    def apply(self, logits, tokens):
        if tokens.shape[1] == self.sample_begin:
            logits[:, self.suppress] = NEG_INF


class SuppressTokens(LogitFilter):
    def __init__(self, suppress_tokens: Sequence[int]):
        self.suppress_tokens = list(suppress_tokens)
        self._index: torch.Tensor | None = None  # the ids on the logits' device, made once

    def apply(self, logits, tokens):
        if self._index is None or self._index.device != logits.device:
            self._index = torch.tensor(self.suppress_tokens, dtype=torch.long, device=logits.device)
        logits.index_fill_(1, self._index, NEG_INF)


class NoRepeatNGram(LogitFilter):
    """Ban the tokens that would complete an n-gram already present in the sampled text of the
    row (faster-whisper's no_repeat_ngram_size). Timestamp tokens count as tokens (they are
    never banned: the grammar needs them and they can't loop, being increasing)."""

    def __init__(self, ngram_size: int, sample_begin: int, timestamp_begin: int):
        self.n = ngram_size
        self.sample_begin = sample_begin
        self.timestamp_begin = timestamp_begin

    def apply(self, logits, tokens):
        sampled = tokens[:, self.sample_begin:]
        n = self.n
        if sampled.shape[1] < n:
            return
        # windows (rows, L - n + 1, n): an earlier n-gram whose first n - 1 tokens equal the
        # row's last n - 1 tokens bans its last token
        grams = sampled.unfold(1, n, 1)
        tail = sampled[:, sampled.shape[1] - (n - 1):]  # (rows, n - 1)
        hits = (grams[:, :, : n - 1] == tail[:, None, :]).all(dim=-1)  # (rows, L - n + 1)
        banned = torch.where(hits, grams[:, :, -1], torch.full_like(grams[:, :, -1], -1))
        banned = banned.masked_fill(banned >= self.timestamp_begin, -1)
        mask = torch.zeros_like(logits, dtype=torch.bool)
        mask.scatter_(1, banned.clamp(min=0), banned >= 0)
        logits.masked_fill_(mask, NEG_INF)


class ApplyTimestampRules(LogitFilter):
    """openai/whisper's timestamp grammar, on every row at once:

    - <|notimestamps|> is never sampled;
    - timestamps come in pairs (end of one segment, start of the next), except right before EOT:
      after timestamp-after-text the next token is a timestamp or EOT, after two timestamps
      (or one at the very start) it is text;
    - timestamps never decrease, and a segment has nonzero length: after text, the next
      timestamp is > the last one; closing a pair, >= it;
    - the first sampled token is a timestamp, at most max_initial_timestamp_index;
    - if the total probability of the timestamps exceeds that of the likeliest text token,
      a timestamp is forced.
    """

    def __init__(self, tokenizer: Tokenizer, sample_begin: int, max_initial_timestamp_index: int | None):
        self.eot = tokenizer.eot
        self.no_timestamps = tokenizer.no_timestamps
        self.timestamp_begin = tokenizer.timestamp_begin
        self.sample_begin = sample_begin
        self.max_initial_timestamp_index = max_initial_timestamp_index

    def apply(self, logits, tokens):
        tb = self.timestamp_begin
        n_rows, n_vocab = logits.shape
        logits[:, self.no_timestamps] = NEG_INF

        sampled = tokens[:, self.sample_begin:]  # (rows, S)
        n_sampled = sampled.shape[1]
        vocab = torch.arange(n_vocab, device=logits.device)
        if n_sampled > 0:
            is_ts = sampled >= tb
            last_was_ts = is_ts[:, -1]
            penultimate_was_ts = is_ts[:, -2] if n_sampled >= 2 else torch.ones_like(last_was_ts)
            # pairs: ts ts -> text next; text ts -> ts or EOT next (no text token below eot)
            logits.masked_fill_((last_was_ts & penultimate_was_ts)[:, None] & (vocab >= tb), NEG_INF)
            logits.masked_fill_((last_was_ts & ~penultimate_was_ts)[:, None] & (vocab < self.eot), NEG_INF)
            # monotonic: forbid timestamps below the last one (+1 unless it closes a pair)
            positions = torch.arange(n_sampled, device=tokens.device)
            last_pos = torch.where(is_ts, positions, -1).amax(dim=1)  # (rows,)
            has_ts = last_pos >= 0
            last_ts = sampled.gather(1, last_pos.clamp(min=0)[:, None])[:, 0]
            closes_pair = last_was_ts & ~penultimate_was_ts
            limit = torch.where(closes_pair, last_ts, last_ts + 1)
            logits.masked_fill_(has_ts[:, None] & (vocab >= tb) & (vocab < limit[:, None]), NEG_INF)
        else:
            # the first sampled token is a timestamp, not later than max_initial_timestamp
            logits[:, :tb] = NEG_INF
            if self.max_initial_timestamp_index is not None:
                logits[:, tb + self.max_initial_timestamp_index + 1:] = NEG_INF

        # a timestamp if their total probability beats every single text token
        logprobs = F.log_softmax(logits.float(), dim=-1)
        timestamp_logprob = logprobs[:, tb:].logsumexp(dim=-1)
        max_text_logprob = logprobs[:, :tb].max(dim=-1).values
        logits.masked_fill_((timestamp_logprob > max_text_logprob)[:, None] & (vocab < tb), NEG_INF)


# --- language detection --------------------------------------------------------------------------

@torch.no_grad()
def detect_language(model, audio_features: torch.Tensor, tokenizer: Tokenizer
                    ) -> tuple[torch.Tensor, list[dict[str, float]]]:
    """Language tokens (B,) and {code: probability} per window, from the logits after
    <|startoftranscript|> restricted to the language tokens (a separate cache, one step)."""
    if not tokenizer.is_multilingual:
        raise ValueError("this model is English-only: it has no language tokens to detect with")
    n_audio = audio_features.shape[0]
    cache = model.new_kv_cache(audio_features)
    sot = torch.full((n_audio, 1), tokenizer.sot, dtype=torch.long, device=audio_features.device)
    logits = model.logits(sot, cache)[:, 0].float()
    lang_tokens = torch.tensor(tokenizer.all_language_tokens, device=logits.device)
    lang_logits = logits[:, lang_tokens]
    probs = lang_logits.softmax(dim=-1).cpu()
    best = lang_tokens[lang_logits.argmax(dim=-1)]
    codes = tokenizer.language_codes
    return best, [dict(zip(codes, row.tolist())) for row in probs]


# --- the task ------------------------------------------------------------------------------------

def _verify_options(options: DecodingOptions) -> None:
    if options.task not in ("transcribe", "translate"):
        raise OptionError(f"task must be 'transcribe' or 'translate', not {options.task!r}")
    if not options.temperature >= 0:
        raise OptionError(f"temperature must be >= 0, not {options.temperature}")
    if options.beam_size is not None and options.best_of is not None:
        raise OptionError("beam_size and best_of can't be given together")
    if options.beam_size is not None and options.beam_size < 1:
        raise OptionError(f"beam_size must be >= 1, not {options.beam_size}")
    if options.best_of is not None and options.best_of < 1:
        raise OptionError(f"best_of must be >= 1, not {options.best_of}")
    if options.temperature == 0 and options.best_of is not None:
        raise OptionError("best_of with greedy sampling (temperature 0) is not compatible")
    if options.temperature > 0 and options.beam_size is not None:
        raise OptionError("beam_size requires temperature 0")
    if options.patience is not None and options.beam_size is None:
        raise OptionError("patience requires beam_size to be given")
    if options.patience is not None and options.patience <= 0:
        raise OptionError(f"patience must be > 0, not {options.patience}")
    if options.length_penalty is not None and not 0 <= options.length_penalty <= 1:
        raise OptionError(f"length_penalty (alpha) must be between 0 and 1, not {options.length_penalty}")
    if options.no_repeat_ngram_size < 0:
        raise OptionError(f"no_repeat_ngram_size must be >= 0, not {options.no_repeat_ngram_size}")
    if options.sample_len is not None and options.sample_len < 1:
        raise OptionError(f"sample_len must be >= 1, not {options.sample_len}")
    try:
        normalize_language(options.language)
    except ValueError as e:
        raise OptionError(f"language: {e}") from None


def parse_suppress_tokens(spec: str | Iterable[int] | None, tokenizer: Tokenizer) -> tuple[int, ...]:
    """'-1' / [-1, ...] -> the non-speech set (+ the listed ids); always adds the task/sot/prev/
    lm tokens and <|nospeech|> (its probability is read separately), as openai does."""
    if spec is None:
        ids: list[int] = []
    elif isinstance(spec, str):
        try:
            ids = [int(t) for t in spec.split(",") if t.strip()]
        except ValueError:
            raise OptionError(f"suppress_tokens must be comma-separated integers, not {spec!r}") from None
    else:
        ids = [int(t) for t in spec]
    if -1 in ids:
        ids = [t for t in ids if t >= 0] + list(tokenizer.non_speech_tokens)
    bad = [t for t in ids if not 0 <= t < tokenizer.n_vocab]
    if bad:
        raise OptionError(f"suppress_tokens: ids {bad} are outside the vocabulary (n_vocab={tokenizer.n_vocab})")
    ids += [tokenizer.transcribe, tokenizer.translate, tokenizer.sot, tokenizer.sot_prev,
            tokenizer.sot_lm, tokenizer.no_speech]
    return tuple(sorted(set(ids)))


class DecodingTask:
    """One configuration of the decoder, run on a batch of windows by `run`."""

    # greedy at T = 0 runs qwhisper.greedy_loop (static state, one CUDA graph per step); False:
    # the loop below, its reference
    fast_greedy = True

    def __init__(self, model, tokenizer: Tokenizer, options: DecodingOptions):
        _verify_options(options)
        self.model = model
        self.options = options
        language = normalize_language(options.language)
        try:
            self.tokenizer = tokenizer.with_options(language=language or "en", task=options.task)
        except ValueError as e:
            raise OptionError(str(e)) from None

        self.n_group = options.beam_size or options.best_of or 1
        self.n_ctx: int = model.dims.n_text_ctx
        self.sample_len: int = options.sample_len or self.n_ctx // 2

        self.sot_sequence = (self.tokenizer.sot_sequence_including_notimestamps
                             if options.without_timestamps else self.tokenizer.sot_sequence)
        self.initial_tokens = self._get_initial_tokens()
        self.sample_begin = len(self.initial_tokens)
        self.sot_index = self.initial_tokens.index(self.tokenizer.sot)

        # sequence ranker: picks the returned candidate of a group (best_of / beams)
        self.sequence_ranker = MaximumLikelihoodRanker(options.length_penalty)

        # logit filters: rules that mask tokens out of the next-token distribution
        self.logit_filters: list[LogitFilter] = []
        if options.suppress_blank:
            self.logit_filters.append(SuppressBlank(self.tokenizer, self.sample_begin))
        if options.suppress_tokens:
            self.logit_filters.append(SuppressTokens(parse_suppress_tokens(options.suppress_tokens,
                                                                           self.tokenizer)))
        if options.no_repeat_ngram_size > 0:
            self.logit_filters.append(NoRepeatNGram(options.no_repeat_ngram_size, self.sample_begin,
                                                    self.tokenizer.timestamp_begin))
        if not options.without_timestamps:
            precision = TIME_PRECISION * 1500 / model.dims.n_audio_ctx  # 30 s / n_audio_ctx
            max_index = None
            if options.max_initial_timestamp:
                max_index = round(options.max_initial_timestamp / precision)
            self.logit_filters.append(ApplyTimestampRules(self.tokenizer, self.sample_begin, max_index))

    def _encode_text(self, text: str | Sequence[int]) -> list[int]:
        return self.tokenizer.encode(" " + text.strip()) if isinstance(text, str) else list(text)

    def _get_initial_tokens(self) -> tuple[int, ...]:
        tokens = list(self.sot_sequence)
        if self.options.prefix:
            prefix = self._encode_text(self.options.prefix)
            # openai keeps the last n_ctx // 2 - sample_len tokens; at the default sample_len
            # (n_ctx // 2) that is 0, where its `prefix[-0:]` keeps the whole prefix: so do we
            max_prefix_len = self.n_ctx // 2 - self.sample_len
            tokens += prefix[-max_prefix_len:] if max_prefix_len > 0 else prefix
        if self.options.prompt:
            prompt = self._encode_text(self.options.prompt)
            tokens = [self.tokenizer.sot_prev] + prompt[-(self.n_ctx // 2 - 1):] + tokens
        return tuple(tokens)

    def _make_decoder(self, inference: Inference, device: torch.device) -> TokenDecoder:
        eot = self.tokenizer.eot
        if self.options.beam_size is not None:
            return BeamSearchDecoder(self.options.beam_size, eot, inference, self.options.patience)
        generator = None
        if self.options.temperature > 0:
            generator = torch.Generator(device=device)
            generator.manual_seed(self.options.seed)
        return GreedyDecoder(self.options.temperature, eot, generator)

    def _get_audio_features(self, mel: torch.Tensor) -> torch.Tensor:
        dims = self.model.dims
        if tuple(mel.shape[-2:]) == (dims.n_audio_ctx, dims.n_audio_state):
            return mel  # already encoded
        return self.model.embed_audio(mel)

    def _main_loop(self, inference: Inference, decoder: TokenDecoder, tokens: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
        if self.fast_greedy and isinstance(decoder, GreedyDecoder) and greedy_loop.applies(self):
            return greedy_loop.main_loop(self, inference, tokens)  # same results, no sync per token
        n_rows = tokens.shape[0]
        sum_logprobs = torch.zeros(n_rows, device=tokens.device)
        no_speech_probs = [math.nan] * n_rows
        for i in range(self.sample_len):
            # the first pass feeds the whole prompt: only two of its positions' logits are used
            logits = inference.logits(tokens, [self.sot_index, -1] if i == 0 else None)  # (rows, T', n_vocab)
            if i == 0:  # P(<|nospeech|>) after <|startoftranscript|>
                probs_at_sot = logits[:, 0].float().softmax(dim=-1)
                no_speech_probs = probs_at_sot[:, self.tokenizer.no_speech].tolist()
            logits = logits[:, -1].float()
            for logit_filter in self.logit_filters:
                logit_filter.apply(logits, tokens)
            tokens, completed = decoder.update(tokens, logits, sum_logprobs)
            if completed or tokens.shape[-1] > self.n_ctx:
                break
        return tokens, sum_logprobs, no_speech_probs

    @torch.no_grad()
    def run(self, mel: torch.Tensor) -> list[DecodingResult]:
        """mel: (B, n_mels, 3000) (or already-encoded (B, n_audio_ctx, n_audio_state)) -> B results."""
        tok = self.tokenizer
        device = torch.device(self.model.device)
        audio_features = self._get_audio_features(mel.to(device))
        n_audio = audio_features.shape[0]
        tokens = torch.tensor([self.initial_tokens], device=device).repeat(n_audio, 1)

        languages: list[str | None] = [tok.language or "en"] * n_audio  # .en models: English
        language_probs: list[dict[str, float] | None] = [None] * n_audio
        if tok.is_multilingual and self.options.language is None:
            lang_tokens, language_probs = detect_language(self.model, audio_features, tok)
            languages = [max(p, key=p.get) for p in language_probs]
            tokens[:, self.sot_index + 1] = lang_tokens  # the detected language's token

        # each window becomes a group of n_group rows (best_of samples / beams)
        tokens = tokens.repeat_interleave(self.n_group, dim=0)
        inference = Inference(self.model, audio_features, self.n_group)
        decoder = self._make_decoder(inference, device)
        decoder.reset()
        tokens, sum_logprobs, no_speech_probs = self._main_loop(inference, decoder, tokens)

        no_speech_probs = no_speech_probs[:: self.n_group]
        tokens = tokens.reshape(n_audio, self.n_group, -1)
        sum_logprobs = sum_logprobs.reshape(n_audio, self.n_group)
        candidates, candidate_logprobs = decoder.finalize(tokens, sum_logprobs)
        # keep the sampled part, up to the first EOT
        candidates = [[c[self.sample_begin: c.index(tok.eot, self.sample_begin)] for c in group]
                      for group in candidates]
        selected = self.sequence_ranker.rank(candidates, candidate_logprobs)

        results = []
        for i in range(n_audio):
            best = candidates[i][selected[i]]
            text = tok.decode(best).strip()
            results.append(DecodingResult(
                language=languages[i], language_probs=language_probs[i], tokens=best, text=text,
                avg_logprob=candidate_logprobs[i][selected[i]] / (len(best) + 1),
                no_speech_prob=no_speech_probs[i], temperature=self.options.temperature,
                compression_ratio=compression_ratio(text)))
        return results


@torch.no_grad()
def decode(model, mel: torch.Tensor, tokenizer: Tokenizer,
           options: DecodingOptions = DecodingOptions(), **overrides) -> DecodingResult | list[DecodingResult]:
    """Decode 30-s window(s): mel (n_mels, 3000) -> one result, (B, n_mels, 3000) -> B results.

    Keyword overrides replace fields of `options` (decode(model, mel, tok, temperature=0.2)).
    """
    if overrides:
        options = dataclasses.replace(options, **overrides)
    single = mel.ndim == 2
    results = DecodingTask(model, tokenizer, options).run(mel[None] if single else mel)
    return results[0] if single else results


__all__ = [
    "ApplyTimestampRules",
    "BeamSearchDecoder",
    "DecodingOptions",
    "DecodingResult",
    "DecodingTask",
    "GreedyDecoder",
    "Inference",
    "MaximumLikelihoodRanker",
    "NoRepeatNGram",
    "OptionError",
    "SuppressBlank",
    "SuppressTokens",
    "compression_ratio",
    "decode",
    "detect_language",
    "parse_suppress_tokens",
]
