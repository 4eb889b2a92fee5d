"""Word-level timestamps: cross-attention alignment + dynamic time warping (openai/whisper timing.py).

For one decoded window:
  1. run the decoder once over [*sot_sequence, <|notimestamps|>, *text_tokens, <|endoftext|>]
     and keep the cross-attention q.k of the *alignment heads* (heads whose attention follows
     the speech; per model, `alignment_heads_for`), (heads, tokens, n_audio_ctx);
  2. keep the first num_frames / 2 audio positions (the window's speech), softmax over them,
     standardise each audio position over the tokens (zero mean, unit variance), median filter
     (width 7) along time, average the heads -> matrix (tokens, frames);
  3. DTW on -matrix, rows [<|notimestamps|>, text...] (row k = the position that *predicts*
     text token k): the path's first frame on row k is token k's start, in 20-ms steps;
  4. tokens -> words (`Tokenizer.split_to_word_tokens`: on spaces, or per character for
     languages without spaces); a word starts at its first token's time and ends where the next
     word starts; its probability is the mean of its tokens' probabilities in the same pass;
  5. punctuation merged into neighbouring words (openai's prepend/append sets), then openai's
     heuristics for over-long words at sentence and segment boundaries.

Alignment heads: openai/whisper ships one (n_text_layer, n_text_head) bitmap per model as
base85-encoded gzip (whisper/__init__.py `_ALIGNMENT_HEADS`, copied below, MIT licence);
whisper.cpp has the same sets as `g_aheads`, and the CTranslate2 configs of tiny.en and base
carry them as "alignment_heads" (tests/test_timing.py checks they agree). A model that matches
none of them gets every head of the last half of the decoder layers (openai's default).
"""

from __future__ import annotations

import base64
import gzip
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .tokenizer import Tokenizer

AUDIO_STEPS_PER_SECOND = 50  # 16000 Hz / 160 hop / 2 (conv stride): one encoder position = 20 ms
MEDFILT_WIDTH = 7
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"
SENTENCE_END_MARKS = ".。!！?？"
MAX_MEDIAN_WORD_DURATION = 0.7  # seconds: openai caps the median word duration its hacks use

# openai/whisper/__init__.py _ALIGNMENT_HEADS: base85(gzip(bool array (n_text_layer, n_text_head)))
_ALIGNMENT_HEADS: dict[str, bytes] = {
    "tiny.en": b"ABzY8J1N>@0{>%R00Bk>$p{7v037`oCl~+#00",
    "tiny": b"ABzY8bu8Lr0{>%RKn9Fp%m@SkK7Kt=7ytkO",
    "base.en": b"ABzY8;40c<0{>%RzzG;p*o+Vo09|#PsxSZm00",
    "base": b"ABzY8KQ!870{>%RzyTQH3`Q^yNP!>##QT-<FaQ7m",
    "small.en": b"ABzY8>?_)10{>%RpeA61k&I|OI3I$65C{;;pbCHh0B{qLQ;+}v00",
    "small": b"ABzY8DmU6=0{>%Rpa?J`kvJ6qF(V^F86#Xh7JUGMK}P<N0000",
    "medium.en": b"ABzY8usPae0{>%R7<zz_OvQ{)4kMa0BMw6u5rT}kRKX;$NfYBv00*Hl@qhsU00",
    "medium": b"ABzY8B0Jh+0{>%R7}kK1fFL7w6%<-Pf*t^=N)Qr&0RR9",
    "large-v1": b"ABzY8r9j$a0{>%R7#4sLmoOs{s)o3~84-RPdcFk!JR<kSfC2yj",
    "large-v2": b"ABzY8zd+h!0{>%R7=D0pU<_bnWW*tkYAhobTNnu$jnkEkXqp)j;w1Tzk)UH3X%SZd&fFZ2fC2yj",
    "large-v3": b"ABzY8gWO1E0{>%R7(9S+Kn!D~%ngiGaR?*L!iJG9p-nab0JQ=-{D1-g00",
    "large-v3-turbo": b"ABzY8j^C+e0{>%RARaKHP%t(lGR*)0g!tONPyhe`",
}


def decode_alignment_heads(name: str, n_text_layer: int, n_text_head: int) -> list[tuple[int, int]]:
    """openai's bitmap of model `name` as (layer, head) pairs (ValueError if the shape differs)."""
    bits = np.frombuffer(gzip.decompress(base64.b85decode(_ALIGNMENT_HEADS[name])), dtype=bool)
    if bits.size != n_text_layer * n_text_head:
        raise ValueError(f"alignment heads of {name} are for {bits.size} heads, not "
                         f"{n_text_layer} x {n_text_head}")
    return [tuple(x) for x in np.argwhere(bits.reshape(n_text_layer, n_text_head)).tolist()]


def default_alignment_heads(n_text_layer: int, n_text_head: int) -> list[tuple[int, int]]:
    """Every head of the last half of the decoder layers (openai's Whisper.__init__ default)."""
    return [(layer, h) for layer in range(n_text_layer // 2, n_text_layer) for h in range(n_text_head)]


def alignment_heads_for(dims, name: str | None = None) -> list[tuple[int, int]]:
    """The alignment heads of a model with hparams `dims` (a GGML HParams).

    name: the model's name or file name ("base-q5_1", "ggml-large-v2.bin"), used first; else
    the one named architecture whose shape matches (large-v1 and large-v2 share a shape: with
    no name, large-v2's); else the default set.
    """
    from .architectures import ARCHITECTURES

    def same_shape(arch: str) -> bool:
        a = ARCHITECTURES.get(arch)
        return a is not None and all(getattr(a, f) == getattr(dims, f) for f in (
            "n_vocab", "n_audio_state", "n_audio_layer", "n_text_state", "n_text_head", "n_text_layer", "n_mels"))

    shape = (dims.n_text_layer, dims.n_text_head)
    if name:
        stem = str(name).rsplit("/", 1)[-1].removeprefix("ggml-").removesuffix(".bin")
        for known in sorted(_ALIGNMENT_HEADS, key=len, reverse=True):  # "tiny.en" before "tiny"
            if (stem == known or stem.startswith(known + "-")) and (same_shape(known) or known == "large-v1"
                                                                     and same_shape("large-v2")):
                return decode_alignment_heads(known, *shape)
    matches = [a for a in _ALIGNMENT_HEADS if same_shape(a)]
    if matches:
        return decode_alignment_heads(matches[-1], *shape)  # table order: large-v2 after large-v1
    return default_alignment_heads(*shape)


# --- median filter and DTW -----------------------------------------------------------------------

def median_filter(x: torch.Tensor, filter_width: int) -> torch.Tensor:
    """Median of width `filter_width` (odd) along the last dimension, reflect-padded (openai's)."""
    if filter_width <= 0 or filter_width % 2 != 1:
        raise ValueError(f"filter_width must be a positive odd number, not {filter_width}")
    pad = filter_width // 2
    if x.shape[-1] <= pad:
        return x  # reflect padding needs more samples than the pad
    shape = x.shape
    y = F.pad(x.reshape(-1, 1, shape[-1]), (pad, pad), mode="reflect")  # (rows, 1, n + 2 pad)
    # sort() beats torch.median here (pytorch issue 51450), as openai notes
    return y.unfold(-1, filter_width, 1).sort()[0][..., pad].reshape(shape)


def dtw(x: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-cost monotonic path through cost matrix x (N, M) from (0, 0) to (N-1, M-1) with
    steps (1, 1), (1, 0), (0, 1): (text_indices, time_indices), each (path length,).

    openai's dtw_cpu exactly (float32 accumulated cost, its tie-breaking: diagonal only when
    strictly cheapest, then up, else left), computed one anti-diagonal i + j = d at a time:
    every cell of a diagonal depends only on the two diagonals before it.
    """
    if isinstance(x, torch.Tensor):
        x = x.double().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    n, m = x.shape
    cost = np.full((n + 1, m + 1), np.inf, dtype=np.float32)
    trace = np.full((n + 1, m + 1), -1, dtype=np.int8)
    cost[0, 0] = 0
    for d in range(2, n + m + 1):
        i = np.arange(max(1, d - m), min(n, d - 1) + 1)
        j = d - i
        c0, c1, c2 = cost[i - 1, j - 1], cost[i - 1, j], cost[i, j - 1]
        t = np.where((c0 < c1) & (c0 < c2), 0, np.where((c1 < c0) & (c1 < c2), 1, 2))
        c = np.choose(t, (c0, c1, c2))
        cost[i, j] = (x[i - 1, j - 1] + c).astype(np.float32)
        trace[i, j] = t
    return _backtrace(trace)


def _backtrace(trace: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    i, j = trace.shape[0] - 1, trace.shape[1] - 1
    trace[0, :] = 2
    trace[:, 0] = 1
    path = []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        t = trace[i, j]
        if t == 0:
            i, j = i - 1, j - 1
        elif t == 1:
            i -= 1
        elif t == 2:
            j -= 1
        else:
            raise ValueError(f"unexpected trace[{i}, {j}] = {t}")
    result = np.array(path[::-1]).T
    return result[0], result[1]


# --- alignment -----------------------------------------------------------------------------------

@dataclass
class WordTiming:
    word: str
    tokens: list[int]
    start: float  # seconds from the window's start
    end: float
    probability: float


@torch.no_grad()
def find_alignment(model, tokenizer: Tokenizer, text_tokens: Sequence[int], audio_features: torch.Tensor,
                   num_frames: int, alignment_heads: Sequence[tuple[int, int]], *,
                   medfilt_width: int = MEDFILT_WIDTH, qk_scale: float = 1.0) -> list[WordTiming]:
    """Words of `text_tokens` with times relative to the window (openai's find_alignment).

    audio_features: (1, n_audio_ctx, n_audio_state), the window's encoder output;
    num_frames: mel frames of real audio in the window (<= 3000); tokenizer: with the window's
    language and task (its sot_sequence starts the alignment pass).
    """
    text_tokens = [int(t) for t in text_tokens]
    if not text_tokens:
        return []
    tokens = [*tokenizer.sot_sequence, tokenizer.no_timestamps, *text_tokens, tokenizer.eot]
    device = audio_features.device
    cache = model.new_kv_cache(audio_features)
    logits, qk = model.logits(torch.tensor([tokens], device=device), cache, alignment_heads=list(alignment_heads))
    n_sot = len(tokenizer.sot_sequence)
    # row n_sot (<|notimestamps|>) predicts text token 0, ...: P(text token k) among text tokens
    probs = logits[0, n_sot: n_sot + len(text_tokens), : tokenizer.eot].float().softmax(dim=-1)
    text_token_probs = probs[torch.arange(len(text_tokens)), torch.tensor(text_tokens)].tolist()

    weights = qk[0, :, :, : num_frames // 2].float()  # (heads, tokens, frames)
    weights = (weights * qk_scale).softmax(dim=-1)
    std, mean = torch.std_mean(weights, dim=-2, keepdim=True, unbiased=False)
    weights = median_filter((weights - mean) / std, medfilt_width)
    matrix = weights.mean(dim=0)[n_sot:-1]  # rows: <|notimestamps|>, text tokens (not EOT)
    text_indices, time_indices = dtw(-matrix)

    words, word_tokens = tokenizer.split_to_word_tokens(text_tokens + [tokenizer.eot])
    if len(word_tokens) <= 1:
        return []
    word_boundaries = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
    jumps = np.pad(np.diff(text_indices), (1, 0), constant_values=1).astype(bool)
    jump_times = time_indices[jumps] / AUDIO_STEPS_PER_SECOND  # entry time of each row
    starts = jump_times[word_boundaries[:-1]]
    ends = jump_times[word_boundaries[1:]]
    return [WordTiming(w, list(toks), float(s), float(e), float(np.mean(text_token_probs[i:j])))
            for w, toks, s, e, i, j in zip(words, word_tokens, starts, ends,
                                           word_boundaries[:-1], word_boundaries[1:])]


def merge_punctuations(alignment: list[WordTiming], prepended: str, appended: str) -> None:
    """Attach opening punctuation to the next word and closing punctuation to the previous one
    (in place; the emptied entries keep their place with word "" and no tokens)."""
    i, j = len(alignment) - 2, len(alignment) - 1
    while i >= 0:
        previous, following = alignment[i], alignment[j]
        if previous.word.startswith(" ") and previous.word.strip() in prepended:
            following.word = previous.word + following.word
            following.tokens = previous.tokens + following.tokens
            previous.word, previous.tokens = "", []
        else:
            j = i
        i -= 1
    i, j = 0, 1
    while j < len(alignment):
        previous, following = alignment[i], alignment[j]
        if not previous.word.endswith(" ") and following.word in appended:
            previous.word = previous.word + following.word
            previous.tokens = previous.tokens + following.tokens
            following.word, following.tokens = "", []
        else:
            i = j
        j += 1


def add_word_timestamps(segments: list[dict], model, tokenizer: Tokenizer, audio_features: torch.Tensor,
                        num_frames: int, time_offset: float, alignment_heads: Sequence[tuple[int, int]], *,
                        prepend_punctuations: str = PREPEND_PUNCTUATIONS,
                        append_punctuations: str = APPEND_PUNCTUATIONS,
                        last_speech_timestamp: float = 0.0, medfilt_width: int = MEDFILT_WIDTH) -> None:
    """Give each segment dict of one window (keys start, end, tokens) a "words" list of
    {word, start, end, probability} (seconds, absolute), and move the segment's start/end to
    its words' as openai does (in place)."""
    if not segments:
        return
    text_tokens_per_segment = [[t for t in s["tokens"] if t < tokenizer.eot] for s in segments]
    text_tokens = list(itertools.chain.from_iterable(text_tokens_per_segment))
    alignment = find_alignment(model, tokenizer, text_tokens, audio_features, num_frames, alignment_heads,
                               medfilt_width=medfilt_width)
    word_durations = np.array([t.end - t.start for t in alignment])
    word_durations = word_durations[word_durations.nonzero()]
    median_duration = min(MAX_MEDIAN_WORD_DURATION, float(np.median(word_durations)) if len(word_durations) else 0.0)
    max_duration = median_duration * 2

    # openai's hack: words at sentence boundaries no longer than twice the median word
    if len(word_durations) > 0:
        for i in range(1, len(alignment)):
            if alignment[i].end - alignment[i].start > max_duration:
                if alignment[i].word in SENTENCE_END_MARKS:
                    alignment[i].end = alignment[i].start + max_duration
                elif alignment[i - 1].word in SENTENCE_END_MARKS:
                    alignment[i].start = alignment[i].end - max_duration

    merge_punctuations(alignment, prepend_punctuations, append_punctuations)

    word_index = 0
    for segment, seg_text_tokens in zip(segments, text_tokens_per_segment):
        saved_tokens = 0
        words = []
        while word_index < len(alignment) and saved_tokens < len(seg_text_tokens):
            timing = alignment[word_index]
            if timing.word:
                words.append(dict(word=timing.word, start=round(time_offset + timing.start, 2),
                                  end=round(time_offset + timing.end, 2), probability=timing.probability))
            saved_tokens += len(timing.tokens)
            word_index += 1

        if words:
            # openai's hack: the first (and second) word after a pause no longer than twice the median
            if words[0]["end"] - last_speech_timestamp > median_duration * 4 and (
                    words[0]["end"] - words[0]["start"] > max_duration
                    or (len(words) > 1 and words[1]["end"] - words[0]["start"] > max_duration * 2)):
                if len(words) > 1 and words[1]["end"] - words[1]["start"] > max_duration:
                    boundary = max(words[1]["end"] / 2, words[1]["end"] - max_duration)
                    words[0]["end"] = words[1]["start"] = boundary
                words[0]["start"] = max(0, words[0]["end"] - max_duration)

            # the segment's own start/end timestamps win over an over-long first/last word
            if segment["start"] < words[0]["end"] and segment["start"] - 0.5 > words[0]["start"]:
                words[0]["start"] = max(0, min(words[0]["end"] - median_duration, segment["start"]))
            else:
                segment["start"] = words[0]["start"]
            if segment["end"] > words[-1]["start"] and segment["end"] + 0.5 < words[-1]["end"]:
                words[-1]["end"] = max(words[-1]["start"] + median_duration, segment["end"])
            else:
                segment["end"] = words[-1]["end"]
            last_speech_timestamp = segment["end"]
        segment["words"] = words


def get_end(segments: Sequence[dict]) -> float | None:
    """End of the last word, else of the last segment; None without segments."""
    return next((w["end"] for s in reversed(segments) for w in reversed(s.get("words") or [])),
                segments[-1]["end"] if segments else None)


__all__ = [
    "APPEND_PUNCTUATIONS",
    "PREPEND_PUNCTUATIONS",
    "WordTiming",
    "add_word_timestamps",
    "alignment_heads_for",
    "decode_alignment_heads",
    "default_alignment_heads",
    "dtw",
    "find_alignment",
    "get_end",
    "median_filter",
    "merge_punctuations",
]
