"""Batched long-form transcription (qwhisper.batched): the chunker on synthetic signals with
known pauses, the batch decoder against one-chunk-at-a-time decoding, and the pipeline on real
speech (LibriVox utterances concatenated past 60 s) against the sequential seek loop."""

import itertools
import json
import re

import numpy as np
import pytest
import torch
from conftest import LIBRIVOX_DIR, need

from qwhisper.audio import N_FRAMES, SAMPLE_RATE
from qwhisper.batched import (
    FRAMES_PER_SECOND,
    BatchedPipeline,
    VadOptions,
    chunk_audio,
    chunk_mel,
    decode_batch,
    frame_power,
    split_chunk,
    split_region,
)
from qwhisper.decoding import OptionError
from qwhisper.transcribe import TranscribeOptions

# --- the chunker on synthetic speech -------------------------------------------------------------


def synthetic_speech(rng, plan):
    """plan: [("speech" | "pause" | "silence", seconds), ...] -> (samples, spans) where speech is
    noise under a 4-Hz syllable envelope (amplitude ~0.1, never below 30 % of it), a pause a
    stretch at -66 dB (breath noise), silence digital zero; spans: (kind, start, end) frames."""
    out, spans, t = [], [], 0
    for kind, seconds in plan:
        n = round(seconds * SAMPLE_RATE)
        if kind == "speech":
            phase = rng.uniform(0, 2 * np.pi)
            env = 0.65 + 0.35 * np.sin(2 * np.pi * 4 * np.arange(n) / SAMPLE_RATE + phase)
            x = 0.1 * env * rng.standard_normal(n)
        elif kind == "pause":
            x = 5e-4 * rng.standard_normal(n)
        else:
            x = np.zeros(n)
        out.append(x)
        spans.append((kind, t // 160, (t + n) // 160))
        t += n
    return np.concatenate(out).astype(np.float32), spans


def long_plan(rng):
    """3 s of silence, 70 s of speech in phrases of 2.5-6 s between 0.3-s pauses, 6 s of silence,
    a 4-s phrase, 1 s of silence."""
    plan, total = [("silence", 3.0)], 0.0
    while total < 70:
        d = float(rng.uniform(2.5, 6.0))
        plan += [("speech", d), ("pause", 0.3)]
        total += d + 0.3
    plan[-1] = ("silence", 6.0)
    return plan + [("speech", 4.0), ("silence", 1.0)]


def test_chunks_cut_at_pauses_cover_speech_and_skip_long_silence():
    rng = np.random.default_rng(0)
    samples, spans = synthetic_speech(rng, long_plan(rng))
    chunks = chunk_audio(samples)
    limit = 30 * FRAMES_PER_SECOND
    assert all(0 < b - a <= limit for a, b in chunks)
    assert all(b1 <= a2 for (_, b1), (a2, _) in itertools.pairwise(chunks))
    covered = np.zeros(len(samples) // 160 + 1, bool)
    for a, b in chunks:
        covered[a:b] = True
    for kind, a, b in spans:
        if kind == "speech":
            assert covered[a:b].all(), (a, b, chunks)  # every frame of speech is decoded
    # each boundary is in a pause or a silence, never inside speech
    for point in [a for a, _ in chunks] + [b for _, b in chunks]:
        kind = next(k for k, a, b in spans if a <= point < b or (point == b and k != "speech"))
        inside = [k for k, a, b in spans if a < point < b]
        assert "speech" not in inside, (point, chunks)
        assert kind in ("pause", "silence")
    # the 70 s of phrases need three chunks or four; the 6-s silence is skipped (only the 0.2-s
    # pads), so the last phrase is a chunk of its own
    _, s_start, s_end = next(s for s in spans if s[0] == "silence" and s[2] - s[1] == 600)
    assert covered[s_start:s_end].sum() <= 2 * (20 + 2 + 1)  # pad + half the 5-frame smoothing + a partial frame
    assert len(chunks) in (4, 5)
    _, p_start, p_end = spans[-2]
    assert abs(chunks[-1][0] - (p_start - 20)) <= 3 and abs(chunks[-1][1] - (p_end + 20)) <= 3
    # the first chunk starts 0.2 s (speech_pad_s) before the speech
    assert abs(chunks[0][0] - (300 - 20)) <= 3


def test_short_pauses_stay_inside_a_chunk_and_silence_gives_no_chunk():
    rng = np.random.default_rng(1)
    plan = [("silence", 1.0), ("speech", 3.0), ("pause", 1.0), ("speech", 3.0), ("silence", 1.0)]
    samples, _ = synthetic_speech(rng, plan)
    chunks = chunk_audio(samples)
    assert len(chunks) == 1  # the 1-s pause is shorter than min_silence_s (2 s)
    a, b = chunks[0]
    assert abs(a - (100 - 20)) <= 3 and abs(b - (800 + 20)) <= 3
    assert chunk_audio(np.zeros(10 * SAMPLE_RATE, np.float32)) == []
    assert chunk_audio(np.zeros(0, np.float32)) == []
    # with min_silence_s below the pause, two chunks
    assert len(chunk_audio(samples, VadOptions(min_silence_s=0.5))) == 2
    # clips: only the second phrase
    clipped = chunk_audio(samples, clips=[(450, 900)])
    assert len(clipped) == 1 and clipped[0][0] >= 450


def _frame_power_one_pass(samples):
    """The definition: float64 squares of the zero-padded (frames, 160) array, mean per frame."""
    x = np.asarray(samples, dtype=np.float64)
    n = -(-len(x) // 160)
    return (np.pad(x, (0, n * 160 - len(x))).reshape(n, 160) ** 2).mean(axis=1)


@pytest.mark.parametrize("n", [0, 1, 159, 160, 161, 4096 * 160, 4096 * 160 + 7, 2 * 4096 * 160 + 161])
def test_frame_power_in_passes_is_the_one_pass_definition_bit_for_bit(n):
    # float32 noise at a random scale: the float64 frame sums round, so this checks that the
    # passes sum each frame as the one-pass reduction does (numpy, and a CPU tensor)
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * rng.uniform(1e-3, 10)).astype(np.float32)
    want = _frame_power_one_pass(x)
    assert frame_power(x).dtype == np.float64
    np.testing.assert_array_equal(frame_power(x), want)
    np.testing.assert_array_equal(frame_power(torch.from_numpy(x)), want)
    np.testing.assert_array_equal(frame_power(x.astype(np.float64)), want)


@pytest.mark.cuda
def test_frame_power_on_the_gpu_matches_the_cpu_for_pcm_samples():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    rng = np.random.default_rng(5)
    samples, _ = synthetic_speech(rng, long_plan(rng))
    pcm = (np.clip(np.round(samples * 32768), -32768, 32767) / 32768).astype(np.float32)  # as load_audio gives
    on_gpu = torch.from_numpy(pcm).cuda()
    # 16-bit samples: every frame's float64 sum of squares is exact, in any order
    np.testing.assert_array_equal(frame_power(on_gpu), _frame_power_one_pass(pcm))
    assert chunk_audio(on_gpu) == chunk_audio(pcm)
    assert chunk_audio(on_gpu, clips=[(450, 2900)]) == chunk_audio(pcm, clips=[(450, 2900)])


def test_split_region_cuts_at_the_quietest_latest_frame():
    quiet = np.ones(100)
    quiet[[30, 35, 38]] = [0.5, 0.2, 0.2]  # minimum 0.2 twice: the later one wins
    quiet[5] = 0.0  # outside the search window: ignored
    assert split_region(0, 100, quiet, max_frames=40, search_frames=10) == [(0, 38), (38, 78), (78, 100)]
    assert split_region(3, 40, quiet, max_frames=40, search_frames=10) == [(3, 40)]


def test_chunk_mel_pads_like_a_short_window():
    mel = torch.arange(2 * 5000, dtype=torch.float32).reshape(2, 5000)  # 2000 content + 3000 "silence"
    zeros = chunk_mel(mel, 2000, 100, 600, "zeros")
    assert zeros.shape == (2, N_FRAMES) and torch.equal(zeros[:, :500], mel[:, 100:600]) and not zeros[:, 500:].any()
    silence = chunk_mel(mel, 2000, 100, 600, "silence")
    assert torch.equal(silence[:, :500], mel[:, 100:600]) and torch.equal(silence[:, 500:], mel[:, 2500:])
    tail = chunk_mel(mel, 2000, 1500, 2000, "silence")  # the file's end: the padding that follows it
    assert torch.equal(tail, mel[:, 1500:4500])


# --- token handling ------------------------------------------------------------------------------


class _Tok:
    eot, timestamp_begin = 50256, 50363


def test_split_chunk_keeps_unfinished_text_to_the_chunk_end():
    tb = _Tok.timestamp_begin
    tokens = [tb, 10, 11, tb + 100, tb + 100, 12, 13]  # a pair, then text that never closes
    split = split_chunk(tokens, _Tok(), segment_size=1000)
    assert split.pieces == [(0, 100, [tb, 10, 11, tb + 100]), (100, 500, [tb + 100, 12, 13])]
    # a closed last segment beyond the chunk's 6 s (300 steps): its end is clipped
    split = split_chunk([tb, 10, tb + 400], _Tok(), segment_size=600)
    assert split.pieces == [(0, 300, [tb, 10, tb + 400])]


def test_batched_options_refused():
    for bad in (-1, 2.5, "8", True):
        with pytest.raises(OptionError, match="batch_size"):
            TranscribeOptions(batch_size=bad)
    with pytest.raises(OptionError, match="hallucination_silence_threshold"):
        BatchedPipeline(object(), TranscribeOptions(batch_size=4, word_timestamps=True,
                                                    hallucination_silence_threshold=2.0))


# --- real speech ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model():
    from qwhisper.transcribe import WhisperModel

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the test machine's cores are shared: no oversubscription
    try:
        yield WhisperModel("tiny.en", "cpu")
    except Exception as e:  # noqa: BLE001 -- no tiny.en weights on this machine
        pytest.skip(f"tiny.en not available: {e}")
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def long_speech():
    """The 5 LibriVox utterances three times over (74 s) and the matching reference."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import evalsets

    from qwhisper.audio import load_audio

    need(LIBRIVOX_DIR / "transcription")
    utts = evalsets.librivox()
    audio = np.concatenate([load_audio(u.path) for u in utts] * 3)
    return audio, " ".join([u.reference for u in utts] * 3)


def _wer(reference: str, hypothesis: str) -> float:
    """WER in percent after openai's English normaliser: jiwer's, or qwhisper.normalizer.wer's
    edit distance where jiwer is not installed (the GPU machine)."""
    from qwhisper.normalizer import EnglishTextNormalizer, wer

    try:
        import jiwer
    except ImportError:
        return 100.0 * wer(reference, hypothesis)
    norm = EnglishTextNormalizer()
    return 100.0 * jiwer.wer(norm(reference), norm(hypothesis))


def test_batch_decodes_like_each_chunk_alone(model, long_speech):
    audio, _ = long_speech
    options = TranscribeOptions(language="en", batch_size=4)
    pipeline = BatchedPipeline(model, options)
    f = pipeline.open(audio)
    assert len(f.chunks) >= 3 and f.chunks[-1][1] - f.chunks[0][0] > 60 * FRAMES_PER_SECOND
    m = model.model
    chunks = f.chunks[:2]  # a batch of two: rows of different lengths, one finishing first
    mels = [chunk_mel(f.state.mel, f.state.content_frames, a, b, options.pad_window) for a, b in chunks]
    together = decode_batch(m, f.state.tokenizer, m.embed_audio(torch.stack(mels)), options, "en", [])
    for i, mel in enumerate(mels):
        alone = decode_batch(m, f.state.tokenizer, m.embed_audio(mel[None]), options, "en", [])
        assert together[i][0].tokens == alone[0][0].tokens, i
        assert together[i][1] == alone[0][1]
        assert together[i][0].avg_logprob == pytest.approx(alone[0][0].avg_logprob, abs=1e-4)


@pytest.fixture(scope="module")
def sequential(model, long_speech):
    segments, _ = model.transcribe(long_speech[0], language="en")
    return list(segments)


@pytest.fixture(scope="module")
def batched(model, long_speech):
    segments, info = model.transcribe(long_speech[0], language="en", batch_size=8, word_timestamps=True)
    return list(segments), info


def test_batched_wer_matches_sequential(long_speech, sequential, batched):
    _, reference = long_speech
    wer_seq = _wer(reference, "".join(s.text for s in sequential))
    wer_batched = _wer(reference, "".join(s.text for s in batched[0]))
    assert wer_seq < 10
    assert wer_batched <= wer_seq + 1.0, (wer_seq, wer_batched)


def test_batched_segments_in_time_order_inside_the_audio(model, long_speech, batched):
    audio, _ = long_speech
    segments, info = batched
    duration = len(audio) / SAMPLE_RATE
    assert info.duration == pytest.approx(duration) and info.language == "en"
    assert [s.id for s in segments] == list(range(len(segments)))
    assert segments[-1].end > 60
    for s in segments:
        assert 0 <= s.start < s.end <= duration
        assert s.text.strip() and s.text == model.tokenizer.decode_text(s.tokens)
        assert s.words and all(s.start <= w.start <= w.end <= s.end for w in s.words)
    for a, b in itertools.pairwise(segments):
        assert a.end <= b.start and a.seek <= b.seek
        assert a.words[-1].end <= b.words[0].start


def test_srt_and_json_outputs_parse(tmp_path, batched):
    from qwhisper.writers import write_result

    segments, info = batched
    write_result(segments, "long.wav", tmp_path, "srt,json", language=info.language)
    data = json.loads((tmp_path / "long.json").read_text())
    assert [s["text"] for s in data["segments"]] == [s.text for s in segments]
    cues = re.findall(r"(\d+)\n(\d\d):(\d\d):(\d\d),(\d\d\d) --> (\d\d):(\d\d):(\d\d),(\d\d\d)\n(.+)\n",
                      (tmp_path / "long.srt").read_text())
    assert [int(c[0]) for c in cues] == list(range(1, len(segments) + 1))
    times = [(int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000) for c in cues
             for h, m, s, ms in (c[1:5], c[5:9])]
    assert times == sorted(times)
    assert times[0] == pytest.approx(segments[0].start, abs=1e-3)


def test_cli_batches_chunks_of_several_files(tmp_path, model):
    """Two files in one batch, plus one that can't be read: each transcript belongs to its file."""
    import sys
    from pathlib import Path

    from qwhisper.cli import main

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import evalsets

    utts = evalsets.librivox()[:2]
    rc = main(["transcribe", str(utts[0].path), str(tmp_path / "missing.wav"), str(utts[1].path),
               "--model", str(model.path), "--device", "cpu", "--batch-size", "4", "--language", "en",
               "-f", "txt", "-o", str(tmp_path), "--quiet"])
    assert rc == 1  # one file failed
    for u, other in zip(utts, utts[::-1]):
        text = (tmp_path / (u.path.stem + ".txt")).read_text()
        assert _wer(u.reference, text) < 30, (u.name, text)
        assert _wer(u.reference, text) < _wer(other.reference, text) - 50, (u.name, text)
    assert not (tmp_path / "missing.txt").exists()


def test_silent_file_has_no_segments_and_decodes_nothing(model):
    """Digital silence gives no chunk: nothing reaches the encoder (embed_audio would raise)."""
    from qwhisper.transcribe import transcribe

    class NoEncoder:
        def __getattr__(self, name):
            if name == "embed_audio":
                raise AssertionError("a silent file must not be encoded")
            return getattr(model.model, name)

    options = TranscribeOptions(language="en", batch_size=4)
    segments, info = transcribe(NoEncoder(), np.zeros(5 * SAMPLE_RATE, np.float32), options,
                                tokenizer=model.tokenizer, mel_filters=model.mel_filters)
    assert list(segments) == [] and info.duration == 5.0


def test_tail_of_a_chunk_is_decoded_in_the_next_batch(model, monkeypatch):
    """Scripted decoder results: a window that stops 15 s before its chunk's end gets a second
    window from its last timestamp pair, in the next batch; segments still come out in order."""
    from qwhisper import batched
    from qwhisper.decoding import DecodingResult

    rng = np.random.default_rng(2)
    plan = [("silence", 1.0), ("speech", 20.0), ("silence", 3.0), ("speech", 10.0), ("silence", 1.0)]
    samples, _ = synthetic_speech(rng, plan)
    pipeline = BatchedPipeline(model, TranscribeOptions(language="en", batch_size=2))
    f = pipeline.open(samples)
    assert [(round(a, -1), round(b, -1)) for a, b in f.chunks] == [(80, 2120), (2380, 3420)]
    tb, enc = model.tokenizer.timestamp_begin, model.tokenizer.encode
    script = [
        # chunk 0 (20.4 s): a pair at 5.00 s, then unfinished text -> tail from 5.00 s;
        # chunk 1 (10.4 s): a lone timestamp at 10.00 s, within 1 s of its end -> finished
        [[tb, *enc(" one"), tb + 250, tb + 250, *enc(" lost")], [tb, *enc(" three"), tb + 500]],
        # the tail (15.4 s from 5.8 s): up to 14.80 s, within 1 s of its end -> finished
        [[tb, *enc(" two"), tb + 740]],
    ]
    calls = []

    def scripted(model_, tokenizer, audio_features, options, language, prompt):
        calls.append(audio_features.shape[0])
        return [(DecodingResult("en", tokens=t, avg_logprob=-0.1, no_speech_prob=0.0, temperature=0.0), 0.0)
                for t in script[len(calls) - 1]]

    monkeypatch.setattr(batched, "decode_batch", scripted)
    start0 = f.chunks[0][0] / 100
    segments = [s for _, segs in pipeline.run([f]) for s in segs]
    assert calls == [2, 1]
    assert [s.text for s in segments] == [" one", " two", " three"]
    assert [s.id for s in segments] == [0, 1, 2]
    assert [s.seek for s in segments] == [f.chunks[0][0], f.chunks[0][0] + 500, f.chunks[1][0]]
    assert segments[0].start == pytest.approx(start0) and segments[0].end == pytest.approx(start0 + 5)
    assert segments[1].start == pytest.approx(start0 + 5) and segments[1].end == pytest.approx(start0 + 19.8)
    assert segments[2].end == pytest.approx(f.chunks[1][0] / 100 + 10)


def test_files_in_three_languages_share_a_batch():
    """A multilingual model: each file's language detected on its own, its chunks decoded with its
    own language token (one sub-batch per language), in input order."""
    import sys
    from pathlib import Path

    from qwhisper.batched import transcribe_files
    from qwhisper.normalizer import BasicTextNormalizer
    from qwhisper.transcribe import WhisperModel

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import evalsets

    jiwer = pytest.importorskip("jiwer")
    by_lang = {u.language: u for u in evalsets.speech(english_only=False) if u.path.exists()}
    if not {"es", "zh"} <= set(by_lang):
        pytest.skip("the Spanish and Chinese files of shared/data/speech are not here")
    english = evalsets.librivox()[1]  # 3 s
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = WhisperModel("base", "cpu")
    except Exception as e:  # noqa: BLE001 -- no base weights on this machine
        pytest.skip(f"base not available: {e}")
    try:
        sources = [by_lang["es"].path, english.path, by_lang["zh"].path]
        out = list(transcribe_files(model, sources, TranscribeOptions(batch_size=4)))
    finally:
        torch.set_num_threads(threads)
    assert [src for src, _, _ in out] == sources
    assert [info.language for _, _, info in out] == ["es", "en", "zh"]
    texts = ["".join(s.text for s in segs) for _, segs, _ in out]
    norm = BasicTextNormalizer()
    assert jiwer.wer(norm(by_lang["es"].reference), norm(texts[0])) < 0.4, texts[0]
    assert _wer(english.reference, texts[1]) < 30, texts[1]
    assert sum("\u4e00" <= c <= "\u9fff" for c in texts[2]) >= 5, texts[2]


# --- the GPU ---------------------------------------------------------------------------------------


def _read_wav(path) -> np.ndarray:
    """16-kHz mono s16 WAV -> float32 / 32768 (the stdlib: the GPU machine has no PyAV)."""
    import wave

    with wave.open(str(path)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (SAMPLE_RATE, 1, 2), path
        return np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / np.float32(32768.0)


def _speech_past_60s():
    """The English files of shared/data/speech in manifest order until > 60 s, and their reference."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import evalsets
    from conftest import SPEECH_DIR

    need(SPEECH_DIR / "manifest.tsv")
    parts, refs, total = [], [], 0
    for u in evalsets.speech(english_only=True):
        if total > 60 * SAMPLE_RATE:
            break
        parts.append(_read_wav(need(u.path)))
        refs.append(u.reference)
        total += len(parts[-1])
    return np.concatenate(parts), " ".join(refs)


def check_batched_against_sequential(model, audio, reference, slack=2.0):
    """Greedy batches of 2 windows and 5-beam batches of up to 4 (> 8 rows: eager on CUDA) against the
    seek loop: WER within `slack` points, segments in order inside the audio."""
    sequential = "".join(s.text for s in model.transcribe(audio, language="en")[0])
    wer_seq = _wer(reference, sequential)
    duration = len(audio) / SAMPLE_RATE
    for kwargs in ({"batch_size": 2}, {"batch_size": 4, "beam_size": 5}):
        segments = list(model.transcribe(audio, language="en", **kwargs)[0])
        assert _wer(reference, "".join(s.text for s in segments)) <= wer_seq + slack, kwargs
        assert all(0 <= s.start < s.end <= duration for s in segments)
        assert all(a.end <= b.start for a, b in itertools.pairwise(segments))
    return wer_seq


def _replayed(st) -> bool:
    graphs = [st.graph] + [lg.graph for lg in getattr(st, "loop_graphs", {}).values() if not lg.failed]
    return not st.failed and any(g is not None for g in graphs)


@pytest.mark.cuda
def test_batched_on_cuda_replays_graphs_of_its_batch_shape(shared_q5_1):
    from qwhisper.model import GRAPH_MAX_ROWS
    from qwhisper.transcribe import WhisperModel

    audio, reference = _speech_past_60s()
    model = WhisperModel(shared_q5_1, "cuda")
    assert check_batched_against_sequential(model, audio, reference) < 15
    sets = [st for sets in model.model.decoder._graphed.values() for st in sets]
    rows = {st.tokens.shape[0] for st in sets}
    assert 2 in rows and max(rows) <= GRAPH_MAX_ROWS  # the 2-window batches replayed a graph
    # replayed: the step's own graph, or the greedy loop's graph of step + filters (greedy_loop.py)
    assert all(_replayed(st) for st in sets if st.tokens.shape[0] == 2)


def _batched_runs(model, audio, runs: int) -> tuple[list, int]:
    """`runs` batched transcriptions of audio in 5-s chunks, batch 16: each run's (tokens,
    avg_logprob) per segment, and the most windows a decoder step had."""
    from qwhisper.batched import BatchedPipeline, VadOptions
    from qwhisper.transcribe import TranscribeOptions

    options = TranscribeOptions(language="en", batch_size=16)
    vad = VadOptions(max_chunk_s=5.0, search_s=2.0)  # 60 s -> more than 8 windows: a step of 9..16 rows
    out, most = [], 0
    counted = model.model.logits

    def logits(tokens, *a, **k):
        nonlocal most
        most = max(most, tokens.shape[0])
        return counted(tokens, *a, **k)

    model.model.logits = logits  # the first step of each batch goes through here
    try:
        for _ in range(runs):
            pipeline = BatchedPipeline(model, options, vad=vad, verbose=False)
            segments = [s for _, segs in pipeline.run([pipeline.open(audio)]) for s in segs]
            out.append([(tuple(s.tokens), s.avg_logprob) for s in segments])
    finally:
        del model.model.logits
    return out, most


@pytest.mark.cuda
def test_batched_on_cuda_repeats_bit_for_bit(shared_q5_1):
    """A batched step of 9..16 windows (split-K products whose partials the next kernels add)
    gives the same tokens and logprobs run after run. Session 9 found batched runs differing;
    the cause was cuDNN's SDPA for the one-query cross-attention, not deterministic at these
    shapes (docs/reports/performance.md 11.1, benchmarks/check_reproducible.py); the split-key
    kernel replaced it."""
    from qwhisper.transcribe import WhisperModel

    audio, _ = _speech_past_60s()
    model = WhisperModel(shared_q5_1, "cuda")
    runs, most = _batched_runs(model, audio, 3)
    assert most >= 9, most  # the split-K way (triton_ops.pick) was taken
    # run 1 captures the CUDA graphs (its first steps eager), runs 2 and 3 replay them
    same = [runs[i] == runs[0] for i in (1, 2)] + [runs[2] == runs[1]]
    assert all(same), f"run 2 == run 1: {same[0]}, run 3 == run 1: {same[1]}, run 3 == run 2: {same[2]}"
