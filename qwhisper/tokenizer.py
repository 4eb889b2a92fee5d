"""Whisper's tokenizer, rebuilt from the vocabulary stored in a whisper.cpp GGML file.

A GGML file stores only the *regular* tokens, as raw byte strings (GPT-2's byte-level BPE
vocabulary: 50256 tokens for the English-only models, 50257 for the multilingual ones). The
special tokens are not stored; whisper.cpp places them itself (`whisper_model_load`), and so do we:

    English-only (n_vocab 51864)           multilingual (n_vocab 51865; large-v3 51866)
    50256 <|endoftext|>                    50257 <|endoftext|>
    50257 <|startoftranscript|>            50258 <|startoftranscript|>
    50258 .. 50356  99 language tokens     50259 ..  99 (large-v3: 100, + yue) language tokens
    50357 <|translate|>                    then <|translate|> <|transcribe|> <|startoflm|>
    50358 <|transcribe|>                   <|startofprev|> <|nospeech|> <|notimestamps|>,
    50359 <|startoflm|>                    each shifted by +1 (eot) + (num_languages - 99)
    50360 <|startofprev|>
    50361 <|nospeech|>
    50362 <|notimestamps|>
    50363 .. 51863  <|0.00|> .. <|30.00|>  (1501 timestamp tokens, 0.02 s apart)

with `num_languages = n_vocab - 51765 - is_multilingual`, exactly whisper.cpp's rule.

Text: `decode` concatenates the tokens' *bytes* and decodes UTF-8 once at the end (a token can end
in the middle of a multi-byte character), replacing invalid bytes only then.

`encode` is byte-level BPE. The GGML file holds no merge table, but Whisper's vocabularies were
built so that a token's id *is* its merge rank (tiktoken's `mergeable_ranks`; GPT-2's
merges.txt lists the merges in id order), so BPE by "merge the adjacent pair whose concatenation
has the lowest id" reproduces openai/whisper's tiktoken encoding. tests/test_tokenizer.py
checks this against a merges-based BPE built from the HF tokenizer.json. whisper.cpp itself
tokenizes prompts differently (greedy longest match, `encode_longest_match` here); the two
agree on most English text and differ on some words (documented in docs/decoding.md).
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Iterable, Sequence

# Whisper's languages in token order (openai/whisper tokenizer.py LANGUAGES, whisper.cpp g_lang).
LANGUAGES: dict[str, str] = dict((
    ("en", "english"), ("zh", "chinese"), ("de", "german"), ("es", "spanish"), ("ru", "russian"),
    ("ko", "korean"), ("fr", "french"), ("ja", "japanese"), ("pt", "portuguese"), ("tr", "turkish"),
    ("pl", "polish"), ("ca", "catalan"), ("nl", "dutch"), ("ar", "arabic"), ("sv", "swedish"),
    ("it", "italian"), ("id", "indonesian"), ("hi", "hindi"), ("fi", "finnish"), ("vi", "vietnamese"),
    ("he", "hebrew"), ("uk", "ukrainian"), ("el", "greek"), ("ms", "malay"), ("cs", "czech"),
    ("ro", "romanian"), ("da", "danish"), ("hu", "hungarian"), ("ta", "tamil"), ("no", "norwegian"),
    ("th", "thai"), ("ur", "urdu"), ("hr", "croatian"), ("bg", "bulgarian"), ("lt", "lithuanian"),
    ("la", "latin"), ("mi", "maori"), ("ml", "malayalam"), ("cy", "welsh"), ("sk", "slovak"),
    ("te", "telugu"), ("fa", "persian"), ("lv", "latvian"), ("bn", "bengali"), ("sr", "serbian"),
    ("az", "azerbaijani"), ("sl", "slovenian"), ("kn", "kannada"), ("et", "estonian"), ("mk", "macedonian"),
    ("br", "breton"), ("eu", "basque"), ("is", "icelandic"), ("hy", "armenian"), ("ne", "nepali"),
    ("mn", "mongolian"), ("bs", "bosnian"), ("kk", "kazakh"), ("sq", "albanian"), ("sw", "swahili"),
    ("gl", "galician"), ("mr", "marathi"), ("pa", "punjabi"), ("si", "sinhala"), ("km", "khmer"),
    ("sn", "shona"), ("yo", "yoruba"), ("so", "somali"), ("af", "afrikaans"), ("oc", "occitan"),
    ("ka", "georgian"), ("be", "belarusian"), ("tg", "tajik"), ("sd", "sindhi"), ("gu", "gujarati"),
    ("am", "amharic"), ("yi", "yiddish"), ("lo", "lao"), ("uz", "uzbek"), ("fo", "faroese"),
    ("ht", "haitian creole"), ("ps", "pashto"), ("tk", "turkmen"), ("nn", "nynorsk"), ("mt", "maltese"),
    ("sa", "sanskrit"), ("lb", "luxembourgish"), ("my", "myanmar"), ("bo", "tibetan"), ("tl", "tagalog"),
    ("mg", "malagasy"), ("as", "assamese"), ("tt", "tatar"), ("haw", "hawaiian"), ("ln", "lingala"),
    ("ha", "hausa"), ("ba", "bashkir"), ("jw", "javanese"), ("su", "sundanese"), ("yue", "cantonese"),
))

# Language names (and a few aliases) -> codes, so `--language German` works too.
TO_LANGUAGE_CODE: dict[str, str] = {
    **{name: code for code, name in LANGUAGES.items()},
    "burmese": "my", "valencian": "ca", "flemish": "nl", "haitian": "ht", "letzeburgesch": "lb",
    "pushto": "ps", "panjabi": "pa", "moldavian": "ro", "moldovan": "ro", "sinhalese": "si",
    "castilian": "es", "mandarin": "zh",
}

TASKS = ("transcribe", "translate")

# whisper.cpp whisper_vocab defaults (English-only layout) and the n_vocab of that layout.
_EOT_EN = 50256
_N_VOCAB_BASE = 51765  # n_vocab - this - is_multilingual = number of language tokens
_N_LANGUAGES_BASE = 99  # languages of every model before large-v3

TIME_PRECISION = 0.02  # seconds per timestamp token: 30 s / 1500 encoder positions
N_TIMESTAMPS = 1501  # <|0.00|> .. <|30.00|>

# Scripts written without spaces between words (openai's split_to_word_tokens).
_NO_SPACE_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "my", "yue"})


def normalize_language(language: str | None) -> str | None:
    """'en', 'EN', 'English' -> 'en'; None, '' and 'auto' -> None (detect); unknown -> ValueError."""
    if language is None:
        return None
    key = language.strip().lower()
    if key in ("", "auto"):
        return None
    if key in LANGUAGES:
        return key
    if key in TO_LANGUAGE_CODE:
        return TO_LANGUAGE_CODE[key]
    raise ValueError(f"unsupported language {language!r} (use a code such as 'en', 'de', or a name like 'german')")


# --- pre-tokenizer --------------------------------------------------------------------------------
# GPT-2's split pattern, as openai/whisper passes it to tiktoken:
#   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
# Python's `re` has no \p{..} classes, so the pattern is scanned by hand, alternative by alternative.

_CONTRACTIONS = ("s", "t", "re", "ve", "m", "ll", "d")  # after an apostrophe, in pattern order


@functools.lru_cache(maxsize=4096)
def _char_class(c: str) -> str:
    """'L' letter, 'N' number, 'S' whitespace, 'O' anything else (\\p{L}, \\p{N}, \\s of the pattern)."""
    if c.isspace():
        return "S"
    cat = unicodedata.category(c)[0]
    return cat if cat in "LN" else "O"


def split_words(text: str) -> list[str]:
    """Split `text` into the pieces BPE runs on (concatenating them gives `text` back)."""
    pieces: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "'":
            m = next((s for s in _CONTRACTIONS if text.startswith(s, i + 1)), None)
            if m is not None:
                pieces.append(text[i:i + 1 + len(m)])
                i += 1 + len(m)
                continue
        j = i + 1 if c == " " and i + 1 < n else i  # the optional leading space
        cls = _char_class(text[j])
        if cls != "S":
            k = j + 1
            if cls == "O":  # ?[^\s\p{L}\p{N}]+
                while k < n and _char_class(text[k]) == "O":
                    k += 1
            else:  # ?\p{L}+ or ?\p{N}+
                while k < n and _char_class(text[k]) == cls:
                    k += 1
            pieces.append(text[i:k])
            i = k
            continue
        k = i  # whitespace run
        while k < n and text[k].isspace():
            k += 1
        if k < n and k - i >= 2:
            k -= 1  # \s+(?!\S): leave the last space to prefix the next word
        pieces.append(text[i:k])
        i = k
    return pieces


class Tokenizer:
    """Token ids <-> text for one model's vocabulary, with its special tokens.

    `language` and `task` only shape `sot_sequence` (the decoder's initial tokens); for an
    English-only model they are ignored, as in openai/whisper (its sot sequence is just
    <|startoftranscript|>).
    """

    def __init__(self, vocab: Sequence[bytes], n_vocab: int, language: str | None = None,
                 task: str | None = None):
        self.vocab: list[bytes] = list(vocab)
        self.n_vocab = n_vocab
        self.is_multilingual = n_vocab >= 51865  # whisper.cpp whisper_vocab::is_multilingual
        self.num_languages = n_vocab - _N_VOCAB_BASE - int(self.is_multilingual)
        if not 0 <= self.num_languages <= len(LANGUAGES):
            raise ValueError(f"n_vocab {n_vocab} does not describe a Whisper vocabulary "
                             f"({self.num_languages} language tokens)")
        shift = int(self.is_multilingual)  # multilingual vocabularies have one more regular token
        dt = self.num_languages - _N_LANGUAGES_BASE  # large-v3 adds a language (yue)
        self.eot = _EOT_EN + shift
        self.sot = self.eot + 1
        self.translate = 50357 + shift + dt
        self.transcribe = self.translate + 1
        self.sot_lm = self.translate + 2  # whisper.cpp token_solm
        self.sot_prev = self.translate + 3  # whisper.cpp token_prev
        self.no_speech = self.translate + 4  # whisper.cpp token_nosp
        self.no_timestamps = self.translate + 5  # whisper.cpp token_not
        self.timestamp_begin = self.translate + 6  # whisper.cpp token_beg: <|0.00|>
        if len(self.vocab) > self.eot:
            raise ValueError(f"vocabulary has {len(self.vocab)} regular tokens, more than the "
                             f"{self.eot} that n_vocab={n_vocab} leaves room for")

        self.language_codes: tuple[str, ...] = tuple(LANGUAGES)[: self.num_languages]
        self.all_language_tokens: tuple[int, ...] = tuple(
            self.sot + 1 + i for i in range(self.num_languages))

        if self.is_multilingual:
            self.language = normalize_language(language) or "en"
            if self.language not in self.language_codes:
                raise ValueError(f"language {self.language!r} is not in this model's vocabulary")
            self.task = task or "transcribe"
            if self.task not in TASKS:
                raise ValueError(f"unsupported task {task!r}: choose one of {', '.join(TASKS)}")
            self.sot_sequence: tuple[int, ...] = (
                self.sot, self.to_language_token(self.language),
                self.transcribe if self.task == "transcribe" else self.translate)
        else:
            self.language, self.task = None, None
            self.sot_sequence = (self.sot,)

        self._token_to_id: dict[bytes, int] = {}
        for i, tok in enumerate(self.vocab):
            self._token_to_id.setdefault(tok, i)  # the multilingual vocab has one empty token
        self._special_names = self._name_specials()

    @classmethod
    def from_ggml(cls, ggml, language: str | None = None, task: str | None = None) -> Tokenizer:
        """From a `GGMLFile` (qwhisper.ggml_file.read_ggml)."""
        return cls(ggml.vocab, ggml.hparams.n_vocab, language=language, task=task)

    def with_options(self, language: str | None = None, task: str | None = None) -> Tokenizer:
        """The same vocabulary with another language/task (shares the lookup tables)."""
        new = object.__new__(Tokenizer)
        new.__dict__.update(self.__dict__)
        if self.is_multilingual:
            lang = normalize_language(language) or "en"
            if lang not in self.language_codes:
                raise ValueError(f"language {lang!r} is not in this model's vocabulary")
            task = task or "transcribe"
            if task not in TASKS:
                raise ValueError(f"unsupported task {task!r}: choose one of {', '.join(TASKS)}")
            new.language, new.task = lang, task
            new.sot_sequence = (self.sot, self.to_language_token(lang),
                                self.transcribe if task == "transcribe" else self.translate)
        return new

    def _name_specials(self) -> dict[int, bytes]:
        names = {
            self.eot: "<|endoftext|>", self.sot: "<|startoftranscript|>",
            self.translate: "<|translate|>", self.transcribe: "<|transcribe|>",
            self.sot_lm: "<|startoflm|>", self.sot_prev: "<|startofprev|>",
            self.no_speech: "<|nospeech|>", self.no_timestamps: "<|notimestamps|>",
        }
        for tok, code in zip(self.all_language_tokens, self.language_codes):
            names[tok] = f"<|{code}|>"
        return {k: v.encode() for k, v in names.items()}

    # --- special tokens ---------------------------------------------------------------------------

    @property
    def sot_sequence_including_notimestamps(self) -> tuple[int, ...]:
        return self.sot_sequence + (self.no_timestamps,)

    def to_language_token(self, language: str) -> int:
        code = normalize_language(language)
        if code not in self.language_codes:
            raise ValueError(f"language {language!r} is not in this model's vocabulary")
        return self.sot + 1 + self.language_codes.index(code)

    def timestamp_token(self, seconds: float) -> int:
        """The timestamp token nearest to `seconds` (clamped to 0..30 s)."""
        index = min(max(round(seconds / TIME_PRECISION), 0), N_TIMESTAMPS - 1)
        return self.timestamp_begin + index

    def timestamp_seconds(self, token: int) -> float:
        """Seconds of a timestamp token (`token - timestamp_begin` steps of 0.02 s)."""
        if not self.timestamp_begin <= token < self.n_vocab:
            raise ValueError(f"token {token} is not a timestamp token "
                             f"({self.timestamp_begin}..{self.n_vocab - 1})")
        return round((token - self.timestamp_begin) * TIME_PRECISION, 2)

    def is_timestamp(self, token: int) -> bool:
        return token >= self.timestamp_begin

    @functools.cached_property
    def non_speech_tokens(self) -> tuple[int, ...]:
        """Tokens suppressed by `suppress_tokens="-1"`: speaker tags, music signs, brackets ...

        openai/whisper's rule: these symbols (and " " + symbol) when they are one token; for the
        musical signs U+2669..U+266F (3 UTF-8 bytes, first two shared) the first token of their
        encoding; plus " -" and " '" so that hyphens and apostrophes are still allowed inside words.
        """
        symbols = list('"#()*+/:;<=>@[\\]^_`{|}~「」『』')
        symbols += "<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪".split()
        miscellaneous = "♩♪♫♬♭♮♯"
        result = {self.encode(" -")[0], self.encode(" '")[0]}
        for symbol in symbols + list(miscellaneous):
            for tokens in (self.encode(symbol), self.encode(" " + symbol)):
                if len(tokens) == 1 or symbol in miscellaneous:
                    result.add(tokens[0])
        return tuple(sorted(result))

    # --- decoding ---------------------------------------------------------------------------------

    def token_bytes(self, token: int) -> bytes:
        """The bytes of one token; special tokens as their names, timestamps as <|1.08|>."""
        if 0 <= token < len(self.vocab):
            return self.vocab[token]
        if token in self._special_names:
            return self._special_names[token]
        if self.timestamp_begin <= token < self.n_vocab:
            return f"<|{(token - self.timestamp_begin) * TIME_PRECISION:.2f}|>".encode()
        if 0 <= token < self.n_vocab:  # a regular id the file did not store (whisper.cpp's name)
            return f"[_extra_token_{token}]".encode()
        raise ValueError(f"token id {token} is outside the vocabulary (n_vocab={self.n_vocab})")

    def decode(self, tokens: Iterable[int]) -> str:
        """Text of `tokens`, timestamp tokens left out (openai's Tokenizer.decode)."""
        return self._decode(t for t in tokens if t < self.timestamp_begin)

    def decode_with_timestamps(self, tokens: Iterable[int]) -> str:
        """Text with timestamp tokens written as "<|1.08|>"."""
        return self._decode(tokens)

    def decode_text(self, tokens: Iterable[int]) -> str:
        """Text of the regular tokens only (every special token left out)."""
        return self._decode(t for t in tokens if t < self.eot)

    def _decode(self, tokens: Iterable[int]) -> str:
        # Join bytes first: one UTF-8 character may be split across tokens. Regular tokens are
        # looked up inline, the rest go through token_bytes (2800 tokens: 0.42 -> 0.23 ms on the
        # development CPU; host time after the long form's last GPU step).
        vocab, n = self.vocab, len(self.vocab)
        parts = [vocab[t] if 0 <= t < n else self.token_bytes(t) for t in map(int, tokens)]
        return b"".join(parts).decode("utf-8", errors="replace")

    # --- encoding ---------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Byte-level BPE of `text` (no special tokens), the encoding openai/whisper uses."""
        ids: list[int] = []
        for piece in split_words(text):
            ids.extend(self._bpe(piece.encode("utf-8")))
        return ids

    @functools.lru_cache(maxsize=65536)
    def _bpe(self, piece: bytes) -> tuple[int, ...]:
        lookup = self._token_to_id
        if piece in lookup:
            return (lookup[piece],)
        parts = [piece[i:i + 1] for i in range(len(piece))]
        missing = [p for p in parts if p not in lookup]
        if missing:
            raise ValueError(f"byte {missing[0]!r} has no token in this vocabulary")
        while len(parts) > 1:
            # merge the adjacent pair whose concatenation has the lowest rank (= token id)
            best, best_rank = -1, None
            for i in range(len(parts) - 1):
                rank = lookup.get(parts[i] + parts[i + 1])
                if rank is not None and (best_rank is None or rank < best_rank):
                    best, best_rank = i, rank
            if best < 0:
                break
            parts[best:best + 2] = [parts[best] + parts[best + 1]]
        return tuple(lookup[p] for p in parts)

    def encode_longest_match(self, text: str) -> list[int]:
        """whisper.cpp's prompt tokenizer (`tokenize` in whisper.cpp): the same word split, then
        at each position the longest vocabulary token. Kept to reproduce whisper.cpp's prompts."""
        ids: list[int] = []
        for piece in split_words(text):
            b = piece.encode("utf-8")
            i = 0
            while i < len(b):
                for j in range(len(b), i, -1):
                    tok = self._token_to_id.get(b[i:j])
                    if tok is not None:
                        ids.append(tok)
                        i = j
                        break
                else:
                    i += 1  # whisper.cpp logs "unknown token" and skips the byte
        return ids

    # --- words ------------------------------------------------------------------------------------

    def split_to_word_tokens(self, tokens: list[int]) -> tuple[list[str], list[list[int]]]:
        """Group tokens into words (for word timestamps): on spaces, or on characters for
        languages written without spaces."""
        if self.language in _NO_SPACE_LANGUAGES:
            return self.split_tokens_on_unicode(tokens)
        subwords, subword_tokens = self.split_tokens_on_unicode(tokens)
        words: list[str] = []
        word_tokens: list[list[int]] = []
        for subword, toks in zip(subwords, subword_tokens):
            special = toks[0] >= self.eot
            punctuation = subword.strip() != "" and all(unicodedata.category(c)[0] == "P"
                                                        for c in subword.strip())
            if special or subword.startswith(" ") or punctuation or not words:
                words.append(subword)
                word_tokens.append(list(toks))
            else:
                words[-1] += subword
                word_tokens[-1].extend(toks)
        return words, word_tokens

    def split_tokens_on_unicode(self, tokens: list[int]) -> tuple[list[str], list[list[int]]]:
        """Split where the bytes so far form complete UTF-8 characters."""
        words: list[str] = []
        word_tokens: list[list[int]] = []
        current: list[int] = []
        pending = b""
        for token in tokens:
            current.append(token)
            pending += self.token_bytes(token)
            try:
                text = pending.decode("utf-8")
            except UnicodeDecodeError:
                continue
            words.append(text)
            word_tokens.append(current)
            current, pending = [], b""
        if current:
            words.append(pending.decode("utf-8", errors="replace"))
            word_tokens.append(current)
        return words, word_tokens

    def __repr__(self) -> str:
        kind = "multilingual" if self.is_multilingual else "English-only"
        return (f"Tokenizer({kind}, n_vocab={self.n_vocab}, languages={self.num_languages}, "
                f"language={self.language!r}, task={self.task!r})")
