"""Long-form transcription: openai/whisper's seek loop over 30-s windows, with a faster-whisper
style API (`transcribe()` returns a lazy iterator of `Segment`s and a `TranscriptionInfo`).

The loop (openai/whisper transcribe.py, split into named steps):
  1. log-mel of the whole file once, on the model's device, padded with 30 s of zeros;
  2. language: given, "en" for English-only models, else detected on the first 30 s;
  3. at `seek` (in 10-ms mel frames): take a window of up to 3000 frames, encode it once, decode
     it with the temperature fallback (a higher temperature when the text is too repetitive,
     compression ratio > 2.4, or too unlikely, avg logprob < -1, unless it is silence);
  4. skip the window when it is silence (P(no speech) > 0.6 and avg logprob < -1);
  5. cut the tokens into segments at consecutive timestamp tokens <|a|><|b|>; advance `seek`
     to the last complete segment's end, or past the window when it ends in a single
     timestamp (nothing more said) or has no pair at all;
  6. the text so far (after the last high-temperature window) is the next window's prompt.
Segment times are clipped to the audio's duration; segments without text are dropped
(openai keeps them with empty text), so `"".join(s.text for s in segments)` is the transcript.

The CLI (`qwhisper transcribe`) is `add_arguments` + `run` at the end of this file.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .audio import HOP_LENGTH, N_FRAMES, N_SAMPLES, SAMPLE_RATE, load_audio, log_mel_spectrogram_torch, pad_or_trim
from .decoding import DecodingOptions, DecodingResult, DecodingTask, OptionError, detect_language
from .timing import APPEND_PUNCTUATIONS, PREPEND_PUNCTUATIONS, add_word_timestamps, alignment_heads_for, get_end
from .tokenizer import LANGUAGES, Tokenizer, normalize_language

DEFAULT_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
PAD_WINDOW = ("zeros", "silence")
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100 mel frames per second


@dataclass(frozen=True)
class TranscribeOptions:
    """Every option of a transcription: one object for the API and the CLI."""

    task: str = "transcribe"  # or "translate" (to English; multilingual models)
    language: str | None = None  # None: detect (multilingual) / English (.en models)
    # temperatures tried in turn until a window's result passes the thresholds below
    temperature: float | tuple[float, ...] = DEFAULT_TEMPERATURES
    compression_ratio_threshold: float | None = 2.4  # above: too repetitive, retry hotter
    logprob_threshold: float | None = -1.0  # avg logprob below: too unlikely, retry hotter
    no_speech_threshold: float | None = 0.6  # P(no speech) above (and logprob low): silence
    condition_on_previous_text: bool = True  # previous text is the next window's prompt
    prompt_reset_on_temperature: float = 0.5  # ... unless decoded hotter than this
    initial_prompt: str | None = None  # prompt of the first window (vocabulary, style)
    carry_initial_prompt: bool = False  # keep initial_prompt at the head of every window's prompt

    # word-level timestamps (cross-attention DTW, qwhisper.timing)
    word_timestamps: bool = False
    prepend_punctuations: str = PREPEND_PUNCTUATIONS  # merged into the next word
    append_punctuations: str = APPEND_PUNCTUATIONS  # merged into the previous word
    # skip silences longer than this (s) around a likely hallucination (needs word_timestamps)
    hallucination_silence_threshold: float | None = None
    # parts to transcribe: "start,end,start,end,..." seconds (the last end defaults to the audio's end)
    clip_timestamps: str | tuple[float, ...] = "0"
    # a window shorter than 30 s is completed with "silence" (the log-mel of zero samples: what
    # Whisper saw in training, where clips were padded as audio, and what whisper.cpp encodes) or
    # "zeros" (zero-valued log-mel frames, openai's transcribe). "silence" is the default: it gave
    # lower WER on 5 of 8 model files and higher on 1 (docs/reports/wer-cpu.md).
    pad_window: str = "silence"

    # passed on to every window's DecodingOptions
    beam_size: int | None = None
    best_of: int | None = None
    patience: float | None = None
    length_penalty: float | None = None
    suppress_tokens: str | tuple[int, ...] | None = "-1"
    suppress_blank: bool = True
    without_timestamps: bool = False
    max_initial_timestamp: float | None = 1.0
    sample_len: int | None = None
    seed: int = 0
    no_repeat_ngram_size: int = 0  # > 0: no n-gram of this size twice in a window (repeat guard)

    # 0 or 1: the seek loop above; N > 1: cut the file at silences into <= 30-s chunks and decode
    # N chunks at a time, without previous-text prompts (qwhisper.batched, docs/batched.md)
    batch_size: int = 0

    def __post_init__(self):
        temps = (self.temperature,) if isinstance(self.temperature, (int, float)) else tuple(self.temperature)
        if not temps or any(not t >= 0 for t in temps):
            raise OptionError(f"temperature must be >= 0 (one value or a list), not {self.temperature!r}")
        object.__setattr__(self, "temperature", tuple(float(t) for t in temps))
        if isinstance(self.suppress_tokens, list):
            object.__setattr__(self, "suppress_tokens", tuple(self.suppress_tokens))
        if self.task not in ("transcribe", "translate"):
            raise OptionError(f"task must be 'transcribe' or 'translate', not {self.task!r}")
        try:
            object.__setattr__(self, "language", normalize_language(self.language))
        except ValueError as e:
            raise OptionError(f"language: {e}") from None
        clips = self.clip_timestamps
        if isinstance(clips, str):
            try:
                clips = tuple(float(t) for t in clips.split(",") if t.strip())
            except ValueError:
                raise OptionError(f"clip_timestamps must be comma-separated seconds, not {self.clip_timestamps!r}") from None
        clips = tuple(float(t) for t in clips) or (0.0,)
        if any(t < 0 for t in clips) or any(b <= a for a, b in zip(clips[::2], clips[1::2])):
            raise OptionError(f"clip_timestamps must be start,end pairs with start < end, not {self.clip_timestamps!r}")
        object.__setattr__(self, "clip_timestamps", clips)
        if self.pad_window not in PAD_WINDOW:
            raise OptionError(f"pad_window must be one of {', '.join(PAD_WINDOW)}, not {self.pad_window!r}")
        if self.hallucination_silence_threshold is not None and not self.word_timestamps:
            raise OptionError("hallucination_silence_threshold needs word_timestamps")
        if self.hallucination_silence_threshold is not None and self.hallucination_silence_threshold <= 0:
            raise OptionError("hallucination_silence_threshold must be > 0 seconds, "
                              f"not {self.hallucination_silence_threshold}")
        if self.no_repeat_ngram_size < 0:
            raise OptionError(f"no_repeat_ngram_size must be >= 0, not {self.no_repeat_ngram_size}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 0:
            raise OptionError(f"batch_size must be a whole number >= 0, not {self.batch_size!r}")

    def decoding_options(self, temperature: float, language: str | None,
                         prompt: Sequence[int] | None) -> DecodingOptions:
        """This window's DecodingOptions: beam search only at T == 0, best_of only at T > 0."""
        return DecodingOptions(
            task=self.task, language=language, temperature=temperature, sample_len=self.sample_len,
            best_of=self.best_of if temperature > 0 else None,
            beam_size=self.beam_size if temperature == 0 else None,
            patience=self.patience if temperature == 0 else None,
            length_penalty=self.length_penalty, seed=self.seed, prompt=list(prompt) if prompt else None,
            suppress_tokens=self.suppress_tokens, suppress_blank=self.suppress_blank,
            without_timestamps=self.without_timestamps, max_initial_timestamp=self.max_initial_timestamp,
            no_repeat_ngram_size=self.no_repeat_ngram_size)


@dataclass(frozen=True)
class Word:
    word: str  # with its leading space and merged punctuation, as openai writes it
    start: float  # seconds
    end: float
    probability: float  # mean probability of its tokens


@dataclass(frozen=True)
class Segment:
    id: int
    seek: int  # mel frame (10 ms) where its window started
    start: float  # seconds
    end: float
    text: str
    tokens: list[int]  # text and timestamp tokens
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    words: list[Word] | None = None  # with word_timestamps


@dataclass(frozen=True)
class TranscriptionInfo:
    language: str
    language_probability: float  # 1.0 when the language was given or the model is English-only
    duration: float  # seconds of audio
    options: TranscribeOptions
    all_language_probs: list[tuple[str, float]] | None = None  # detected: most likely first


# --- one window ----------------------------------------------------------------------------------

def needs_fallback(result: DecodingResult, options: TranscribeOptions) -> bool:
    """Retry hotter when the text is too repetitive or too unlikely -- but not for silence."""
    too_repetitive = (options.compression_ratio_threshold is not None
                      and result.compression_ratio > options.compression_ratio_threshold)
    too_unlikely = (options.logprob_threshold is not None
                    and result.avg_logprob < options.logprob_threshold)
    silence = (options.no_speech_threshold is not None and too_unlikely
               and result.no_speech_prob > options.no_speech_threshold)
    return (too_repetitive or too_unlikely) and not silence


def is_silence(result: DecodingResult, options: TranscribeOptions) -> bool:
    """The window is skipped: no speech likely, and the decoded text not convincing."""
    if options.no_speech_threshold is None or result.no_speech_prob <= options.no_speech_threshold:
        return False
    return options.logprob_threshold is None or result.avg_logprob <= options.logprob_threshold


def decode_with_fallback(decode_window: Callable[[DecodingOptions], DecodingResult],
                         options: TranscribeOptions, language: str | None,
                         prompt: Sequence[int]) -> tuple[DecodingResult, float]:
    """Decode at each temperature in turn until a result passes the thresholds.

    Returns (result, the last temperature tried). When every temperature fails, the result is
    faster-whisper's pick -- the highest avg logprob among the results under the compression
    threshold (else among all) -- where openai keeps the last, hottest one: a T = 0 decode that
    just misses the logprob threshold (-1.004, say) beats a T = 1.0 sample of gibberish.
    """
    results = []
    for t in options.temperature:
        result = decode_window(options.decoding_options(t, language, prompt))
        if not needs_fallback(result, options):
            return result, t
        results.append(result)
    under = [r for r in results if options.compression_ratio_threshold is None
             or r.compression_ratio <= options.compression_ratio_threshold]
    return max(under or results, key=lambda r: r.avg_logprob), options.temperature[-1]


@dataclass
class WindowSplit:
    pieces: list[tuple[float, float, list[int]]]  # (start, end in timestamp steps, tokens) ...
    seek_advance: int  # mel frames to move `seek` by
    single_timestamp_ending: bool = False  # text, then one timestamp: nothing more is said


def split_window(tokens: Sequence[int], tokenizer: Tokenizer, segment_size: int,
                 input_stride: int = 2) -> WindowSplit:
    """Cut one window's tokens into segments (openai's rules); times as timestamp indices.

    Two consecutive timestamps end one segment and start the next. If there is such a pair:
    the pieces between pairs are segments; a single timestamp at the end means nothing more
    is said in the window (advance past it), else the last, unfinished piece is dropped and
    `seek` moves to the last complete segment's end. Without a pair, the whole window is one
    segment ending at its last timestamp (or at the window's end).
    input_stride: mel frames per timestamp step (3000 frames / 1500 encoder positions = 2).
    """
    tb = tokenizer.timestamp_begin
    tokens = list(tokens)
    is_ts = [t >= tb for t in tokens]
    single_timestamp_ending = is_ts[-2:] == [False, True]
    consecutive = [i + 1 for i in range(len(tokens) - 1) if is_ts[i] and is_ts[i + 1]]
    window_steps = segment_size / input_stride  # the window's end in timestamp steps

    def index(tok: int) -> int:
        return tok - tb if tok >= tb else 0

    if consecutive:
        cuts = consecutive + ([len(tokens)] if single_timestamp_ending else [])
        pieces, last = [], 0
        for cut in cuts:
            piece = tokens[last:cut]
            pieces.append((index(piece[0]), index(piece[-1]), piece))
            last = cut
        if single_timestamp_ending:
            advance = segment_size
        else:
            advance = index(tokens[last - 1]) * input_stride
        return WindowSplit(pieces, advance, single_timestamp_ending)

    timestamps = [t for t in tokens if t >= tb]
    end = window_steps
    if timestamps and timestamps[-1] != tb:
        end = timestamps[-1] - tb  # no pair, but a final timestamp: the speech ends there
    return WindowSplit([(0, end, tokens)], segment_size, single_timestamp_ending)


# --- the seek loop -------------------------------------------------------------------------------

PUNCTUATION = "\"'“¿([{-\"'.。,，!！?？:：”)]}、"  # openai's: ignored when scoring anomalous words


def word_anomaly_score(word: dict) -> float:
    """openai's hallucination score of a word: improbable, very short or very long."""
    probability = word.get("probability", 0.0)
    duration = word["end"] - word["start"]
    score = 0.0
    if probability < 0.15:
        score += 1.0
    if duration < 0.133:
        score += (0.133 - duration) * 15
    if duration > 2.0:
        score += duration - 2.0
    return score


def is_segment_anomaly(segment: dict | None) -> bool:
    """The first 8 words (punctuation aside) look hallucinated (openai's rule)."""
    if segment is None or not segment["words"]:
        return False
    words = [w for w in segment["words"] if w["word"] not in PUNCTUATION][:8]
    score = sum(word_anomaly_score(w) for w in words)
    return score >= 3 or score + 0.01 >= len(words)


def _next_words_segment(segments: list[dict]) -> dict | None:
    return next((s for s in segments if s["words"]), None)


class _Transcription:
    """State of one file's seek loop; `segments()` is the generator transcribe() returns."""

    def __init__(self, model, tokenizer: Tokenizer, mel: torch.Tensor, duration: float,
                 options: TranscribeOptions, language: str, verbose: bool | None,
                 alignment_heads: list[tuple[int, int]] | None = None):
        self.model = model
        self.tokenizer = tokenizer.with_options(language=language, task=options.task)
        self.mel = mel  # (n_mels, content_frames + N_FRAMES)
        self.content_frames = mel.shape[-1] - N_FRAMES
        self.mel_floor = mel.min()  # log_mel_spectrogram clamps at max - 8 (80 dB): the padding is there
        self.duration = duration
        self.options = options
        self.language = language
        self.verbose = verbose
        self.alignment_heads = alignment_heads
        self.input_stride = N_FRAMES // model.dims.n_audio_ctx  # 2 mel frames per timestamp step
        self.time_precision = self.input_stride * HOP_LENGTH / SAMPLE_RATE  # 0.02 s
        self.all_tokens: list[int] = []
        self.prompt_reset_since = 0
        self.initial_prompt_tokens: list[int] = []
        if options.initial_prompt:
            self.initial_prompt_tokens = self.tokenizer.encode(" " + options.initial_prompt.strip())
            self.all_tokens = list(self.initial_prompt_tokens)
        self.n_segments = 0
        self.last_speech_timestamp = 0.0
        self.last_word_end = 0.0  # words never start before the previous word's end
        self.next_seek = 0  # where the window after the current one starts (mel frames)

    def prompt(self) -> list[int]:
        """This window's prompt: the text since the last reset (and the initial prompt when carried)."""
        if not self.options.carry_initial_prompt:
            return self.all_tokens[self.prompt_reset_since:]
        # openai's carry_initial_prompt: initial prompt + as much recent text as fits in n_ctx / 2 - 1
        remaining = self.model.dims.n_text_ctx // 2 - 1 - len(self.initial_prompt_tokens)
        ignored = max(len(self.initial_prompt_tokens), self.prompt_reset_since)
        recent = self.all_tokens[ignored:][-remaining:] if remaining > 0 else []
        return self.initial_prompt_tokens + recent

    def decode_window(self, seek: int, end: int | None = None) -> tuple[DecodingResult, float, int, torch.Tensor]:
        """Decode the window at `seek` (audio up to mel frame `end`): (result, the hottest
        temperature tried, the window's size in frames, its audio features)."""
        segment_size = min(N_FRAMES, (self.content_frames if end is None else end) - seek)
        if self.options.pad_window == "silence":  # whisper.cpp: the mel of the padded audio goes on
            stop = seek + segment_size
            if stop >= self.content_frames or segment_size >= N_FRAMES:
                mel = self.mel[:, seek: seek + N_FRAMES][None]  # self.mel ends with 30 s of silence
            else:  # a clip ending inside the audio: silence after it, not the audio that follows
                silence = self.mel[:, self.mel.shape[1] - (N_FRAMES - segment_size):]
                mel = torch.cat([self.mel[:, seek:stop], silence], dim=1)[None]
        else:  # openai: zero-valued log-mel frames after the window's audio
            mel = pad_or_trim(self.mel[:, seek: seek + segment_size], N_FRAMES)[None]
        audio_features = self.model.embed_audio(mel)  # once per window, for every temperature
        prompt = self.prompt()

        def run(options: DecodingOptions) -> DecodingResult:
            return DecodingTask(self.model, self.tokenizer, options).run(audio_features)[0]

        return (*decode_with_fallback(run, self.options, self.language, prompt), segment_size, audio_features)

    def make_segments(self, seek: int, split: WindowSplit, result: DecodingResult) -> list[dict]:
        """Segments of one window as dicts, times in seconds (not yet clipped or filtered)."""
        time_offset = seek * HOP_LENGTH / SAMPLE_RATE
        return [dict(seek=seek, start=time_offset + start_idx * self.time_precision,
                     end=time_offset + end_idx * self.time_precision, tokens=list(tokens), result=result,
                     text=self.tokenizer.decode_text(tokens), words=None)
                for start_idx, end_idx, tokens in split.pieces]

    def add_words(self, segments: list[dict], audio_features: torch.Tensor, segment_size: int,
                  time_offset: float) -> None:
        add_word_timestamps(segments, self.model, self.tokenizer, audio_features, segment_size, time_offset,
                            self.alignment_heads, prepend_punctuations=self.options.prepend_punctuations,
                            append_punctuations=self.options.append_punctuations,
                            last_speech_timestamp=self.last_speech_timestamp)

    def skip_hallucinations(self, segments: list[dict], seek: int, previous_seek: int, segment_size: int,
                            single_timestamp_ending: bool) -> tuple[int, bool]:
        """openai's hallucination_silence_threshold: drop a likely hallucination surrounded by
        silence and seek past the silence. Returns (seek, whether to skip the whole window);
        trims `segments` in place."""
        threshold = self.options.hallucination_silence_threshold
        time_offset = previous_seek * HOP_LENGTH / SAMPLE_RATE
        window_end_time = (previous_seek + N_FRAMES) * HOP_LENGTH / SAMPLE_RATE
        segment_duration = segment_size * HOP_LENGTH / SAMPLE_RATE
        if not single_timestamp_ending:
            last_word_end = get_end(segments)
            if last_word_end is not None and last_word_end > time_offset:
                remaining = window_end_time - last_word_end
                seek = round(last_word_end * FRAMES_PER_SECOND) if remaining > threshold else previous_seek + segment_size
        # a hallucination first, after a long silence: skip the silence, decode from there
        first = _next_words_segment(segments)
        if first is not None and is_segment_anomaly(first):
            gap = first["start"] - time_offset
            if gap > threshold:
                return previous_seek + round(gap * FRAMES_PER_SECOND), True
        # a hallucination between silences (or other hallucinations): drop it and what follows
        hal_last_end = self.last_speech_timestamp
        for si, segment in enumerate(segments):
            if not segment["words"]:
                continue
            if is_segment_anomaly(segment):
                following = _next_words_segment(segments[si + 1:])
                hal_next_start = following["words"][0]["start"] if following else time_offset + segment_duration
                silence_before = (segment["start"] - hal_last_end > threshold or segment["start"] < threshold
                                  or segment["start"] - time_offset < 2.0)
                silence_after = (hal_next_start - segment["end"] > threshold or is_segment_anomaly(following)
                                 or window_end_time - segment["end"] < 2.0)
                if silence_before and silence_after:
                    seek = round(max(time_offset + 1, segment["start"]) * FRAMES_PER_SECOND)
                    if self.duration - segment["end"] < threshold:
                        seek = self.content_frames
                    segments[si:] = []
                    break
            hal_last_end = segment["end"]
        return seek, False

    def finish(self, segments: list[dict]) -> list[Segment]:
        """Frozen Segments: times clipped to the audio, words monotonic and inside their
        segment, segments without text (or of zero length) dropped."""
        out = []
        for seg in segments:
            result: DecodingResult = seg["result"]
            start, end = min(seg["start"], self.duration), min(seg["end"], self.duration)
            words = None
            if seg["words"] is not None:
                words = []
                for w in seg["words"]:
                    w_start = min(max(w["start"], self.last_word_end), self.duration)
                    w_end = min(max(w["end"], w_start), self.duration)
                    words.append(Word(w["word"], round(w_start, 3), round(w_end, 3), w["probability"]))
                    self.last_word_end = w_end
                if words:  # the segment spans its words (openai moves it to them too)
                    start, end = words[0].start, words[-1].end
            if round(start, 3) >= round(end, 3) or not seg["text"].strip():
                continue  # instantaneous or without words
            out.append(Segment(
                id=self.n_segments, seek=seg["seek"], start=round(start, 3), end=round(end, 3), text=seg["text"],
                tokens=seg["tokens"], temperature=result.temperature, avg_logprob=result.avg_logprob,
                compression_ratio=result.compression_ratio, no_speech_prob=result.no_speech_prob, words=words))
            self.n_segments += 1
        return out

    def clips(self) -> list[tuple[int, int]]:
        """(start, end) mel frames of the parts to transcribe (openai's clip_timestamps: start,end
        pairs in seconds, the last end defaulting to the end of the audio)."""
        points = [min(round(t * FRAMES_PER_SECOND), self.content_frames) for t in self.options.clip_timestamps]
        if len(points) % 2 == 1:
            points.append(self.content_frames)
        return list(zip(points[::2], points[1::2]))

    def segments(self) -> Iterator[Segment]:
        from tqdm import tqdm

        show_progress = self.verbose is not False and sys.stderr.isatty()
        seek = 0
        with tqdm(total=self.content_frames, unit="frames", disable=not show_progress, file=sys.stderr) as bar:
            for clip_start, clip_end in self.clips():
                seek = max(seek, clip_start)
                while seek < clip_end:
                    previous_seek = seek
                    yield from self.window(seek, clip_end)
                    seek = self.next_seek
                    bar.update(min(self.content_frames, seek) - previous_seek)

    def window(self, seek: int, clip_end: int) -> Iterator[Segment]:
        """Transcribe the window at `seek` (up to clip_end): its segments; sets self.next_seek."""
        previous_seek = seek
        time_offset = seek * HOP_LENGTH / SAMPLE_RATE
        segment_size = min(N_FRAMES, clip_end - seek)
        if bool((self.mel[:, seek: seek + segment_size] <= self.mel_floor).all()):
            # nothing above the log-mel floor (80 dB under the file's peak, digital silence):
            # Whisper hallucinates on such windows (" you"), and there is nothing to transcribe
            self.next_seek = seek + segment_size
            return
        result, temperature, segment_size, audio_features = self.decode_window(seek, clip_end)
        if is_silence(result, self.options):
            self.next_seek = seek + segment_size
            return
        split = split_window(result.tokens, self.tokenizer, segment_size, self.input_stride)
        current = self.make_segments(seek, split, result)
        seek += split.seek_advance if split.seek_advance > 0 else segment_size
        single_timestamp_ending = split.single_timestamp_ending
        if self.options.word_timestamps:
            self.add_words(current, audio_features, segment_size, time_offset)
            if not single_timestamp_ending:
                last_word_end = get_end(current)
                if last_word_end is not None and last_word_end > time_offset:
                    seek = round(last_word_end * FRAMES_PER_SECOND)
            if self.options.hallucination_silence_threshold is not None:
                seek, skip = self.skip_hallucinations(current, seek, previous_seek, segment_size,
                                                      single_timestamp_ending)
                if skip:
                    self.next_seek = seek
                    return
            last_word_end = get_end(current)
            if last_word_end is not None:
                self.last_speech_timestamp = last_word_end
        if seek <= previous_seek:
            seek = previous_seek + segment_size  # never stall
        self.next_seek = seek
        for segment in self.finish(current):
            self.all_tokens.extend(segment.tokens)
            if self.verbose:
                print(format_line(segment), flush=True)
            yield segment
        if not self.options.condition_on_previous_text or temperature > self.options.prompt_reset_on_temperature:
            self.prompt_reset_since = len(self.all_tokens)


def format_line(segment: Segment) -> str:
    """'[00:00.000 --> 00:05.000]  text' as openai's verbose output prints it."""
    from .writers import format_timestamp

    return f"[{format_timestamp(segment.start)} --> {format_timestamp(segment.end)}] {segment.text}"


def _model_parts(model, tokenizer: Tokenizer | None, mel_filters) -> tuple[object, Tokenizer, object]:
    """(torch model, tokenizer, mel filters) from a WhisperModel or a bare model + parts."""
    if isinstance(model, WhisperModel):
        return model.model, tokenizer or model.tokenizer, model.mel_filters if mel_filters is None else mel_filters
    if tokenizer is None or mel_filters is None:
        raise TypeError("transcribe() needs tokenizer= and mel_filters= with a bare model "
                        "(or pass a WhisperModel)")
    return model, tokenizer, mel_filters


def _load_samples(audio) -> torch.Tensor:
    if isinstance(audio, (str, os.PathLike)):
        audio = load_audio(os.fspath(audio))
    if isinstance(audio, np.ndarray):
        audio = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    if not torch.is_tensor(audio) or audio.ndim != 1:
        raise OptionError("audio must be a file path, '-', or a 1-D float32 array of 16 kHz samples")
    return audio.to(torch.float32)


@torch.no_grad()
def transcribe(model, audio, options: TranscribeOptions | None = None, *, tokenizer: Tokenizer | None = None,
               mel_filters=None, verbose: bool | None = None, **overrides) -> tuple[Iterator[Segment], TranscriptionInfo]:
    """Transcribe a file (path, '-') or 16 kHz mono float32 samples.

    model: a WhisperModel, or a qwhisper.model.Whisper with tokenizer= and mel_filters= given.
    Keyword overrides replace TranscribeOptions fields (transcribe(m, "a.wav", language="de")).
    verbose: True prints each segment as it is decoded; False turns the progress bar off too.
    Returns (lazy segment iterator, info); decoding happens while iterating.
    """
    options = dataclasses.replace(options or TranscribeOptions(), **overrides)
    if options.batch_size > 1:
        from .batched import transcribe_batched

        return transcribe_batched(model, audio, options, tokenizer=tokenizer, mel_filters=mel_filters,
                                  verbose=verbose)
    heads = getattr(model, "alignment_heads", None) if isinstance(model, WhisperModel) else None
    model, tokenizer, mel_filters = _model_parts(model, tokenizer, mel_filters)
    if options.word_timestamps:
        if isinstance(model, NumpyWhisper):
            raise OptionError("word_timestamps needs the torch backend (the numpy golden returns no attention weights)")
        heads = heads or alignment_heads_for(model.dims)
        if options.task == "translate":
            import warnings

            warnings.warn("word-level timestamps on translations may not be reliable (openai's warning)",
                          stacklevel=2)
    samples = _load_samples(audio)
    duration = samples.shape[0] / SAMPLE_RATE
    filters = torch.as_tensor(np.asarray(mel_filters, dtype=np.float32))
    mel = log_mel_spectrogram_torch(samples.to(model.device), filters.to(model.device), padding=N_SAMPLES)

    language, probability, all_probs = _choose_language(model, tokenizer, mel, options, verbose)
    info = TranscriptionInfo(language=language, language_probability=probability, duration=duration,
                             options=options, all_language_probs=all_probs)
    return _Transcription(model, tokenizer, mel, duration, options, language, verbose, heads).segments(), info


def _choose_language(model, tokenizer: Tokenizer, mel: torch.Tensor, options: TranscribeOptions,
                     verbose: bool | None) -> tuple[str, float, list[tuple[str, float]] | None]:
    if not tokenizer.is_multilingual:
        if options.language not in (None, "en"):
            raise OptionError(f"language {options.language!r}: this model is English-only")
        return "en", 1.0, None
    if options.language is not None:
        return options.language, 1.0, None
    features = model.embed_audio(pad_or_trim(mel, N_FRAMES)[None])
    _, probs = detect_language(model, features, tokenizer)
    ranked = sorted(probs[0].items(), key=lambda kv: kv[1], reverse=True)
    if verbose:
        print(f"Detected language: {LANGUAGES[ranked[0][0]].title()} ({ranked[0][1]:.2f})", file=sys.stderr)
    return ranked[0][0], ranked[0][1], ranked


# --- the model facade ----------------------------------------------------------------------------

def resolve_device(device: str | torch.device | None) -> torch.device:
    """'auto' (or None) -> cuda if available, else cpu."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise OptionError("device 'cuda' requested but torch sees no CUDA GPU (use --device cpu)")
    return device


class _NumpyCache:
    """One model_ref.DecoderCacheRef per row, behind the torch KVCache's interface."""

    def __init__(self, rows: list):
        self.rows = rows

    @property
    def offset(self) -> int:
        return self.rows[0].offset

    def reorder(self, indices: torch.Tensor) -> None:
        import copy

        self.rows = [copy.deepcopy(self.rows[i]) for i in indices.tolist()]


class NumpyWhisper:
    """The numpy golden (qwhisper.model_ref) behind the torch model's interface (embed_audio,
    new_kv_cache, logits), one row at a time: `--backend numpy`, to debug on the reference."""

    def __init__(self, ggml):
        from . import model_ref

        self._ref = model_ref
        self._weights = model_ref.Weights(ggml)
        self.dims = ggml.hparams
        self.device = torch.device("cpu")

    def embed_audio(self, mel: torch.Tensor) -> torch.Tensor:
        """mel (B, n_mels, 3000) -> (B, n_audio_ctx, n_audio_state) float32."""
        rows = [self._ref.encode(self._weights, m) for m in mel.detach().cpu().float().numpy()]
        return torch.from_numpy(np.stack(rows))

    def new_kv_cache(self, audio_features: torch.Tensor, n_group: int = 1) -> _NumpyCache:
        return _NumpyCache([self._ref.DecoderCacheRef.new(self._weights, x)
                            for x in audio_features.detach().cpu().float().numpy() for _ in range(n_group)])

    def logits(self, tokens: torch.Tensor, cache: _NumpyCache) -> torch.Tensor:
        """tokens (B, T) -> (B, T, n_vocab) float32; advances every row's cache."""
        rows = [self._ref.decode(self._weights, row, c) for row, c in zip(tokens.cpu().numpy(), cache.rows)]
        return torch.from_numpy(np.stack(rows).astype(np.float32))


BACKENDS = ("torch", "numpy")
COMPUTE_TYPES = ("auto", "float16", "float32")


class WhisperModel:
    """A loaded model with its tokenizer and mel filters: `WhisperModel("tiny.en").transcribe("a.wav")`.

    model: a name ("tiny.en", "base-q5_1", resolved by qwhisper.models) or a GGML file path.
    backend: "torch" (qwhisper.model on `device`; Triton kernels on CUDA) or "numpy" (the golden
    reference, qwhisper.model_ref, on the CPU).
    compute_type: activation dtype of the torch backend: "auto" (float16 on CUDA, float32 on the
    CPU), "float16" (CUDA only) or "float32" (weights stay in their GGML type either way; float32
    on CUDA follows the golden more closely at some speed cost, docs/reports/gpu-end-to-end.md).
    cache_decoder_weights: on CUDA, keep a dequantized copy (the activation dtype) of every
    quantized decoder weight, so batched and beam steps run cuBLAS on it instead of dequantizing
    each weight at every step. Costs VRAM (large-v3 q5_0: +1.8 GB in float16, against 1.1 GB of
    weights) for speed on batched long-form (docs/batched.md); one-row steps read the quantized
    blocks either way. Off by default: weights in VRAM = the file's size.
    """

    def __init__(self, model: str | os.PathLike = "tiny.en", device: str | torch.device = "auto",
                 backend: str = "torch", compute_type: str = "auto", cache_decoder_weights: bool = False):
        from .ggml_file import read_ggml
        from .models import resolve_model

        if backend not in BACKENDS:
            raise OptionError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
        if compute_type not in COMPUTE_TYPES:
            raise OptionError(f"compute_type must be one of {', '.join(COMPUTE_TYPES)}, not {compute_type!r}")
        self.path = Path(resolve_model(model))
        ggml = read_ggml(self.path)
        self.backend = backend
        if backend == "numpy":
            if str(device) not in ("auto", "cpu"):
                raise OptionError(f"the numpy backend runs on the CPU, not on {device!r}")
            if cache_decoder_weights:
                raise OptionError("cache_decoder_weights is an option of the torch backend, not of the numpy one")
            self.device = torch.device("cpu")
            self.model = NumpyWhisper(ggml)
        else:
            from .loader import load_model

            self.device = resolve_device(device)
            if compute_type == "float16" and self.device.type != "cuda":
                raise OptionError(f"compute_type float16 needs a CUDA device, not {str(self.device)!r}")
            dtype = None if compute_type == "auto" else getattr(torch, compute_type)
            self.model = load_model(ggml, self.device, dtype=dtype)
            if cache_decoder_weights:
                self.model.cache_decoder_weights()
        self.tokenizer = Tokenizer.from_ggml(ggml)
        self.mel_filters = np.array(ggml.mel_filters, dtype=np.float32)
        self.dims = ggml.hparams
        # cross-attention heads that follow the speech (word timestamps); by name, else by shape
        self.alignment_heads = alignment_heads_for(self.dims, model if isinstance(model, str) else self.path.name)

    @property
    def is_multilingual(self) -> bool:
        return self.tokenizer.is_multilingual

    def transcribe(self, audio, options: TranscribeOptions | None = None, *, verbose: bool | None = None,
                   **overrides) -> tuple[Iterator[Segment], TranscriptionInfo]:
        return transcribe(self, audio, options, verbose=verbose, **overrides)

    def __repr__(self) -> str:
        return f"WhisperModel({str(self.path)!r}, device={str(self.device)!r}, backend={self.backend!r})"


def load_model(name: str | os.PathLike = "tiny.en", device: str | torch.device = "auto",
               backend: str = "torch", compute_type: str = "auto", cache_decoder_weights: bool = False) -> WhisperModel:
    return WhisperModel(name, device, backend, compute_type, cache_decoder_weights)


# --- command line --------------------------------------------------------------------------------

def _optional_float(s: str) -> float | None:
    return None if s.lower() == "none" else float(s)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .models import DEFAULT_MODEL
    from .writers import FORMATS

    # fmt: off
    parser.add_argument("audio", nargs="+", help="audio files to transcribe ('-' reads stdin)")
    parser.add_argument("--model", "-m", default=DEFAULT_MODEL, help="model name (tiny.en, base-q5_1, ...) or GGML file path")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available)")
    parser.add_argument("--backend", default="torch", choices=BACKENDS, help="torch model, or the numpy golden reference (CPU)")
    parser.add_argument("--compute-type", default="auto", choices=COMPUTE_TYPES,
                        help="activation dtype: auto (float16 on CUDA, float32 on CPU), float16 or float32")
    parser.add_argument("--cache-decoder-weights", action="store_true",
                        help="CUDA: keep dequantized copies of the decoder's weights (faster --batch-size / beams, more VRAM)")
    parser.add_argument("--language", "-l", default=None, help="spoken language (code or name); default or 'auto': detect (English for .en models)")
    parser.add_argument("--task", default="transcribe", choices=["transcribe", "translate"], help="transcribe, or translate to English")
    parser.add_argument("--temperature", type=float, default=0.0, help="sampling temperature of the first try")
    parser.add_argument("--temperature-increment-on-fallback", type=_optional_float, default=0.2,
                        help="temperature step of the fallback up to 1.0 ('none' disables the fallback)")
    parser.add_argument("--beam-size", type=int, default=None, help="beams of beam search at temperature 0 (default greedy)")
    parser.add_argument("--best-of", type=int, default=None, help="samples per window at temperature > 0")
    parser.add_argument("--patience", type=float, default=None, help="beam search patience")
    parser.add_argument("--length-penalty", type=float, default=None, help="alpha of the length penalty ranking candidates (default: divide by length)")
    parser.add_argument("--initial-prompt", default=None, help="text given as the first window's prompt")
    parser.add_argument("--carry-initial-prompt", action="store_true", help="keep the initial prompt at the head of every window's prompt")
    parser.add_argument("--no-condition-on-previous-text", dest="condition_on_previous_text", action="store_false",
                        help="do not give the previous window's text as the prompt")
    parser.add_argument("--prompt-reset-on-temperature", type=float, default=0.5, help="no previous-text prompt after a window decoded above this temperature")
    parser.add_argument("--compression-ratio-threshold", type=_optional_float, default=2.4, help="fallback above this gzip ratio")
    parser.add_argument("--logprob-threshold", type=_optional_float, default=-1.0, help="fallback below this average log probability")
    parser.add_argument("--no-speech-threshold", type=_optional_float, default=0.6, help="silence above this no-speech probability")
    parser.add_argument("--suppress-tokens", default="-1", help="comma-separated token ids to suppress (-1: non-speech symbols)")
    parser.add_argument("--no-suppress-blank", dest="suppress_blank", action="store_false", help="allow a blank as the first token")
    parser.add_argument("--without-timestamps", action="store_true", help="decode text only (one segment per window)")
    parser.add_argument("--max-initial-timestamp", type=_optional_float, default=1.0, help="latest first timestamp, seconds ('none': any)")
    parser.add_argument("--sample-len", type=int, default=None, help="most tokens sampled per window (default n_text_ctx / 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling at temperature > 0")
    parser.add_argument("--no-repeat-ngram-size", type=int, default=0, help="ban repeating an n-gram of this size within a window (0: off)")
    parser.add_argument("--batch-size", type=int, default=0,
                        help="N > 1: cut at silences into <= 30-s chunks, decode N chunks (of all files) at once, no previous-text prompt")
    parser.add_argument("--word-timestamps", action="store_true", help="word-level timestamps (cross-attention DTW), in json/srt/vtt")
    parser.add_argument("--prepend-punctuations", default=PREPEND_PUNCTUATIONS, help="with --word-timestamps: merged into the next word")
    parser.add_argument("--append-punctuations", default=APPEND_PUNCTUATIONS, help="with --word-timestamps: merged into the previous word")
    parser.add_argument("--hallucination-silence-threshold", type=_optional_float, default=None,
                        help="with --word-timestamps: skip silences longer than this (s) around a likely hallucination")
    parser.add_argument("--pad-window", default="silence", choices=PAD_WINDOW,
                        help="complete a short window with the mel of silence (default, as whisper.cpp) or zero log-mel frames (openai)")
    parser.add_argument("--clip-timestamps", default="0", help="start,end,start,end,... seconds to transcribe (last end: the audio's end)")
    parser.add_argument("--max-line-width", type=int, default=None, help="srt/vtt: characters per line before a break (needs --word-timestamps)")
    parser.add_argument("--max-line-count", type=int, default=None, help="srt/vtt: lines per cue (needs --max-line-width)")
    parser.add_argument("--max-words-per-line", type=int, default=None, help="srt/vtt: words per cue line (needs --word-timestamps)")
    parser.add_argument("--highlight-words", action="store_true", help="srt/vtt: underline each word as it is spoken (needs --word-timestamps)")
    parser.add_argument("--output-format", "-f", default="all", help=f"{', '.join(FORMATS)}, a comma list, or all")
    parser.add_argument("--output-dir", "-o", default=".", help="directory for the output files")
    parser.add_argument("--verbose", dest="verbose", action="store_true", default=True, help="print segments as they are decoded")
    parser.add_argument("--quiet", "-q", dest="verbose", action="store_false", help="print nothing but errors")
    # fmt: on


def options_from_args(args: argparse.Namespace) -> TranscribeOptions:
    """TranscribeOptions from the parsed CLI: every field has its flag of the same name
    (--beam-size -> beam_size, --no-suppress-blank -> suppress_blank); the temperature list is
    --temperature stepped by --temperature-increment-on-fallback up to 1.0."""
    t0, step = args.temperature, args.temperature_increment_on_fallback
    temperatures = (t0,) if step is None or step <= 0 else tuple(np.arange(t0, 1.0 + 1e-6, step).round(6))
    fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(TranscribeOptions)
              if f.name != "temperature" and hasattr(args, f.name)}
    return TranscribeOptions(temperature=temperatures or (t0,), **fields)


def writer_options_from_args(args: argparse.Namespace) -> dict:
    """srt/vtt layout options (openai's ResultWriter options), checked as openai's CLI does."""
    opts = {k: getattr(args, k) for k in ("max_line_width", "max_line_count", "max_words_per_line", "highlight_words")}
    if not args.word_timestamps:
        for k in ("max_line_width", "max_words_per_line", "highlight_words"):
            if opts[k]:
                raise OptionError(f"--{k.replace('_', '-')} requires --word-timestamps")
    if opts["max_line_count"] and not opts["max_line_width"]:
        raise OptionError("--max-line-count requires --max-line-width")
    if opts["max_words_per_line"] and opts["max_line_width"]:
        raise OptionError("--max-words-per-line has no effect with --max-line-width: give one of them")
    for k in ("max_line_width", "max_line_count", "max_words_per_line"):
        if opts[k] is not None and opts[k] < 1:
            raise OptionError(f"--{k.replace('_', '-')} must be >= 1, not {opts[k]}")
    return opts


def run(args: argparse.Namespace) -> int:
    from .writers import resolve_formats, write_result

    options = options_from_args(args)
    writer_options = writer_options_from_args(args)
    try:
        resolve_formats(args.output_format)
    except ValueError as e:
        raise OptionError(f"--output-format: {e}") from None
    model = WhisperModel(args.model, args.device, args.backend, args.compute_type, args.cache_decoder_weights)
    if options.batch_size > 1:  # the chunks of all files share batches (qwhisper.batched)
        from .batched import transcribe_files

        results = transcribe_files(model, args.audio, options, verbose=args.verbose)
    else:
        results = _transcribe_each(model, args.audio, options, args.verbose)
    failed = 0
    for path, segments, info in results:
        if isinstance(segments, Exception):  # unreadable audio: say so, go on with the next file
            print(f"qwhisper transcribe: error: {segments}", file=sys.stderr)
            failed += 1
            continue
        written = write_result(segments, path, args.output_dir, args.output_format, language=info.language,
                               **writer_options)
        if args.verbose:
            print(f"wrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    return 1 if failed else 0


def _transcribe_each(model: WhisperModel, paths: list[str], options: TranscribeOptions, verbose: bool | None):
    """(path, segments, info) per file, one after the other; (path, AudioError, None) for a file
    that can't be read (the shape of qwhisper.batched.transcribe_files' results)."""
    from .audio import AudioError

    for path in paths:
        try:
            segments, info = model.transcribe(path, options, verbose=verbose)
            yield path, list(segments), info
        except AudioError as e:
            yield path, e, None


__all__ = [
    "NumpyWhisper",
    "Segment",
    "TranscribeOptions",
    "TranscriptionInfo",
    "WhisperModel",
    "WindowSplit",
    "Word",
    "add_arguments",
    "decode_with_fallback",
    "format_line",
    "is_segment_anomaly",
    "is_silence",
    "load_model",
    "needs_fallback",
    "options_from_args",
    "resolve_device",
    "run",
    "split_window",
    "transcribe",
    "word_anomaly_score",
    "writer_options_from_args",
]
