"""Batched long-form transcription (faster-whisper's BatchedInferencePipeline): the file is cut
into <= 30-s chunks at silences up front, and many chunks are encoded and decoded together.

The sequential seek loop (transcribe.py) must finish window k before it knows where window k + 1
starts and what its prompt is; that keeps one row in the decoder and one window in the encoder,
which leaves a GPU mostly idle. Here the chunk boundaries come from the audio alone, so:

  1. chunking (numpy, no model): an energy detector marks speech on the 10-ms mel-frame grid;
     silences of `min_silence_s` or more are skipped (never decoded); a speech region longer than
     30 s is cut at the quietest point (lowest 0.2-s mean power) of the last `search_s` before
     each 30-s limit, so cuts fall in pauses between words, not inside them;
  2. the log-mel of the whole file is computed once (as the seek loop does: the same
     max - 8 dB floor), each chunk is its slice, padded to 3000 frames like a short window
     (TranscribeOptions.pad_window);
  3. up to `batch_size` chunks (from one file or several) go through the encoder as one batch
     and through decoding.DecodingTask as one batch: B rows in one KVCache, the logit filters
     (timestamp rules, suppression, max initial timestamp) applied to all rows at once, rows
     that reached <|endoftext|> padded with it until every row has (static shapes: a step of
     <= model.GRAPH_MAX_ROWS rows still replays the CUDA graph; bigger batches run eagerly);
  4. each window's prompt is <|startoftranscript|><|lang|><|transcribe|> (after the initial
     prompt, if given): no previous-text conditioning, the chunks run in parallel;
  5. a window whose result fails the compression-ratio / logprob thresholds is decoded again
     alone with transcribe.decode_with_fallback (the hotter temperatures), as the seek loop would;
  6. its timestamp tokens become segments offset by the window's start; when the complete
     segments end `tail_margin_s` or more before the chunk's end (Whisper leaves the last
     sentence of a 30-s window to the next one, and sometimes stops early at a change of
     speaker), the rest of the chunk -- the tail -- goes into the next batch as a window of its
     own: the seek loop's step, run per chunk (BatchedPipeline._segments).

Segments come out in time order per file, as the same Segment / TranscriptionInfo objects.
Word timestamps are added per window (transcribe's DTW on that window's audio features);
hallucination_silence_threshold moves `seek`, which fixed chunks do not have: refused.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .audio import HOP_LENGTH, N_FRAMES, N_SAMPLES, SAMPLE_RATE, log_mel_spectrogram_torch, pad_or_trim
from .decoding import DecodingResult, DecodingTask, OptionError
from .tokenizer import Tokenizer

FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100: chunks are cut on the mel-frame grid


# --- chunking ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VadOptions:
    """The energy detector's settings (seconds, dB)."""

    max_chunk_s: float = 30.0  # a chunk is one encoder window at most
    search_s: float = 10.0  # a long region is cut at the quietest point of the last search_s of a chunk
    min_silence_s: float = 2.0  # silences at least this long are skipped; shorter ones stay in chunks
    speech_pad_s: float = 0.2  # speech is widened by this on both sides (soft onsets, trailing consonants)
    min_speech_s: float = 0.25  # shorter loud stretches alone (clicks) are not speech
    floor_margin_db: float = 10.0  # speech: above the noise floor (5th percentile of frames) + this ...
    max_range_db: float = 40.0  # ... and above the loudest frames (99th percentile) - this ...
    min_range_db: float = 20.0  # ... but never needing more than loudest - this; and always
    silence_db: float = -80.0  # above this absolute level (dB re full scale: ~3 LSB rms of 16-bit audio)
    # a chunk whose complete segments end this long or more before its end is decoded again
    # from there (BatchedPipeline._segments); None: never
    tail_margin_s: float | None = 1.0

    def __post_init__(self):
        if not 0 < self.max_chunk_s <= N_SAMPLES / SAMPLE_RATE:
            raise OptionError(f"max_chunk_s must be in (0, 30] seconds, not {self.max_chunk_s}")
        if not 0 < self.search_s <= self.max_chunk_s:
            raise OptionError(f"search_s must be in (0, max_chunk_s], not {self.search_s}")
        for name in ("min_silence_s", "speech_pad_s", "min_speech_s"):
            if getattr(self, name) < 0:
                raise OptionError(f"{name} must be >= 0, not {getattr(self, name)}")
        if self.tail_margin_s is not None and self.tail_margin_s < 0:
            raise OptionError(f"tail_margin_s must be >= 0 or None, not {self.tail_margin_s}")


_POWER_FRAMES = 4096  # frames a pass of frame_power on the CPU: a 5-MB float64 buffer, reused


def frame_power(samples: np.ndarray | torch.Tensor) -> np.ndarray:
    """Mean square of each 10-ms frame: samples (n,) float -> (ceil(n / 160),) float64; frame i
    covers samples [160 i, 160 i + 160), mel frame i's hop (the last one zero-padded).

    A torch tensor on a GPU is reduced there (the pipeline's samples are on the model's device
    for the log-mel): on the CPU this pass over the whole file took 64 ms of a 0.76-s batched
    large-v3 run on the H100 host, with the GPU idle. Elsewhere numpy, in passes of
    _POWER_FRAMES frames, whose per-frame sums are the same as one pass over the whole file
    (without the 240 MB of temporaries, whose page faults made it 0.3 s on a first call).
    Both sum the float64 squares of a frame; for 16-bit PCM samples (k / 32768, load_audio)
    every such sum is exact, so the two agree bit for bit (other samples: to the last bit).
    """
    if isinstance(samples, torch.Tensor) and samples.device.type != "cpu":
        x = samples.to(torch.float64)
        n = -(-x.shape[0] // HOP_LENGTH)
        x = torch.nn.functional.pad(x, (0, n * HOP_LENGTH - x.shape[0]))
        # the sums come back and are divided here, as numpy's mean does: on a GPU torch's mean, and
        # its division by a Python number, multiply by 1/160 instead (a second rounding)
        return x.view(n, HOP_LENGTH).square().sum(dim=1).cpu().numpy() / HOP_LENGTH
    x = samples.numpy() if isinstance(samples, torch.Tensor) else np.asarray(samples)
    n = -(-len(x) // HOP_LENGTH)
    out = np.empty(n, np.float64)
    buf = np.empty((min(n, _POWER_FRAMES), HOP_LENGTH), np.float64)
    for f0 in range(0, n, _POWER_FRAMES):
        rows = buf[:min(n - f0, _POWER_FRAMES)]
        part = x[f0 * HOP_LENGTH: (f0 + len(rows)) * HOP_LENGTH]
        if part.size < rows.size:  # the last frame, zero-padded
            rows[-1] = 0.0
        rows.reshape(-1)[:part.size] = part
        np.square(rows, out=rows)
        out[f0:f0 + len(rows)] = rows.mean(axis=1)
    return out


def _moving_mean(x: np.ndarray, width: int) -> np.ndarray:
    """Centred mean over `width` frames (edges: over the frames that exist)."""
    if width <= 1 or len(x) == 0:
        return x
    c = np.concatenate([[0.0], np.cumsum(x)])
    idx = np.arange(len(x))
    lo = np.clip(idx - width // 2, 0, len(x))
    hi = np.clip(idx - width // 2 + width, 0, len(x))
    return (c[hi] - c[lo]) / (hi - lo)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True."""
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))


def _edges(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the runs of True, as arrays: run i is [starts[i], ends[i])."""
    d = np.diff(mask.astype(np.int8), prepend=np.int8(0), append=np.int8(0))
    return np.flatnonzero(d == 1), np.flatnonzero(d == -1)


def _covered(n: int, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """(n,) bool: True inside any [starts[i], ends[i]) (ranges may overlap)."""
    marks = np.zeros(n + 1, np.int32)
    np.add.at(marks, starts, 1)
    np.add.at(marks, ends, -1)
    return np.cumsum(marks[:n]) > 0


def speech_mask(power: np.ndarray, vad: VadOptions = VadOptions()) -> np.ndarray:
    """Frames (10 ms) to decode: loud frames (adaptive threshold, see VadOptions), minus lone
    blips, widened by speech_pad_s, with the silences shorter than min_silence_s filled in.
    Array operations on the runs' edges: a Python loop per run took milliseconds on a file
    of thousands of blips."""
    n = len(power)
    if n == 0:
        return np.zeros(0, bool)
    db = 10 * np.log10(_moving_mean(power, 5) + 1e-12)  # 50-ms smoothing: no flicker inside words
    floor, loud = np.percentile(db, [5, 99])
    threshold = min(max(floor + vad.floor_margin_db, loud - vad.max_range_db), loud - vad.min_range_db)
    threshold = max(threshold, vad.silence_db)  # digital silence (or near) is never speech
    starts, ends = _edges(db > threshold)
    keep = ends - starts >= round(vad.min_speech_s * FRAMES_PER_SECOND)  # lone blips out
    pad = round(vad.speech_pad_s * FRAMES_PER_SECOND)
    mask = _covered(n, np.maximum(starts[keep] - pad, 0), np.minimum(ends[keep] + pad, n))
    starts, ends = _edges(mask)
    short = starts[1:] - ends[:-1] < round(vad.min_silence_s * FRAMES_PER_SECOND)
    return mask | _covered(n, ends[:-1][short], starts[1:][short])


def split_region(start: int, end: int, quiet: np.ndarray, max_frames: int, search_frames: int) -> list[tuple[int, int]]:
    """Cut the region [start, end) (frames) into pieces of <= max_frames: each cut at the
    minimum of `quiet` (smoothed power) in the last search_frames before the limit (the latest
    such frame on ties, so that chunks stay long). Returns [(start, end), ...] covering it."""
    out = []
    while end - start > max_frames:
        lo, hi = start + max_frames - search_frames, start + max_frames  # candidate cuts: (lo, hi]
        window = quiet[lo + 1: hi + 1]
        cut = lo + 1 + (len(window) - 1 - int(np.argmin(window[::-1])))
        out.append((start, cut))
        start = cut
    out.append((start, end))
    return out


def chunk_audio(samples: np.ndarray | torch.Tensor, vad: VadOptions = VadOptions(),
                clips: Sequence[tuple[int, int]] | None = None) -> list[tuple[int, int]]:
    """The chunks of a file: [(start, end), ...] in mel frames (10 ms), in order, each at most
    vad.max_chunk_s long, non-overlapping, together covering every frame of speech.

    clips: (start, end) frame ranges to transcribe (TranscribeOptions.clip_timestamps); frames
    outside them are treated as silence. samples may be a torch tensor on a GPU (frame_power).
    """
    power = frame_power(samples)
    mask = speech_mask(power, vad)
    if clips is not None:
        inside = np.zeros(len(mask), bool)
        for a, b in clips:
            inside[a:b] = True
        mask &= inside
    quiet = _moving_mean(power, 20)  # 0.2 s: a pause between words, not a stop consonant
    max_frames = round(vad.max_chunk_s * FRAMES_PER_SECOND)
    search = max(1, min(round(vad.search_s * FRAMES_PER_SECOND), max_frames - 1))
    chunks = []
    for a, b in _runs(mask):
        chunks += split_region(a, b, quiet, max_frames, search)
    return chunks


# --- one batch of chunks -------------------------------------------------------------------------

def chunk_mel(mel: torch.Tensor, content_frames: int, start: int, end: int, pad_window: str) -> torch.Tensor:
    """The encoder input of chunk [start, end): (n_mels, 3000). mel is the file's log-mel with
    30 s of silence after its content_frames (transcribe's layout). "silence": the chunk's
    frames, then the log-mel of silence (taken from that tail, not the audio after the chunk);
    "zeros": then zero-valued frames (openai's window padding)."""
    piece = mel[:, start:end]
    if pad_window == "zeros" or end - start >= N_FRAMES:
        return pad_or_trim(piece, N_FRAMES)
    if end >= content_frames:
        return mel[:, start: start + N_FRAMES]
    return torch.cat([piece, mel[:, mel.shape[1] - (N_FRAMES - (end - start)):]], dim=1)


def decode_batch(model, tokenizer: Tokenizer, audio_features: torch.Tensor, options, language: str,
                 prompt: Sequence[int]) -> list[tuple[DecodingResult, float]]:
    """Decode B windows at once at the first temperature; the ones that fail the thresholds
    again, alone, at the hotter ones. audio_features (B, n_audio_ctx, n_audio_state) ->
    B (result, the hottest temperature tried), as transcribe.decode_with_fallback returns."""
    from .transcribe import decode_with_fallback, needs_fallback

    t0 = options.temperature[0]
    first = DecodingTask(model, tokenizer, options.decoding_options(t0, language, prompt)).run(audio_features)
    out = []
    for i, result in enumerate(first):
        if len(options.temperature) == 1 or not needs_fallback(result, options):
            out.append((result, t0))
            continue

        def run(decoding_options, i=i, result=result):
            if decoding_options.temperature == t0:
                return result  # already decoded with the batch
            return DecodingTask(model, tokenizer, decoding_options).run(audio_features[i: i + 1])[0]

        out.append(decode_with_fallback(run, options, language, prompt))
    return out


def split_chunk(tokens: Sequence[int], tokenizer: Tokenizer, segment_size: int, input_stride: int = 2):
    """transcribe.split_window's pieces of a chunk's last window, plus the unfinished text after
    the last timestamp pair (the seek loop would decode it again in the next window; when no
    tail is decoded, it is a segment ending at the chunk's end). Every end is clipped to the
    chunk's end. Returns a transcribe.WindowSplit (times in timestamp steps)."""
    from .transcribe import split_window

    split = split_window(tokens, tokenizer, segment_size, input_stride)
    steps = segment_size / input_stride
    used = sum(len(p[2]) for p in split.pieces)
    rest = list(tokens[used:])
    if any(t < tokenizer.eot for t in rest):
        tb = tokenizer.timestamp_begin
        start = rest[0] - tb if rest[0] >= tb else (split.pieces[-1][1] if split.pieces else 0)
        split.pieces.append((start, steps, rest))
    split.pieces = [(min(a, steps), min(b, steps), toks) for a, b, toks in split.pieces]
    return split


# --- files ---------------------------------------------------------------------------------------

@dataclass(eq=False)  # identity: a file is a dict key
class _File:
    """One input: its mel, chunks, what was decoded of each chunk, and the per-file state of
    transcribe's _Transcription (segment ids, word-time monotonicity), which also makes and
    finishes the segments."""

    source: object
    index: int
    info: object = None  # TranscriptionInfo
    error: Exception | None = None
    chunks: list[tuple[int, int]] = field(default_factory=list)
    state: object = None  # transcribe._Transcription
    pieces: dict = field(default_factory=dict)  # chunk -> its segment dicts so far, in time order
    rounds: dict = field(default_factory=dict)  # chunk -> windows decoded (the chunk, then its tails)
    finished: set = field(default_factory=set)  # chunks with no tail left to decode
    emitted: int = 0  # chunks whose segments have been handed out
    segments: list = field(default_factory=list)  # transcribe_files: the segments handed out

    @property
    def done(self) -> bool:
        return self.error is not None or self.emitted == len(self.chunks)


class BatchedPipeline:
    """Chunks of one or many files, decoded `batch_size` windows at a time.

    model: a transcribe.WhisperModel (or a bare model with tokenizer= and mel_filters=).
    """

    def __init__(self, model, options, *, tokenizer: Tokenizer | None = None, mel_filters=None,
                 vad: VadOptions | None = None, verbose: bool | None = None):
        from .transcribe import NumpyWhisper, WhisperModel, _model_parts, alignment_heads_for

        check_options(options)
        heads = model.alignment_heads if isinstance(model, WhisperModel) else None
        self.model, self.tokenizer, mel_filters = _model_parts(model, tokenizer, mel_filters)
        if options.word_timestamps and isinstance(self.model, NumpyWhisper):
            raise OptionError("word_timestamps needs the torch backend (the numpy golden returns no attention weights)")
        self.heads = heads or (alignment_heads_for(self.model.dims) if options.word_timestamps else None)
        if options.word_timestamps and options.task == "translate":
            import warnings

            warnings.warn("word-level timestamps on translations may not be reliable (openai's warning)",
                          stacklevel=2)
        self.filters = torch.as_tensor(np.asarray(mel_filters, dtype=np.float32))
        self.options = options
        self.batch_size = max(1, options.batch_size)
        self.vad = vad or VadOptions()
        self.verbose = verbose
        self.input_stride = N_FRAMES // self.model.dims.n_audio_ctx  # 2 mel frames per timestamp step
        # a tail this long (frames) or longer is decoded again (-1: never)
        self.tail_margin = -1 if self.vad.tail_margin_s is None else round(self.vad.tail_margin_s * FRAMES_PER_SECOND)

    def open(self, source, index: int = 0) -> _File:
        """Load a file, its log-mel (on the model's device), language and chunks."""
        from .transcribe import TranscriptionInfo, _choose_language, _load_samples, _Transcription

        f = _File(source, index)
        samples = _load_samples(source)
        duration = samples.shape[0] / SAMPLE_RATE
        device = self.model.device
        samples = samples.to(device)
        mel = log_mel_spectrogram_torch(samples, self.filters.to(device), padding=N_SAMPLES)
        language, probability, all_probs = _choose_language(self.model, self.tokenizer, mel, self.options,
                                                            self.verbose)
        f.info = TranscriptionInfo(language=language, language_probability=probability, duration=duration,
                                   options=self.options, all_language_probs=all_probs)
        f.state = _Transcription(self.model, self.tokenizer, mel, duration, self.options, language,
                                 self.verbose, self.heads)
        f.chunks = chunk_audio(samples, self.vad, f.state.clips())
        return f

    def run(self, files: Iterable[_File]) -> Iterator[tuple[_File, list]]:
        """(file, the segments of one chunk) in file and time order, decoding batch_size windows
        at a time across files; files are opened lazily (`files` may be a generator), so only
        those with chunks waiting hold a mel. A file without chunks, or one that failed to open,
        comes out once with no segments. The tail of a chunk (see _decode) goes to the front of
        the queue: the next batch decodes it."""
        files = iter(files)
        queue: deque[tuple[_File, int, int]] = deque()  # (file, chunk, first frame to decode)
        exhausted = False
        while True:
            while len(queue) < self.batch_size and not exhausted:
                f = next(files, None)
                if f is None:
                    exhausted = True
                elif f.done:  # no speech, or an error
                    yield f, []
                else:
                    queue.extend((f, k, f.chunks[k][0]) for k in range(len(f.chunks)))
            if not queue:
                return
            batch = [queue.popleft() for _ in range(min(self.batch_size, len(queue)))]
            queue.extendleft(reversed(self._decode(batch)))
            for f in dict.fromkeys(f for f, _, _ in batch):  # each file once, in batch order
                yield from self._emit(f)

    def _emit(self, f: _File) -> Iterator[tuple[_File, list]]:
        """The finished chunks of f that follow the ones already handed out, as Segments."""
        from .transcribe import format_line

        while f.emitted < len(f.chunks) and f.emitted in f.finished:
            segments = f.state.finish(f.pieces.pop(f.emitted, []))
            if self.verbose:
                for s in segments:
                    print(format_line(s), flush=True)
            f.emitted += 1
            yield f, segments

    def _decode(self, batch: list[tuple[_File, int, int]]) -> list[tuple[_File, int, int]]:
        """Encode and decode a batch of windows (chunk k of file f from frame `start` to the
        chunk's end); keep their segments; return the tails to decode again."""
        opts = self.options
        mels = [chunk_mel(f.state.mel, f.state.content_frames, start, f.chunks[k][1], opts.pad_window)
                for f, k, start in batch]
        features = self.model.embed_audio(torch.stack(mels))  # the whole batch in one encoder call
        results: list = [None] * len(batch)
        by_language: dict[str, list[int]] = {}
        for i, (f, _, _) in enumerate(batch):
            by_language.setdefault(f.state.language, []).append(i)
        for language, rows in by_language.items():  # (several files in several languages)
            f0 = batch[rows[0]][0]
            decoded = decode_batch(self.model, f0.state.tokenizer, features[rows], opts, language,
                                   f0.state.initial_prompt_tokens)
            for i, r in zip(rows, decoded):
                results[i] = r
        tails = []
        for i, ((f, k, start), (result, _temperature)) in enumerate(zip(batch, results)):
            f.rounds[k] = f.rounds.get(k, 0) + 1
            tail = self._segments(f, k, start, result, features[i: i + 1])
            if tail is None:
                f.finished.add(k)
            else:
                tails.append((f, k, tail))
        return tails

    def _segments(self, f: _File, k: int, start: int, result: DecodingResult,
                  audio_features: torch.Tensor) -> int | None:
        """Add the segment dicts of one decoded window to f.pieces[k]; return where its tail
        starts (frames), or None.

        A tail is what the seek loop would decode in its next window: Whisper usually stops a
        few seconds before a window's end (a timestamp pair, or a lone timestamp, then
        <|endoftext|>), having been trained on 30-s cuts of longer audio that leave the last
        sentence to the next cut -- and it may stop long before, at a change of speaker. When
        the complete segments end tail_margin or more before the chunk's end, the chunk is
        decoded again from there (in the next batch; at most MAX_ROUNDS windows per chunk).
        Otherwise the unfinished text after the last timestamp pair is kept, as a segment
        ending at the chunk's end.
        """
        from .transcribe import is_silence, split_window

        if is_silence(result, self.options):
            return None
        end = f.chunks[k][1]
        size = end - start
        tr = f.state
        split = split_window(result.tokens, tr.tokenizer, size, self.input_stride)
        covered = round(max((p[1] for p in split.pieces), default=0) * self.input_stride)
        tail = None
        if 0 <= self.tail_margin <= size - covered and covered > 0 and f.rounds[k] < MAX_ROUNDS:
            tail = start + covered
            split.pieces = [(a, min(b, size / self.input_stride), toks) for a, b, toks in split.pieces]
        else:
            split = split_chunk(result.tokens, tr.tokenizer, size, self.input_stride)
        current = tr.make_segments(start, split, result)
        if self.options.word_timestamps:
            # openai's "first word after a pause" rule reads the previous speech's end: the
            # window's start stands for it (the previous chunk may not be decoded yet)
            tr.last_speech_timestamp = start / FRAMES_PER_SECOND
            tr.add_words(current, audio_features, size, start / FRAMES_PER_SECOND)
        f.pieces.setdefault(k, []).extend(current)
        return tail


MAX_ROUNDS = 8  # windows per chunk at most (the chunk, then tails): a stuck decoder ends


def check_options(options) -> None:
    """Options the batched pipeline cannot honour, refused by name."""
    if options.hallucination_silence_threshold is not None:
        raise OptionError("hallucination_silence_threshold moves the seek position, which batched transcription "
                          "(batch_size > 1) does not have: use batch_size 0 for it")


def transcribe_batched(model, audio, options, *, tokenizer: Tokenizer | None = None, mel_filters=None,
                       vad: VadOptions | None = None, verbose: bool | None = None):
    """transcribe() with options.batch_size > 1: (lazy segment iterator, info) of one file."""
    pipeline = BatchedPipeline(model, options, tokenizer=tokenizer, mel_filters=mel_filters, vad=vad,
                               verbose=verbose)
    f = pipeline.open(audio)

    def segments():
        for _, segs in pipeline.run([f]):
            yield from segs

    return segments(), f.info


def transcribe_files(model, sources: Sequence, options, *, vad: VadOptions | None = None,
                     verbose: bool | None = None) -> Iterator[tuple[object, list | Exception, object]]:
    """Transcribe many files with their chunks batched together (the CLI with --batch-size):
    (source, segments, info) per file in input order, or (source, the error, None) for a file
    that could not be read (audio.AudioError)."""
    from .audio import AudioError

    pipeline = BatchedPipeline(model, options, vad=vad, verbose=verbose)

    pending: deque[_File] = deque()  # files opened, in input order, until all before them are done

    def opened():
        for i, source in enumerate(sources):
            try:
                f = pipeline.open(source, i)
            except AudioError as e:
                f = _File(source, i, error=e)
            pending.append(f)
            yield f

    for f, segs in pipeline.run(opened()):
        f.segments.extend(segs)
        while pending and pending[0].done:
            g = pending.popleft()
            yield g.source, (g.error if g.error is not None else g.segments), g.info


__all__ = [
    "BatchedPipeline",
    "VadOptions",
    "check_options",
    "chunk_audio",
    "chunk_mel",
    "decode_batch",
    "frame_power",
    "speech_mask",
    "split_chunk",
    "split_region",
    "transcribe_batched",
    "transcribe_files",
]
