"""English text normalisation for word error rates, in the manner of openai/whisper's
`EnglishTextNormalizer` (whisper/normalizers/english.py), and a `wer()` helper.

What it does, in order (same order as openai's):
  1. lowercase; drop text in [brackets], <angle brackets> and (parentheses);
  2. drop hesitations (hmm, mm, mhm, mmm, uh, um);
  3. expand contractions and titles (won't -> will not, mr -> mister, 's -> is, ...);
  4. remove commas inside numbers and periods not followed by a digit;
  5. remove symbols, punctuation and diacritics (NFKD), keeping . % $ ¢ € £ for numbers;
  6. spelled-out numbers -> digits ("twenty one" -> 21, "nineteen sixty one" -> 1961,
     "one hundred and five" -> 105, "third" -> 3rd, "five percent" -> 5%, "two dollars" -> $2),
     writing a lone 1 back as "one" (as openai does);
  7. British -> American spellings from a built-in list (colour, honour, centre, realise,
     travelled, ...: stems with their inflections, ~600 forms);
  8. collapse whitespace.

Differences from openai's, on purpose or for size:
  - openai's spelling map has ~1,700 entries (tysto.com's list); ours is generated from a
    shorter list of stems and rules, so rarer British spellings pass through unchanged;
  - "oh"/"o" count as zero only inside a number ("one oh one" -> 101); openai turns a lone
    "oh" into 0 as well;
  - "and a half" -> ".5" is not handled.
Both sides of a WER comparison go through the same function, so these only matter when the
reference and the hypothesis spell a word differently.

Needs only the standard library (jiwer is not required; `wer` computes the edit distance itself).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from fractions import Fraction

# --- symbols and diacritics ----------------------------------------------------------------------

# letters NFKD does not decompose into base letter + combining mark
_EXTRA_DIACRITICS = {"œ": "oe", "Œ": "OE", "ø": "o", "Ø": "O", "æ": "ae", "Æ": "AE", "ß": "ss",
                     "ẞ": "SS", "đ": "d", "Đ": "D", "ð": "d", "Ð": "D", "þ": "th", "Þ": "th",
                     "ł": "l", "Ł": "L"}


def remove_symbols_and_diacritics(s: str, keep: str = "") -> str:
    """Marks (Mn) dropped, other marks/symbols/punctuation (M*, S*, P*) -> space, except `keep`."""
    out = []
    for c in unicodedata.normalize("NFKD", s):
        if c in keep:
            out.append(c)
        elif c in _EXTRA_DIACRITICS:
            out.append(_EXTRA_DIACRITICS[c])
        else:
            cat = unicodedata.category(c)
            out.append("" if cat == "Mn" else " " if cat[0] in "MSP" else c)
    return "".join(out)


class BasicTextNormalizer:
    """Language-independent: lowercase, drop bracketed text, symbols -> spaces."""

    def __init__(self, remove_diacritics: bool = False):
        self.remove_diacritics = remove_diacritics

    def __call__(self, s: str) -> str:
        s = _drop_bracketed(s.lower())
        if self.remove_diacritics:
            s = remove_symbols_and_diacritics(s)
        else:
            s = "".join(" " if unicodedata.category(c)[0] in "MSP" else c
                        for c in unicodedata.normalize("NFKC", s))
        return re.sub(r"\s+", " ", s.lower()).strip()


def _drop_bracketed(s: str) -> str:
    s = re.sub(r"[<\[][^>\]]*[>\]]", "", s)  # [noise], <unk>
    return re.sub(r"\(([^)]+?)\)", "", s)  # (laughs)


# --- numbers -------------------------------------------------------------------------------------

_ONES = {w: i for i, w in enumerate(
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen".split(), start=1)}
_TENS = {w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)}
_MULTIPLIERS = {"hundred": 100, "thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12}
_ZEROS = {"zero", "oh", "o"}
_ORDINAL_ONES = {"first": (1, "st"), "second": (2, "nd"), "third": (3, "rd"), "fifth": (5, "th"),
                 "eighth": (8, "th"), "ninth": (9, "th"), "twelfth": (12, "th")}
for _w, _v in _ONES.items():
    _ORDINAL_ONES.setdefault(_w + "th", (_v, "th"))  # fourth, sixth, seventh, tenth, ...
_SUFFIXED_ONES = {**{("sixes" if w == "six" else w + "s"): (v, "s") for w, v in _ONES.items()},
                  **_ORDINAL_ONES}
_SUFFIXED_TENS = {**{w[:-1] + "ies": (v, "s") for w, v in _TENS.items()},
                  **{w[:-1] + "ieth": (v, "th") for w, v in _TENS.items()}}
_SUFFIXED_MULTIPLIERS = {**{w + "s": (v, "s") for w, v in _MULTIPLIERS.items()},
                         **{w + "th": (v, "th") for w, v in _MULTIPLIERS.items()}}
_SIGN_WORDS = {"minus": "-", "negative": "-", "plus": "+", "positive": "+"}  # before a number
_CURRENCY_WORDS = {"pound": "£", "pounds": "£", "euro": "€", "euros": "€", "dollar": "$",
                   "dollars": "$", "cent": "¢", "cents": "¢"}  # after a number
_NUMBER_WORDS = (set(_ONES) | set(_TENS) | set(_MULTIPLIERS) | {"zero"} | set(_SUFFIXED_ONES)
                 | set(_SUFFIXED_TENS) | set(_SUFFIXED_MULTIPLIERS))
_ARABIC = re.compile(r"^\d+(\.\d+)?$")


def _is_numeric(word: str | None) -> bool:
    return word is not None and (word in _NUMBER_WORDS or bool(_ARABIC.match(word)))


def _add_small(value: int | str | None, n: int, prev: str | None) -> int | str:
    """Append a number below 100 (`n`, spoken as one word) to the number being read.

    Arithmetic where the place is free ("twenty" + "one" = 21, "one hundred" + "five" = 105),
    digit concatenation otherwise ("nineteen" "sixty" = "1960", "one" "two" = "12").
    """
    if value is None:
        return n
    if isinstance(value, str) or prev in _ONES:
        if prev in _TENS and n < 10 and str(value).endswith("0"):
            return str(value)[:-1] + str(n)  # "1960" + "one" -> "1961"
        return str(value) + str(n)
    room = 10 if n < 10 else 100  # a digit fills the units place, a teen or ten the last two
    return value + n if value % room == 0 else str(value) + str(n)


def _apply_multiplier(value: int | str, m: int) -> int | str | None:
    if isinstance(value, str) or value == 0:
        f = Fraction(value) if re.fullmatch(r"\d+(\.\d+)?", str(value)) else None
        return int(f * m) if f is not None and (f * m).denominator == 1 else None
    return value // 1000 * 1000 + value % 1000 * m  # "two thousand three hundred"


def _numbers_to_digits(words: Sequence[str]) -> Iterator[str]:
    """Word-level number reader (see module docstring, step 6)."""
    value: int | str | None = None
    prefix = ""

    def flush() -> Iterator[str]:
        nonlocal value, prefix
        if value is not None:
            yield prefix + str(value)
        value, prefix = None, ""

    padded = [None, *words, None]
    skip = False
    for i in range(1, len(padded) - 1):
        if skip:
            skip = False
            continue
        prev, word, nxt = padded[i - 1], padded[i], padded[i + 1]
        sign = word[0] if word[0] in "$£€¢" else ""
        bare = word[1:] if sign else word
        if _ARABIC.match(bare):
            if isinstance(value, str) and value.endswith("."):
                value += bare  # "3 point 14" / "1 . 5"
                continue
            yield from flush()
            prefix = sign
            value = int(bare) if "." not in bare else bare
        elif word in _ZEROS and (word == "zero" or value is not None):
            value = str(value if value is not None else "") + "0"
        elif word in _ONES:
            value = _add_small(value, _ONES[word], prev)
        elif word in _TENS:
            value = _add_small(value, _TENS[word], None)
        elif word in _SUFFIXED_ONES or word in _SUFFIXED_TENS:
            n, suffix = _SUFFIXED_ONES.get(word) or _SUFFIXED_TENS[word]
            value = _add_small(value, n, prev if word in _SUFFIXED_ONES else None)
            value = f"{value}{suffix}"
            yield from flush()
        elif word in _MULTIPLIERS or word in _SUFFIXED_MULTIPLIERS:
            m, suffix = (_MULTIPLIERS[word], "") if word in _MULTIPLIERS else _SUFFIXED_MULTIPLIERS[word]
            if value is None:
                value = m
            else:
                scaled = _apply_multiplier(value, m)
                if scaled is None:
                    yield from flush()
                    scaled = m
                value = scaled
            if suffix:
                value = f"{value}{suffix}"
                yield from flush()
        elif word == "and" and prev in _MULTIPLIERS and _is_numeric(nxt):
            continue  # "one hundred and five"
        elif word == "point" and value is not None and _is_numeric(nxt):
            value = f"{value}."
        elif word in ("double", "triple") and (nxt in _ONES or nxt in _ZEROS):
            digit = str(_ONES.get(nxt, 0))
            value = str(value if value is not None else "") + digit * (2 if word == "double" else 3)
            skip = True
        elif word in _SIGN_WORDS and _is_numeric(nxt):
            yield from flush()
            prefix = _SIGN_WORDS[word]
        elif word in _CURRENCY_WORDS and value is not None:
            prefix = _CURRENCY_WORDS[word] + prefix
            yield from flush()
        elif word == "percent" and value is not None:
            value = f"{value}%"
            yield from flush()
        elif word == "per" and nxt == "cent" and value is not None:
            value = f"{value}%"
            yield from flush()
            skip = True
        else:
            yield from flush()
            yield word
    yield from flush()


def standardize_numbers(s: str) -> str:
    s = re.sub(r"([a-z])([0-9])", r"\1 \2", s)  # split "abc123"
    s = re.sub(r"([0-9])([a-z])", r"\1 \2", s)
    s = re.sub(r"([0-9])\s+(st|nd|rd|th|s)\b", r"\1\2", s)  # but keep 21st, 1960s together
    s = " ".join(_numbers_to_digits(s.split()))
    s = re.sub(r"([€£$])([0-9]+) (?:and )?¢([0-9]{1,2})\b",
               lambda m: f"{m.group(1)}{m.group(2)}.{int(m.group(3)):02d}", s)  # $2 and ¢7 -> $2.07
    s = re.sub(r"[€£$]0\.([0-9]{1,2})\b", lambda m: f"¢{int(m.group(1))}", s)
    return re.sub(r"\b1(s?)\b", r"one\1", s)  # "one" reads better than "1"


# --- spellings -----------------------------------------------------------------------------------

def _spelling_map() -> dict[str, str]:
    m: dict[str, str] = {}

    def forms(uk: str, us: str, endings: Iterable[str]) -> None:
        for e in endings:
            m[uk + e] = us + e

    # -our -> -or
    for stem in ("colour", "honour", "favour", "labour", "neighbour", "behaviour", "harbour", "humour",
                 "rumour", "vapour", "valour", "splendour", "parlour", "armour", "savour", "endeavour",
                 "odour", "rigour", "vigour", "clamour", "flavour", "fervour", "candour", "ardour",
                 "tumour", "demeanour", "succour", "arbour", "rancour", "dishonour", "discolour",
                 "misdemeanour", "saviour", "clangour", "glamour"):
        us = stem[:-3] + "or" if stem != "glamour" else stem
        forms(stem, us, ("", "s", "ed", "ing", "able", "ably", "ful", "fully", "less", "er", "ers",
                         "ite", "ites", "hood", "hoods", "ly", "y", "ist", "ists", "ous"))
    # -re -> -er
    for stem in ("centre", "theatre", "metre", "litre", "fibre", "sombre", "spectre", "sceptre", "meagre",
                 "calibre", "lustre", "sabre", "mitre", "sepulchre", "ochre", "goitre", "saltpetre"):
        us = stem[:-2] + "er"
        forms(stem, us, ("", "s"))
        m[stem + "d"] = us + "ed"
    m.update({"manoeuvre": "maneuver", "manoeuvres": "maneuvers", "manoeuvred": "maneuvered",
              "manoeuvring": "maneuvering"})
    # -ise -> -ize (+ -isation)
    for stem in ("real", "recogn", "organ", "apolog", "civil", "critic", "emphas", "memor", "sympath",
                 "character", "author", "agon", "idol", "patron", "scrutin", "summar",
                 "tantal", "familiar", "util", "visual", "special", "general", "modern", "minim",
                 "maxim", "optim", "colon", "legal", "natural", "normal", "fertil", "steril",
                 "neutral", "central", "immortal", "moral", "standard", "symbol", "jeopard",
                 "harmon", "fossil", "hypnot", "magnet", "mobil", "polar", "subsid", "terror",
                 "vandal", "vocal", "woman", "econom", "item", "priorit", "capital",
                 "scandal", "fantas", "material", "equal", "stabil", "bapt"):
        forms(stem + "is", stem + "iz", ("e", "ed", "es", "ing", "er", "ers", "ation", "ations"))
    # -yse -> -yze
    for stem in ("anal", "paral", "catal", "dial", "electrol"):
        forms(stem + "ys", stem + "yz", ("e", "ed", "es", "ing"))
    # doubled l before a suffix
    for stem in ("counsel", "travel", "cancel", "label", "model", "quarrel", "marvel", "jewel", "fuel",
                 "dial", "signal", "level", "revel", "shovel", "channel", "equal", "rival", "total",
                 "tunnel", "grovel", "unravel", "marshal", "pencil", "enamel", "panel", "snivel",
                 "swivel", "tassel", "towel", "trowel", "duel", "gravel", "kennel", "libel", "yodel",
                 "chisel", "funnel", "carol", "bevel", "dishevel", "initial", "pummel", "refuel"):
        forms(stem + "l", stem, ("ed", "ing", "er", "ers"))
    m.update({"counsellor": "counselor", "counsellors": "counselors", "marvellous": "marvelous",
              "marvellously": "marvelously", "jewellery": "jewelry", "woollen": "woolen",
              "travellers": "travelers"})
    m.update({
        "grey": "gray", "greys": "grays", "greyish": "grayish", "plough": "plow", "ploughs": "plows",
        "ploughed": "plowed", "ploughing": "plowing", "ploughman": "plowman", "cheque": "check",
        "cheques": "checks", "defence": "defense", "defences": "defenses", "offence": "offense",
        "offences": "offenses", "licence": "license", "pretence": "pretense", "practise": "practice",
        "practised": "practiced", "practising": "practicing", "programme": "program",
        "programmes": "programs", "tyre": "tire", "tyres": "tires", "mould": "mold", "moulds": "molds",
        "mouldy": "moldy", "moulded": "molded", "moult": "molt", "smoulder": "smolder",
        "smouldering": "smoldering", "catalogue": "catalog", "catalogues": "catalogs",
        "dialogue": "dialog", "dialogues": "dialogs", "ageing": "aging", "judgement": "judgment",
        "judgements": "judgments", "sceptic": "skeptic", "sceptical": "skeptical",
        "scepticism": "skepticism", "storey": "story", "storeys": "stories", "gaol": "jail",
        "gaoler": "jailer", "aluminium": "aluminum", "fulfil": "fulfill", "fulfilment": "fulfillment",
        "enrol": "enroll", "enrolment": "enrollment", "instil": "instill", "skilful": "skillful",
        "skilfully": "skillfully", "wilful": "willful", "wilfully": "willfully", "distil": "distill",
        "moustache": "mustache", "moustaches": "mustaches",
        "pyjamas": "pajamas", "draught": "draft", "draughts": "drafts", "kerb": "curb",
        "connexion": "connection", "encyclopaedia": "encyclopedia", "mediaeval": "medieval",
        "foetus": "fetus", "oestrogen": "estrogen", "paediatric": "pediatric", "anaemia": "anemia",
        "anaesthetic": "anesthetic", "archaeology": "archeology",
    })
    return m


_SPELLINGS = _spelling_map()


def standardize_spellings(s: str) -> str:
    return " ".join(_SPELLINGS.get(w, w) for w in s.split())


# --- the English normaliser ----------------------------------------------------------------------

_HESITATIONS = r"\b(hmm|mm|mhm|mmm|uh|um)\b"

# (pattern, replacement), applied in order: specific forms before the general "n't", "'s" ...
_REPLACERS = (
    (r"\bwon't\b", "will not"), (r"\bcan't\b", "can not"), (r"\blet's\b", "let us"),
    (r"\bain't\b", "aint"), (r"\by'all\b", "you all"), (r"\bwanna\b", "want to"),
    (r"\bgotta\b", "got to"), (r"\bgonna\b", "going to"), (r"\bi'ma\b", "i am going to"),
    (r"\bimma\b", "i am going to"), (r"\bwoulda\b", "would have"), (r"\bcoulda\b", "could have"),
    (r"\bshoulda\b", "should have"), (r"\bma'am\b", "madam"),
    # titles
    (r"\bmr\b", "mister "), (r"\bmrs\b", "missus "), (r"\bst\b", "saint "), (r"\bdr\b", "doctor "),
    (r"\bprof\b", "professor "), (r"\bcapt\b", "captain "), (r"\bgov\b", "governor "),
    (r"\bald\b", "alderman "), (r"\bgen\b", "general "), (r"\bsen\b", "senator "),
    (r"\brep\b", "representative "), (r"\bpres\b", "president "), (r"\brev\b", "reverend "),
    (r"\bhon\b", "honorable "), (r"\basst\b", "assistant "), (r"\bassoc\b", "associate "),
    (r"\blt\b", "lieutenant "), (r"\bcol\b", "colonel "), (r"\bjr\b", "junior "),
    (r"\bsr\b", "senior "), (r"\besq\b", "esquire "),
    # perfect tenses
    (r"'d been\b", " had been"), (r"'s been\b", " has been"), (r"'d gone\b", " had gone"),
    (r"'s gone\b", " has gone"), (r"'d done\b", " had done"), (r"'s got\b", " has got"),
    # general contractions
    (r"n't\b", " not"), (r"'re\b", " are"), (r"'s\b", " is"), (r"'d\b", " would"),
    (r"'ll\b", " will"), (r"'t\b", " not"), (r"'ve\b", " have"), (r"'m\b", " am"),
)


class EnglishTextNormalizer:
    """Callable: text -> normalised text (see the module docstring)."""

    def __call__(self, s: str) -> str:
        s = _drop_bracketed(s.lower())
        s = re.sub(_HESITATIONS, "", s)
        s = re.sub(r"\s+'", "'", s)  # "don 't" -> "don't"
        for pattern, replacement in _REPLACERS:
            s = re.sub(pattern, replacement, s)
        s = re.sub(r"(\d),(\d)", r"\1\2", s)  # 1,000 -> 1000
        s = re.sub(r"\.([^0-9]|$)", r" \1", s)  # periods not followed by a digit
        s = remove_symbols_and_diacritics(s, keep=".%$¢€£")
        s = standardize_numbers(s)
        s = standardize_spellings(s)
        s = re.sub(r"[.$¢€£]([^0-9])", r" \1", s)  # leftover symbols not next to a number
        s = re.sub(r"([^0-9])%", r"\1 ", s)
        return re.sub(r"\s+", " ", s).strip()


normalize_english = EnglishTextNormalizer()


# --- word error rate -----------------------------------------------------------------------------

def _edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Levenshtein distance over words (substitutions, insertions, deletions cost 1)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def wer(references: str | Sequence[str], hypotheses: str | Sequence[str], normalize: bool = True) -> float:
    """Corpus word error rate: total word edits / total reference words (jiwer's definition).

    Each text goes through `normalize_english` first unless `normalize=False`.
    """
    refs = [references] if isinstance(references, str) else list(references)
    hyps = [hypotheses] if isinstance(hypotheses, str) else list(hypotheses)
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    edits = words = 0
    for r, h in zip(refs, hyps):
        rw = (normalize_english(r) if normalize else r).split()
        hw = (normalize_english(h) if normalize else h).split()
        edits += _edit_distance(rw, hw)
        words += len(rw)
    if words == 0:
        raise ValueError("the references contain no words")
    return edits / words
