"""Transcript files: txt, srt, vtt, tsv, json -- openai/whisper's formats (whisper/utils.py).

    txt   one segment text per line (stripped)
    srt   "1\\n00:00:01,000 --> 00:00:05,000\\ntext\\n" blocks; hours always written, comma marker
    vtt   "WEBVTT" header, then "00:01.000 --> 00:05.000\\ntext" blocks; hours only when > 0
    tsv   header "start<TAB>end<TAB>text", times in integer milliseconds (no locale trouble)
    json  {"text": ..., "segments": [{id, seek, start, end, text, tokens, ...}], "language": ...}

A segment is anything with `start`, `end` and `text` (a transcribe.Segment, or a dict with
those keys); json writes every field a dataclass segment has (`words` only when there are word
timings). Subtitle texts have "-->" replaced by "->" so a cue cannot be misread, as openai does.

With word timings (segments' `words`: word, start, end), srt and vtt take openai's layout
options: max_line_width (characters per line; with max_line_count, lines per cue, cues then
span segments and break at pauses > 3 s), max_words_per_line, highlight_words (one cue per word
with that word underlined, `<u>word</u>`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

FORMATS = ("txt", "srt", "vtt", "tsv", "json")


def format_timestamp(seconds: float, always_include_hours: bool = False, decimal_marker: str = ".") -> str:
    """[HH:]MM:SS.mmm, rounded to the millisecond."""
    if seconds < 0:
        raise ValueError(f"negative timestamp {seconds}")
    ms = round(seconds * 1000.0)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1_000)
    hours_marker = f"{hours:02d}:" if always_include_hours or hours > 0 else ""
    return f"{hours_marker}{minutes:02d}:{secs:02d}{decimal_marker}{ms:03d}"


def _get(segment: Any, key: str) -> Any:
    return segment[key] if isinstance(segment, Mapping) else getattr(segment, key)


def _as_dict(segment: Any) -> dict:
    if dataclasses.is_dataclass(segment):
        return dataclasses.asdict(segment)
    if isinstance(segment, Mapping):
        return dict(segment)
    return {k: _get(segment, k) for k in ("start", "end", "text")}


def _cue_text(segment: Any) -> str:
    return _get(segment, "text").strip().replace("-->", "->")


def _words(segment: Any) -> list[dict] | None:
    words = segment.get("words") if isinstance(segment, Mapping) else getattr(segment, "words", None)
    if words is None:
        return None
    return [dict(w) if isinstance(w, Mapping) else dataclasses.asdict(w) for w in words]


def _subtitles(segments: list[Any], max_line_width: int | None, max_line_count: int | None,
               max_words_per_line: int | None) -> Iterable[list[dict]]:
    """Cues as lists of words (a word's text starts with "\\n" where a line breaks): openai's
    SubtitlesWriter.iterate_result."""
    preserve_segments = max_line_count is None or max_line_width is None
    max_line_width = max_line_width or 1000
    max_words_per_line = max_words_per_line or 1000
    line_len, line_count = 0, 1
    subtitle: list[dict] = []
    all_words = [_words(s) or [] for s in segments]
    last = next((w["start"] for ws in all_words for w in ws), 0.0)
    for words in all_words:
        chunk_index = 0
        words_count = max_words_per_line
        while chunk_index < len(words):
            remaining = len(words) - chunk_index
            if max_words_per_line > remaining:
                words_count = remaining
            for i, original in enumerate(words[chunk_index: chunk_index + words_count]):
                timing = dict(original)
                long_pause = not preserve_segments and timing["start"] - last > 3.0
                has_room = line_len + len(timing["word"]) <= max_line_width
                seg_break = i == 0 and len(subtitle) > 0 and preserve_segments
                if line_len > 0 and has_room and not long_pause and not seg_break:
                    line_len += len(timing["word"])  # the line goes on
                else:  # a new line
                    timing["word"] = timing["word"].strip()
                    if (len(subtitle) > 0 and max_line_count is not None
                            and (long_pause or line_count >= max_line_count)) or seg_break:
                        yield subtitle  # ... in a new cue
                        subtitle = []
                        line_count = 1
                    elif line_len > 0:
                        line_count += 1
                        timing["word"] = "\n" + timing["word"]
                    line_len = len(timing["word"].strip())
                subtitle.append(timing)
                last = timing["start"]
            chunk_index += max_words_per_line
    if subtitle:
        yield subtitle


def iterate_cues(segments: Iterable[Any], max_line_width: int | None = None, max_line_count: int | None = None,
                 highlight_words: bool = False, max_words_per_line: int | None = None
                 ) -> Iterable[tuple[float, float, str]]:
    """(start, end, text) of each srt/vtt cue: one per segment, or laid out from word timings."""
    segments = list(segments)
    if not segments or _words(segments[0]) is None:
        for seg in segments:
            yield _get(seg, "start"), _get(seg, "end"), _cue_text(seg)
        return
    for subtitle in _subtitles(segments, max_line_width, max_line_count, max_words_per_line):
        text = "".join(w["word"] for w in subtitle).replace("-->", "->")
        if not highlight_words:
            yield subtitle[0]["start"], subtitle[-1]["end"], text
            continue
        last = subtitle[0]["start"]
        words = [w["word"] for w in subtitle]
        for i, this in enumerate(subtitle):
            if last != this["start"]:
                yield last, this["start"], text  # the gap before the word, nothing underlined
            underlined = "".join(re.sub(r"^(\s*)(.*)$", r"\1<u>\2</u>", w) if j == i else w
                                 for j, w in enumerate(words))
            yield this["start"], this["end"], underlined.replace("-->", "->")
            last = this["end"]


def write_txt(segments: Iterable[Any], file: TextIO, **_: Any) -> None:
    for seg in segments:
        print(_get(seg, "text").strip(), file=file, flush=True)


def write_srt(segments: Iterable[Any], file: TextIO, **options: Any) -> None:
    """options: max_line_width, max_line_count, highlight_words, max_words_per_line (word timings)."""
    for i, (start, end, text) in enumerate(iterate_cues(segments, **_layout(options)), start=1):
        start = format_timestamp(start, always_include_hours=True, decimal_marker=",")
        end = format_timestamp(end, always_include_hours=True, decimal_marker=",")
        print(f"{i}\n{start} --> {end}\n{text}\n", file=file, flush=True)


def write_vtt(segments: Iterable[Any], file: TextIO, **options: Any) -> None:
    print("WEBVTT\n", file=file)
    for start, end, text in iterate_cues(segments, **_layout(options)):
        print(f"{format_timestamp(start)} --> {format_timestamp(end)}\n{text}\n", file=file, flush=True)


LAYOUT_OPTIONS = ("max_line_width", "max_line_count", "highlight_words", "max_words_per_line")


def _layout(options: Mapping[str, Any]) -> dict:
    return {k: options[k] for k in LAYOUT_OPTIONS if options.get(k) is not None}


def write_tsv(segments: Iterable[Any], file: TextIO, **_: Any) -> None:
    print("start", "end", "text", sep="\t", file=file)
    for seg in segments:
        start, end = round(1000 * _get(seg, "start")), round(1000 * _get(seg, "end"))
        text = _get(seg, "text").strip().replace("\t", " ")
        print(start, end, text, sep="\t", file=file, flush=True)


def write_json(segments: Iterable[Any], file: TextIO, language: str | None = None,
               text: str | None = None, **_: Any) -> None:
    """`text` defaults to the segment texts joined (what transcribe's text is)."""
    segs = [_as_dict(s) for s in segments]
    for s in segs:
        if s.get("words", ()) is None:
            del s["words"]  # no word timings asked for: openai writes no key
    if text is None:
        text = "".join(s["text"] for s in segs)
    json.dump({"text": text, "segments": segs, "language": language}, file, ensure_ascii=False)
    print(file=file)


WRITERS: dict[str, Callable[..., None]] = {
    "txt": write_txt, "srt": write_srt, "vtt": write_vtt, "tsv": write_tsv, "json": write_json,
}


def resolve_formats(output_format: str) -> tuple[str, ...]:
    """'srt' -> ('srt',); 'all' -> every format; 'txt,srt' -> both. Unknown -> ValueError."""
    if output_format == "all":
        return FORMATS
    formats = tuple(f.strip().lower() for f in output_format.split(",") if f.strip())
    bad = [f for f in formats if f not in WRITERS]
    if bad or not formats:
        raise ValueError(f"unknown output format {output_format!r}: choose from {', '.join(FORMATS)} or all")
    return formats


def write_result(segments: Sequence[Any], audio_path: str | os.PathLike, output_dir: str | os.PathLike,
                 output_format: str = "all", language: str | None = None,
                 text: str | None = None, **layout: Any) -> list[Path]:
    """Write DIR/<audio stem>.<ext> for each requested format; returns the paths written.
    layout: srt/vtt options max_line_width, max_line_count, highlight_words, max_words_per_line."""
    bad = set(layout) - set(LAYOUT_OPTIONS)
    if bad:
        raise TypeError(f"unknown writer options {sorted(bad)}; known: {', '.join(LAYOUT_OPTIONS)}")
    stem = Path(audio_path).stem if str(audio_path) != "-" else "stdin"
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in resolve_formats(output_format):
        path = out_dir / f"{stem}.{fmt}"
        with open(path, "w", encoding="utf-8") as f:
            WRITERS[fmt](segments, f, language=language, text=text, **layout)
        paths.append(path)
    return paths
