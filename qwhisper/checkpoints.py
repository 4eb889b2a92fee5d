"""Whisper checkpoints in other formats, read with numpy: CTranslate2, OpenAI .pt, Hugging Face.

Each source gives the model's hparams, its own vocabulary (or None) and `get(openai name) -> array`
(openai/whisper's state_dict names, Q/K/V split where the format fuses them); convert.py writes them
out as a GGML file.

* **CTranslate2** (faster-whisper's format): a folder with `model.bin` (or `model.bin.part1`,
  `model.bin.part2`, ... read as one stream, never joined on disk) and `vocabulary.json` /
  `vocabulary.txt` / `tokenizer.json`. The binary layout is CTranslate2's `ModelSpec._serialize`
  (python/ctranslate2/specs/model_spec.py), read here with numpy; CTranslate2 is not needed.
  Q/K/V are fused there (self-attention `linear_0` = [q; k; v], cross-attention `linear_0` = q and
  `linear_1` = [k; v]) and split back here.
* **OpenAI** `.pt` checkpoint: {"dims": ..., "model_state_dict": ...}; its vocabulary lives in
  tiktoken files outside the checkpoint, so `vocab=` (`--vocab`) must name one.
* **Hugging Face transformers**: a folder with config.json and model.safetensors (or a sharded
  index, or pytorch_model.bin), vocab.json / tokenizer.json.
"""

from __future__ import annotations

import base64
import json
import os
import struct
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import ModelFormatError
from .ggml_file import MAGIC, HParams, expected_tensor_shapes, read_ggml

EOT = "<|endoftext|>"  # the first special token: the regular vocabulary is everything before it
N_REGULAR_EN = 50256  # gpt2.tiktoken ranks; multilingual.tiktoken has one more (50257)

PathLike = str | os.PathLike


# ---------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------
# vocabularies


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (every BPE vocab file but tiktoken's uses it)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    table, n = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:  # control characters, space, DEL, ... shift to 256 + n so every byte prints
            table[b] = chr(256 + n)
            n += 1
    return table


_BYTE_OF_CHAR = {c: b for b, c in _bytes_to_unicode().items()}


def _unicode_token_to_bytes(token: str, path: Path, index: int) -> bytes:
    try:
        return bytes(_BYTE_OF_CHAR[c] for c in token)
    except KeyError as e:
        raise ModelFormatError(path, f"token {index} {token!r} has the character {e.args[0]!r}, which is not "
                                     "in GPT-2's byte-level alphabet") from None


def _regular_tokens(tokens: Sequence[str], path: Path) -> list[bytes]:
    """Byte-level tokens in id order, specials included -> the regular ones as raw bytes."""
    try:
        n_regular = list(tokens).index(EOT)
    except ValueError:
        raise ModelFormatError(path, f"vocabulary has no {EOT} token") from None
    return [_unicode_token_to_bytes(t, path, i) for i, t in enumerate(tokens[:n_regular])]


def _tokens_by_id(mapping: dict[str, int], path: Path) -> list[str]:
    """{token: id} (vocab.json, tokenizer.json's model.vocab) -> tokens up to EOT, in id order."""
    if EOT not in mapping:
        raise ModelFormatError(path, f"vocabulary has no {EOT} token")
    by_id = {i: t for t, i in mapping.items()}
    missing = [i for i in range(mapping[EOT]) if i not in by_id]
    if missing:
        raise ModelFormatError(path, f"vocabulary has no token with id {missing[0]}")
    return [by_id[i] for i in range(mapping[EOT] + 1)]


def read_vocab(path: PathLike) -> list[bytes]:
    """The regular tokens (raw bytes, rank order) from any vocabulary file this module knows.

    A folder is searched for vocabulary.json, vocabulary.txt, tokenizer.json, vocab.json (in that
    order). Files: `*.tiktoken` (base64 token + rank per line), CTranslate2 vocabulary.json (a list)
    or vocabulary.txt (one byte-level token per line), Hugging Face tokenizer.json or vocab.json
    ({token: id}), or a whisper.cpp GGML model file (its vocabulary is copied).
    """
    path = Path(path)
    if path.is_dir():
        for name in ("vocabulary.json", "vocabulary.txt", "tokenizer.json", "vocab.json"):
            if (path / name).is_file():
                return read_vocab(path / name)
        raise ModelFormatError(path, "no vocabulary file (vocabulary.json, vocabulary.txt, tokenizer.json or "
                                     "vocab.json) in this folder")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ModelFormatError(path, "vocabulary file not found") from None
    except OSError as e:
        raise ModelFormatError(path, f"cannot read vocabulary: {e.strerror or e}") from None

    if raw[:4] == struct.pack("<I", MAGIC):
        return read_ggml(path, check_tensors=False).vocab
    if path.suffix == ".tiktoken":
        return _read_tiktoken(path, raw)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ModelFormatError(path, "vocabulary file is neither UTF-8 text nor a GGML model") from None
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ModelFormatError(path, f"invalid JSON at line {e.lineno}: {e.msg}") from None
        if isinstance(data, list):  # CTranslate2 vocabulary.json
            return _regular_tokens(data, path)
        if isinstance(data, dict) and isinstance(data.get("model"), dict) and "vocab" in data["model"]:
            return _regular_tokens(_tokens_by_id(data["model"]["vocab"], path), path)  # tokenizer.json
        if isinstance(data, dict) and all(isinstance(v, int) for v in data.values()):
            return _regular_tokens(_tokens_by_id(data, path), path)  # vocab.json
        raise ModelFormatError(path, "JSON file is not a vocabulary (a token list, tokenizer.json or vocab.json)")
    # CTranslate2 vocabulary.txt: one token per line ('\n' only: a token may be empty, and
    # byte-level tokens never contain line breaks)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return _regular_tokens(lines, path)


def _read_tiktoken(path: Path, raw: bytes) -> list[bytes]:
    tokens: list[bytes] = []
    for lineno, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            tok, rank = base64.b64decode(token, validate=True), int(rank)
        except ValueError:
            raise ModelFormatError(path, f"line {lineno} is not '<base64 token> <rank>'") from None
        if rank != len(tokens):
            raise ModelFormatError(path, f"line {lineno}: rank {rank}, expected {len(tokens)} (ranks must "
                                         "count up from 0)")
        tokens.append(tok)
    return tokens


def _check_vocab(vocab: list[bytes], n_vocab: int, where: Path) -> None:
    # whisper.cpp numbers the specials from the vocabulary's kind: <|endoftext|> is 50256 in
    # English models (n_vocab 51864) and 50257 in multilingual ones (n_vocab >= 51865)
    expected = N_REGULAR_EN + (n_vocab >= 51865)
    if len(vocab) != expected:
        kind = "multilingual" if n_vocab >= 51865 else "English-only"
        raise ModelFormatError(where, f"vocabulary has {len(vocab)} regular tokens, but this {kind} model "
                                      f"(n_vocab={n_vocab}) needs {expected}: wrong vocabulary file?")


# ---------------------------------------------------------------------------------------------
# sources: each gives hparams, its own vocabulary (or None) and get(openai name) -> array


class _Source:
    kind = ""
    path: Path
    hparams: HParams  # ftype 0: set by the writer
    vocab: list[bytes] | None

    def get(self, name: str) -> np.ndarray:
        """The tensor under its openai/whisper name, float16 or float32, its checkpoint shape."""
        raise NotImplementedError


def _hparams(n_vocab, n_mels, n_audio_ctx, n_audio_state, n_audio_head, n_audio_layer,
             n_text_ctx, n_text_state, n_text_head, n_text_layer) -> HParams:
    return HParams(n_vocab, n_audio_ctx, n_audio_state, n_audio_head, n_audio_layer,
                   n_text_ctx, n_text_state, n_text_head, n_text_layer, n_mels, 0)


def _as_float(a: np.ndarray) -> np.ndarray:
    if a.dtype in (np.float16, np.float32):
        return a
    return a.astype(np.float32)


class _MultiFile:
    """Read-only bytes of model.bin, or of model.bin.part1 + part2 + ... as one stream.

    Each part is memmapped; a read inside one part is a view, a read across a boundary a copy.
    """

    def __init__(self, paths: list[Path]):
        self.paths = paths
        self.maps = [np.memmap(p, dtype=np.uint8, mode="r") if p.stat().st_size else np.zeros(0, np.uint8)
                     for p in paths]
        self.starts = np.cumsum([0] + [m.size for m in self.maps])
        self.size = int(self.starts[-1])
        self.name = str(paths[0]) if len(paths) == 1 else " + ".join(str(p) for p in paths)

    def read(self, offset: int, n: int, what: str) -> np.ndarray:
        if n < 0 or offset + n > self.size:
            raise ModelFormatError(self.name, f"truncated file: {what} needs {n} bytes, "
                                              f"{self.size - offset} left", offset)
        i = int(np.searchsorted(self.starts, offset, side="right")) - 1
        lo = offset - int(self.starts[i])
        if lo + n <= self.maps[i].size:
            return self.maps[i][lo:lo + n]
        chunks, left = [], n
        while left:
            take = min(left, self.maps[i].size - lo)
            chunks.append(self.maps[i][lo:lo + take])
            left, lo, i = left - take, 0, i + 1
        return np.concatenate(chunks)


# CTranslate2's DataType enum (include/ctranslate2/types.h), by type id
_CT2_DTYPES = {0: np.dtype("<f4"), 1: np.dtype("i1"), 2: np.dtype("<i2"), 3: np.dtype("<i4"),
               4: np.dtype("<f2"), 5: np.dtype("<u2")}  # 5 = bfloat16, widened to f32 on read
_CT2_BF16 = 5
_CT2_MIN_VERSION = 4  # since binary version 4 each variable carries its dtype id (model.cc)
_CT2_MAX_VERSION = 6  # CTranslate2 4.x writes 6

# openai name (inside a block) -> (CTranslate2 name inside a layer, part index, number of parts)
_CT2_BLOCK = {
    "attn.query.weight": ("self_attention/linear_0/weight", 0, 3),
    "attn.query.bias": ("self_attention/linear_0/bias", 0, 3),
    "attn.key.weight": ("self_attention/linear_0/weight", 1, 3),
    "attn.value.weight": ("self_attention/linear_0/weight", 2, 3),
    "attn.value.bias": ("self_attention/linear_0/bias", 2, 3),
    "attn.out.weight": ("self_attention/linear_1/weight", 0, 1),
    "attn.out.bias": ("self_attention/linear_1/bias", 0, 1),
    "attn_ln.weight": ("self_attention/layer_norm/gamma", 0, 1),
    "attn_ln.bias": ("self_attention/layer_norm/beta", 0, 1),
    "cross_attn.query.weight": ("attention/linear_0/weight", 0, 1),
    "cross_attn.query.bias": ("attention/linear_0/bias", 0, 1),
    "cross_attn.key.weight": ("attention/linear_1/weight", 0, 2),
    "cross_attn.value.weight": ("attention/linear_1/weight", 1, 2),
    "cross_attn.value.bias": ("attention/linear_1/bias", 1, 2),
    "cross_attn.out.weight": ("attention/linear_2/weight", 0, 1),
    "cross_attn.out.bias": ("attention/linear_2/bias", 0, 1),
    "cross_attn_ln.weight": ("attention/layer_norm/gamma", 0, 1),
    "cross_attn_ln.bias": ("attention/layer_norm/beta", 0, 1),
    "mlp.0.weight": ("ffn/linear_0/weight", 0, 1),
    "mlp.0.bias": ("ffn/linear_0/bias", 0, 1),
    "mlp.2.weight": ("ffn/linear_1/weight", 0, 1),
    "mlp.2.bias": ("ffn/linear_1/bias", 0, 1),
    "mlp_ln.weight": ("ffn/layer_norm/gamma", 0, 1),
    "mlp_ln.bias": ("ffn/layer_norm/beta", 0, 1),
}
_CT2_GLOBAL = {
    "encoder.positional_embedding": "encoder/position_encodings/encodings",
    "encoder.conv1.weight": "encoder/conv1/weight", "encoder.conv1.bias": "encoder/conv1/bias",
    "encoder.conv2.weight": "encoder/conv2/weight", "encoder.conv2.bias": "encoder/conv2/bias",
    "encoder.ln_post.weight": "encoder/layer_norm/gamma", "encoder.ln_post.bias": "encoder/layer_norm/beta",
    "decoder.positional_embedding": "decoder/position_encodings/encodings",
    "decoder.token_embedding.weight": "decoder/embeddings/weight",
    "decoder.ln.weight": "decoder/layer_norm/gamma", "decoder.ln.bias": "decoder/layer_norm/beta",
}
# the fused key bias CTranslate2 stores (zeros: Whisper's key projection has none)
_CT2_KEY_BIASES = (("self_attention/linear_0/bias", 1, 3), ("attention/linear_1/bias", 0, 2))


def _ct2_parts(folder: Path) -> list[Path] | None:
    """model.bin, or model.bin.part1..N found in `folder` (later parts also in sibling packages).

    Split packages put each part in its own package (…/pkg_part1/data/model.bin.part1,
    …/pkg_part2/data/model.bin.part2): a part missing from `folder` is looked for at
    `<folder's grandparent>/*/<folder's name>/model.bin.partK`.
    """
    if (folder / "model.bin").is_file():
        return [folder / "model.bin"]
    if not (folder / "model.bin.part1").is_file():
        return None
    parts = [folder / "model.bin.part1"]
    while True:
        name = f"model.bin.part{len(parts) + 1}"
        if (folder / name).is_file():
            parts.append(folder / name)
            continue
        found = sorted(folder.parent.parent.glob(f"*/{folder.name}/{name}"))
        if len(found) != 1:
            return parts
        parts.append(found[0])


class _CT2Source(_Source):
    kind = "CTranslate2"

    def __init__(self, folders: list[Path], parts: list[Path]):
        self.path = folders[0]
        self.file = _MultiFile(parts)
        self.vars: dict[str, tuple[np.dtype, tuple[int, ...], int, int]] = {}  # dtype, shape, offset, bytes
        self.aliases: dict[str, str] = {}
        self._parse()
        hp = self._derive_hparams()
        self.hparams = hp
        vocab_dir = next((f for f in folders if any((f / n).is_file() for n in
                                                     ("vocabulary.json", "vocabulary.txt", "tokenizer.json"))),
                         None)
        self.vocab = read_vocab(vocab_dir) if vocab_dir else None

    # --- the binary format --------------------------------------------------------------------
    def _parse(self) -> None:
        f, pos = self.file, 0

        def ints(fmt: str, what: str) -> tuple[int, ...]:
            nonlocal pos
            n = struct.calcsize("<" + fmt)
            vals = struct.unpack("<" + fmt, f.read(pos, n, what).tobytes())
            pos += n
            return vals

        def string(what: str) -> str:
            nonlocal pos
            start = pos
            (n,) = ints("H", what)  # length includes the trailing NUL
            raw = f.read(pos, n, what).tobytes()
            pos += n
            if n == 0 or raw[-1] != 0:
                raise ModelFormatError(f.name, f"{what} is not a NUL-terminated string", start)
            try:
                return raw[:-1].decode("utf-8")
            except UnicodeDecodeError:
                raise ModelFormatError(f.name, f"{what} is not UTF-8", start) from None

        (version,) = ints("I", "binary version")
        if not _CT2_MIN_VERSION <= version <= _CT2_MAX_VERSION:
            raise ModelFormatError(f.name, f"CTranslate2 binary version {version}: only versions "
                                           f"{_CT2_MIN_VERSION}-{_CT2_MAX_VERSION} are supported "
                                           "(is this a CTranslate2 model.bin?)", 0)
        spec = string("model spec name")
        (revision,) = ints("I", "spec revision")
        if spec != "WhisperSpec":
            raise ModelFormatError(f.name, f"this CTranslate2 model is a {spec!r}, not a Whisper model")
        (n_vars,) = ints("I", "number of variables")
        min_record = 2 + 1 + 1 + 1 + 4  # name length, NUL, rank, dtype id, byte count
        if n_vars * min_record > f.size - pos:  # also keeps a corrupt count from looping for long
            raise ModelFormatError(f.name, f"truncated file: {n_vars} variables need at least "
                                           f"{n_vars * min_record} bytes, {f.size - pos} left", pos - 4)
        for _ in range(n_vars):
            start = pos
            name = string("variable name")
            (rank,) = ints("B", f"rank of {name}")
            shape = ints(f"{rank}I", f"shape of {name}")
            type_id, nbytes = ints("BI", f"dtype of {name}")
            dtype = _CT2_DTYPES.get(type_id)
            if dtype is None:
                raise ModelFormatError(f.name, f"variable {name!r} has unknown dtype id {type_id}", start)
            if nbytes != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
                raise ModelFormatError(f.name, f"variable {name!r}: {nbytes} bytes do not fit {dtype} "
                                               f"{list(shape)}", start)
            if nbytes > f.size - pos:
                raise ModelFormatError(f.name, f"truncated file: variable {name!r} needs {nbytes} bytes, "
                                               f"{f.size - pos} left", pos)
            self.vars[name] = (None if type_id == _CT2_BF16 else dtype, shape, pos, nbytes)
            pos += nbytes
        (n_aliases,) = ints("I", "number of aliases")
        for _ in range(n_aliases):
            alias = string("alias name")
            self.aliases[alias] = string(f"target of alias {alias}")
        if pos != f.size:
            raise ModelFormatError(f.name, f"{f.size - pos} unexpected bytes after the last alias", pos)
        del revision  # layout checked by the variable names instead

    def _raw(self, name: str) -> np.ndarray:
        """A variable as stored (float16/float32, or int8/int16 dequantized, bf16 widened)."""
        name = self.aliases.get(name, name)
        if name not in self.vars:
            raise ModelFormatError(self.file.name, f"CTranslate2 variable {name!r} is missing")
        dtype, shape, offset, nbytes = self.vars[name]
        raw = self.file.read(offset, nbytes, name)
        if dtype is None:  # bfloat16: the high half of a float32
            return (raw.view("<u2").astype(np.uint32) << 16).view(np.float32).reshape(shape)
        a = raw.view(dtype).reshape(shape)
        if dtype.kind == "i" and name.endswith("weight"):
            # int8 (per-row scale) / int16 (one scale) weights: CTranslate2 stores rint(w * scale)
            scale = self._raw(name + "_scale").astype(np.float32)
            scale = scale.reshape(scale.shape + (1,) * (a.ndim - scale.ndim))
            return a.astype(np.float32) / scale
        return a

    def scalar(self, name: str) -> int:
        a = self._raw(name)
        if a.size != 1:
            raise ModelFormatError(self.file.name, f"CTranslate2 variable {name!r} should be a scalar")
        return int(a.reshape(()))

    def _derive_hparams(self) -> HParams:
        def n_layers(side: str) -> int:
            n = 0
            while any(v.startswith(f"{side}/layer_{n}/") for v in [*self.vars, *self.aliases]):
                n += 1
            return n

        conv1 = self._raw("encoder/conv1/weight")
        emb = self._raw("decoder/embeddings/weight")
        return _hparams(
            n_vocab=emb.shape[0], n_mels=conv1.shape[1],
            n_audio_ctx=self._raw("encoder/position_encodings/encodings").shape[0],
            n_audio_state=conv1.shape[0], n_audio_head=self.scalar("encoder/num_heads"),
            n_audio_layer=n_layers("encoder"),
            n_text_ctx=self._raw("decoder/position_encodings/encodings").shape[0],
            n_text_state=emb.shape[1], n_text_head=self.scalar("decoder/num_heads"),
            n_text_layer=n_layers("decoder"))

    def get(self, name: str) -> np.ndarray:
        if name in _CT2_GLOBAL:
            return _as_float(self._raw(_CT2_GLOBAL[name]))
        side, _, i, inner = name.split(".", 3)  # encoder.blocks.3.attn.query.weight
        var, part, n_parts = _CT2_BLOCK[inner]
        layer = f"{side}/layer_{i}/"
        a = self._raw(layer + var)
        if inner == "attn.query.bias" or inner == "cross_attn.query.bias":
            self._check_key_bias(layer, inner.startswith("cross"))
        return _as_float(np.split(a, n_parts, axis=0)[part] if n_parts > 1 else a)

    def _check_key_bias(self, layer: str, cross: bool) -> None:
        # softmax(q.(k + b)) == softmax(q.k): a key bias adds one constant per query, so dropping it
        # is exact; CTranslate2's converters store zeros there. Say so if a model has something else.
        var, part, n_parts = _CT2_KEY_BIASES[cross]
        kb = np.split(self._raw(layer + var), n_parts)[part]
        if np.any(kb != 0):
            warnings.warn(f"{self.file.name}: the key part of {layer}{var} is not zero; it is dropped "
                          "(whisper.cpp has no key bias; softmax makes it a no-op)", stacklevel=3)

    def check_tied_projection(self) -> None:
        proj = "decoder/projection/weight"
        if proj in self.vars and not np.array_equal(self._raw(proj), self._raw("decoder/embeddings/weight")):
            raise ModelFormatError(self.file.name, "decoder/projection/weight differs from the token embedding; "
                                                   "whisper.cpp ties them, so this model cannot be converted")


# openai name (inside a block) -> Hugging Face name (inside a layer)
_HF_BLOCK = {"attn.": "self_attn.", "attn_ln.": "self_attn_layer_norm.", "cross_attn.": "encoder_attn.",
             "cross_attn_ln.": "encoder_attn_layer_norm.", "mlp.0.": "fc1.", "mlp.2.": "fc2.",
             "mlp_ln.": "final_layer_norm."}
_HF_PROJ = {"query": "q_proj", "key": "k_proj", "value": "v_proj", "out": "out_proj"}
_HF_GLOBAL = {
    "encoder.positional_embedding": "encoder.embed_positions.weight",
    "encoder.ln_post.weight": "encoder.layer_norm.weight", "encoder.ln_post.bias": "encoder.layer_norm.bias",
    "decoder.positional_embedding": "decoder.embed_positions.weight",
    "decoder.token_embedding.weight": "decoder.embed_tokens.weight",
    "decoder.ln.weight": "decoder.layer_norm.weight", "decoder.ln.bias": "decoder.layer_norm.bias",
}


def hf_name(name: str) -> str:
    """openai/whisper tensor name -> transformers' WhisperModel name (without the 'model.' prefix)."""
    if name in _HF_GLOBAL:
        return _HF_GLOBAL[name]
    if name.startswith("encoder.conv"):
        return name
    side, _, i, inner = name.split(".", 3)
    for ours, theirs in _HF_BLOCK.items():
        if inner.startswith(ours):
            rest = inner[len(ours):]
            proj, _, leaf = rest.partition(".")
            if leaf:  # attn.query.weight -> self_attn.q_proj.weight
                rest = f"{_HF_PROJ[proj]}.{leaf}"
            return f"{side}.layers.{i}.{theirs}{rest}"
    raise KeyError(name)


_SAFETENSORS_DTYPES = {"F16": np.dtype("<f2"), "F32": np.dtype("<f4"), "F64": np.dtype("<f8"),
                       "BF16": np.dtype("<u2")}


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """{name: array} views of one .safetensors file (u64 header size, JSON header, raw data)."""
    size = path.stat().st_size
    buf = np.memmap(path, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)
    if size < 8:
        raise ModelFormatError(path, "truncated safetensors file (no header)")
    (n,) = struct.unpack("<Q", buf[:8].tobytes())
    if n > size - 8:
        raise ModelFormatError(path, f"safetensors header of {n} bytes, file has {size - 8} after the size", 0)
    try:
        header = json.loads(buf[8:8 + n].tobytes())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ModelFormatError(path, "safetensors header is not JSON", 8) from None
    data_start, out = 8 + n, {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise ModelFormatError(path, f"tensor {name!r} has dtype {info.get('dtype')!r}; only F16, BF16, "
                                         "F32, F64 are supported")
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        if not 0 <= begin <= end <= size - data_start or end - begin != np.prod(shape, dtype=np.int64) * dtype.itemsize:
            raise ModelFormatError(path, f"tensor {name!r}: data offsets {begin}..{end} do not fit {shape} "
                                         f"in a file of {size} bytes", data_start + begin)
        a = buf[data_start + begin:data_start + end].view(dtype).reshape(shape)
        if info["dtype"] == "BF16":
            a = (a.astype(np.uint32) << 16).view(np.float32)
        out[name] = a
    return out


def _torch_load(path: Path) -> object:
    import pickle
    import zipfile

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # the legacy (non-zip) format cannot be memory-mapped
        pass
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError) as e:
        raise ModelFormatError(path, f"not a readable PyTorch checkpoint: {e}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file; all mean the same here
        raise ModelFormatError(path, f"not a readable PyTorch checkpoint: {type(e).__name__}: {e}") from None


def _torch_to_numpy(t) -> np.ndarray:
    import torch

    if t.dtype not in (torch.float16, torch.float32):
        t = t.float()
    return t.numpy()


class _HFSource(_Source):
    kind = "Hugging Face transformers"

    def __init__(self, folder: Path):
        self.path = folder
        try:
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ModelFormatError(folder / "config.json", f"cannot read the model config: {e}") from None
        if config.get("model_type") != "whisper":
            raise ModelFormatError(folder / "config.json", f"model_type is {config.get('model_type')!r}, "
                                                           "not 'whisper'")
        self.tensors = self._load_weights(folder)
        prefixes = {"model.", ""}
        self.prefix = next((p for p in prefixes if f"{p}encoder.conv1.weight" in self.tensors), None)
        if self.prefix is None:
            raise ModelFormatError(folder, "no encoder.conv1.weight in the weights: not a Whisper checkpoint")
        try:
            self.hparams = _hparams(
                n_vocab=config["vocab_size"], n_mels=config["num_mel_bins"],
                n_audio_ctx=config["max_source_positions"], n_audio_state=config["d_model"],
                n_audio_head=config["encoder_attention_heads"], n_audio_layer=config["encoder_layers"],
                n_text_ctx=config["max_target_positions"], n_text_state=config["d_model"],
                n_text_head=config["decoder_attention_heads"], n_text_layer=config["decoder_layers"])
        except KeyError as e:
            raise ModelFormatError(folder / "config.json", f"config has no {e.args[0]!r}") from None
        known = {self.prefix + hf_name(n) for n in expected_tensor_shapes(self.hparams)}
        tied = {"proj_out.weight"}  # the output projection is the token embedding in Whisper
        unknown = sorted(set(self.tensors) - known - tied)
        if unknown:
            raise ModelFormatError(folder, f"unexpected tensor {unknown[0]!r} ({len(unknown)} in all): "
                                           "not a plain Whisper checkpoint")
        self.vocab = next((read_vocab(folder / n) for n in ("tokenizer.json", "vocab.json")
                           if (folder / n).is_file()), None)

    @staticmethod
    def _load_weights(folder: Path) -> dict[str, np.ndarray]:
        if (folder / "model.safetensors").is_file():
            return _read_safetensors(folder / "model.safetensors")
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            out: dict[str, np.ndarray] = {}
            for shard in shards:
                out.update(_read_safetensors(folder / shard))
            return out
        if (folder / "pytorch_model.bin").is_file():
            state = _torch_load(folder / "pytorch_model.bin")
            if not isinstance(state, dict):
                raise ModelFormatError(folder / "pytorch_model.bin", "is not a state dict")
            return {k: _torch_to_numpy(v) for k, v in state.items()}
        raise ModelFormatError(folder, "config.json but no model.safetensors, model.safetensors.index.json "
                                       "or pytorch_model.bin")

    def get(self, name: str) -> np.ndarray:
        key = self.prefix + hf_name(name)
        if key not in self.tensors:
            raise ModelFormatError(self.path, f"tensor {key!r} is missing")
        return _as_float(self.tensors[key])


class _OpenAISource(_Source):
    kind = "OpenAI whisper"

    def __init__(self, path: Path):
        self.path = path
        ckpt = _torch_load(path)
        if not (isinstance(ckpt, dict) and "dims" in ckpt and "model_state_dict" in ckpt):
            raise ModelFormatError(path, "not an OpenAI Whisper checkpoint (expected a dict with 'dims' and "
                                         "'model_state_dict')")
        d = ckpt["dims"]
        try:
            self.hparams = _hparams(**{k: int(d[k]) for k in (
                "n_vocab", "n_mels", "n_audio_ctx", "n_audio_state", "n_audio_head", "n_audio_layer",
                "n_text_ctx", "n_text_state", "n_text_head", "n_text_layer")})
        except KeyError as e:
            raise ModelFormatError(path, f"checkpoint dims have no {e.args[0]!r}") from None
        self.state = ckpt["model_state_dict"]
        unknown = sorted(set(self.state) - set(expected_tensor_shapes(self.hparams)))
        if unknown:
            raise ModelFormatError(path, f"unexpected tensor {unknown[0]!r} ({len(unknown)} in all): "
                                         "whisper.cpp would not load it")
        self.vocab = None  # tiktoken files ship with the openai-whisper package, not the checkpoint

    def get(self, name: str) -> np.ndarray:
        if name not in self.state:
            raise ModelFormatError(self.path, f"tensor {name!r} is missing from model_state_dict")
        return _torch_to_numpy(self.state[name])


def open_source(src: PathLike | Sequence[PathLike]) -> _Source:
    """Detect SRC's format. A list of folders is one CTranslate2 model split across packages."""
    if isinstance(src, (list, tuple)):
        folders = [Path(s) for s in src]
        parts = []
        for k, folder in enumerate(folders, 1):
            part = folder / f"model.bin.part{k}"
            if not part.is_file():
                raise ModelFormatError(folder, f"no model.bin.part{k} in this folder (part {k} of "
                                               f"{len(folders)} folders)")
            parts.append(part)
        return _CT2Source(folders, parts)
    path = Path(src)
    if not path.exists():
        raise ModelFormatError(path, "no such file or folder")
    if path.is_file():
        if path.name == "model.bin" or path.name.startswith("model.bin.part"):
            path = path.parent
        elif path.name == "config.json":
            return _HFSource(path.parent)
        else:
            with open(path, "rb") as f:
                if f.read(4) == struct.pack("<I", MAGIC):
                    raise ModelFormatError(path, "is already a whisper.cpp GGML model (use `qwhisper quantize` "
                                                 "to change its type)")
            return _OpenAISource(path)
    parts = _ct2_parts(path)
    if parts:
        return _CT2Source([path] + [p.parent for p in parts if p.parent != path], parts)
    if (path / "config.json").is_file():
        return _HFSource(path)
    listing = ", ".join(sorted(p.name for p in path.iterdir())[:8]) or "nothing"
    raise ModelFormatError(path, "not a Whisper model folder: expected CTranslate2 (model.bin or "
                                 "model.bin.part1, ...) or Hugging Face (config.json + model.safetensors); "
                                 f"found {listing}")
