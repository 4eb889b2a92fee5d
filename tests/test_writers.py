"""writers.py: each format parsed back by an independent reader written here from the format's
spec (SubRip, WebVTT, openai's TSV/JSON), with times at millisecond precision."""

from __future__ import annotations

import io
import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qwhisper.transcribe import Segment
from qwhisper.writers import FORMATS, format_timestamp, resolve_formats, write_result, write_srt, write_tsv, write_vtt


def _seg(i, start, end, text):
    return Segment(id=i, seek=0, start=start, end=end, text=text, tokens=[1, 2], temperature=0.0,
                   avg_logprob=-0.25, compression_ratio=1.2, no_speech_prob=0.01)


SEGMENTS = [
    _seg(0, 0.0, 1.0, " Hello world."),
    _seg(1, 1.0, 5.5, " Arrows --> are not cues,\tnor tabs."),
    _seg(2, 59.999, 3661.25, " Über-long: an hour, a minute and 1.25 s."),
]


def _hms(h, m, s, ms) -> int:
    """Milliseconds (integers: exact comparisons)."""
    return ((int(h or 0) * 60 + int(m)) * 60 + int(s)) * 1000 + int(ms)


def parse_srt(text: str) -> list[tuple[float, float, str]]:
    cues = []
    for block in text.strip().split("\n\n"):
        lines = block.split("\n")
        assert lines[0].isdigit() and int(lines[0]) == len(cues) + 1  # 1-based counter
        m = re.fullmatch(r"(\d\d):(\d\d):(\d\d),(\d{3}) --> (\d\d):(\d\d):(\d\d),(\d{3})", lines[1])
        assert m, lines[1]
        g = m.groups()
        cues.append((_hms(*g[:4]), _hms(*g[4:]), "\n".join(lines[2:])))
    return cues


def parse_vtt(text: str) -> list[tuple[float, float, str]]:
    header, *blocks = text.strip().split("\n\n")
    assert header == "WEBVTT"
    cues = []
    ts = r"(?:(\d\d+):)?(\d\d):(\d\d)\.(\d{3})"
    for block in blocks:
        lines = block.split("\n")
        m = re.fullmatch(f"{ts} --> {ts}", lines[0])
        assert m, lines[0]
        g = m.groups()
        cues.append((_hms(*g[:4]), _hms(*g[4:]), "\n".join(lines[1:])))
    return cues


def parse_tsv(text: str) -> list[tuple[float, float, str]]:
    lines = text.rstrip("\n").split("\n")
    assert lines[0] == "start\tend\ttext"
    out = []
    for line in lines[1:]:
        start, end, body = line.split("\t")  # exactly three fields: tabs in texts are replaced
        out.append((int(start), int(end), body))
    return out


def _expected(segments):
    return [(round(s.start * 1000), round(s.end * 1000), s.text.strip().replace("-->", "->")) for s in segments]


def test_format_timestamp_known_answers():
    assert format_timestamp(0) == "00:00.000"
    assert format_timestamp(61.25) == "01:01.250"
    assert format_timestamp(3661.25) == "01:01:01.250"
    assert format_timestamp(1.5, always_include_hours=True, decimal_marker=",") == "00:00:01,500"
    assert format_timestamp(59.9996) == "01:00.000"  # rounding carries into the minutes
    with pytest.raises(ValueError):
        format_timestamp(-1)


def test_srt_round_trip():
    buf = io.StringIO()
    write_srt(SEGMENTS, buf)
    assert buf.getvalue().startswith("1\n00:00:00,000 --> 00:00:01,000\nHello world.\n\n2\n")
    assert parse_srt(buf.getvalue()) == _expected(SEGMENTS)


def test_vtt_round_trip():
    buf = io.StringIO()
    write_vtt(SEGMENTS, buf)
    assert buf.getvalue().startswith("WEBVTT\n\n00:00.000 --> 00:01.000\nHello world.\n")
    assert "01:01:01.250" in buf.getvalue()  # hours appear only when needed
    assert parse_vtt(buf.getvalue()) == _expected(SEGMENTS)


def test_tsv_round_trip():
    buf = io.StringIO()
    write_tsv(SEGMENTS, buf)
    got = parse_tsv(buf.getvalue())
    assert [(a, b) for a, b, _ in got] == [(0, 1000), (1000, 5500), (59999, 3661250)]
    assert got[1][2] == "Arrows --> are not cues, nor tabs."  # a tab would split the row


def test_all_formats_to_files(tmp_path):
    paths = write_result(SEGMENTS, "/some/where/talk.flac", tmp_path / "out", "all", language="en")
    assert [p.name for p in paths] == [f"talk.{ext}" for ext in FORMATS]
    assert (tmp_path / "out" / "talk.txt").read_text(encoding="utf-8").split("\n")[:3] == [
        s.text.strip() for s in SEGMENTS]
    doc = json.loads((tmp_path / "out" / "talk.json").read_text(encoding="utf-8"))
    assert doc["language"] == "en" and doc["text"] == "".join(s.text for s in SEGMENTS)
    assert [(s["id"], s["start"], s["end"], s["text"], s["tokens"]) for s in doc["segments"]] == [
        (s.id, s.start, s.end, s.text, s.tokens) for s in SEGMENTS]
    assert set(doc["segments"][0]) == {"id", "seek", "start", "end", "text", "tokens", "temperature",
                                       "avg_logprob", "compression_ratio", "no_speech_prob"}
    assert parse_srt((tmp_path / "out" / "talk.srt").read_text(encoding="utf-8")) == _expected(SEGMENTS)


def test_dict_segments_and_format_lists(tmp_path):
    segs = [{"start": 0.5, "end": 1.25, "text": " hi"}]
    paths = write_result(segs, "a.wav", tmp_path, "srt,tsv")
    assert [p.suffix for p in paths] == [".srt", ".tsv"]
    assert parse_tsv(paths[1].read_text()) == [(500, 1250, "hi")]
    with pytest.raises(ValueError, match="unknown output format 'doc'"):
        resolve_formats("doc")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10_000_000), st.integers(0, 100_000),
                          st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")),
                                  min_size=1, max_size=30).filter(lambda t: t.strip())),
                min_size=1, max_size=5))
def test_subtitles_round_trip_any_text(items):
    segs = [_seg(i, a / 1000, (a + d) / 1000, " " + t) for i, (a, d, t) in enumerate(items)]
    for write, parse in ((write_srt, parse_srt), (write_vtt, parse_vtt)):
        buf = io.StringIO()
        write(segs, buf)
        assert parse(buf.getvalue()) == _expected(segs)
