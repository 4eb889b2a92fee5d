"""Transcript files: txt, srt, vtt, tsv, json -- openai/whisper's formats (whisper/utils.py).

    txt   one segment text per line (stripped)
    srt   "1\\n00:00:01,000 --> 00:00:05,000\\ntext\\n" blocks; hours always written, comma marker
    vtt   "WEBVTT" header, then "00:01.000 --> 00:05.000\\ntext" blocks; hours only when > 0
    tsv   header "start<TAB>end<TAB>text", times in integer milliseconds (no locale trouble)
    json  {"text": ..., "segments": [{id, seek, start, end, text, tokens, ...}], "language": ...}

A segment is anything with `start`, `end` and `text` (a transcribe.Segment, or a dict with
those keys); json writes every field a dataclass segment has. Subtitle texts have "-->"
replaced by "->" so a cue cannot be misread, as openai does.
"""

from __future__ import annotations

import dataclasses
import json
import os
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


def write_txt(segments: Iterable[Any], file: TextIO, **_: Any) -> None:
    for seg in segments:
        print(_get(seg, "text").strip(), file=file, flush=True)


def write_srt(segments: Iterable[Any], file: TextIO, **_: Any) -> None:
    for i, seg in enumerate(segments, start=1):
        start = format_timestamp(_get(seg, "start"), always_include_hours=True, decimal_marker=",")
        end = format_timestamp(_get(seg, "end"), always_include_hours=True, decimal_marker=",")
        print(f"{i}\n{start} --> {end}\n{_cue_text(seg)}\n", file=file, flush=True)


def write_vtt(segments: Iterable[Any], file: TextIO, **_: Any) -> None:
    print("WEBVTT\n", file=file)
    for seg in segments:
        start, end = format_timestamp(_get(seg, "start")), format_timestamp(_get(seg, "end"))
        print(f"{start} --> {end}\n{_cue_text(seg)}\n", file=file, flush=True)


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
                 text: str | None = None) -> list[Path]:
    """Write DIR/<audio stem>.<ext> for each requested format; returns the paths written."""
    stem = Path(audio_path).stem if str(audio_path) != "-" else "stdin"
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in resolve_formats(output_format):
        path = out_dir / f"{stem}.{fmt}"
        with open(path, "w", encoding="utf-8") as f:
            WRITERS[fmt](segments, f, language=language, text=text)
        paths.append(path)
    return paths
