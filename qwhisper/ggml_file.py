"""whisper.cpp's GGML model file (`ggml-*.bin`): reader and writer.

Layout (little endian, no alignment padding anywhere), as written by whisper.cpp's
`models/convert-pt-to-ggml.py` and `whisper-quantize`:

    u32   magic 0x67676d6c ("ggml")
    i32 x 11  hparams: n_vocab n_audio_ctx n_audio_state n_audio_head n_audio_layer
              n_text_ctx n_text_state n_text_head n_text_layer n_mels ftype
              (ftype = file type + 1000 * quantization version; version 0 for f32/f16 files)
    i32 n_mel, i32 n_fft, f32[n_mel * n_fft]        mel filterbank
    i32 n_tokens, then n_tokens x (u32 len, bytes)   vocabulary (byte strings, no specials)
    tensors until end of file, each:
      i32 n_dims, i32 name_len, i32 ggml type, i32 ne[n_dims] (ne[0] = contiguous axis),
      name bytes, raw data (ne[0]/block * type_size * ne[1] * ...)

Reading never copies tensor data: each tensor's bytes are a view of one np.memmap.
Every count read from the file is checked against the bytes that remain before it is used,
so a hostile file cannot make us allocate more than its own size, loop for long, or crash.
"""

from __future__ import annotations

import dataclasses
import math
import os
import struct
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .errors import ModelFormatError
from .quants import BLOCK_SIZES, GGMLType, tensor_nbytes, type_name

MAGIC = 0x67676D6C
QNT_VERSION_FACTOR = 1000  # ggml.h GGML_QNT_VERSION_FACTOR
QNT_VERSION = 2  # ggml.h GGML_QNT_VERSION: the block layouts of quants/ref.py

# Other container magics, for a helpful error instead of "bad magic".
_OTHER_MAGICS = {
    0x46554747: "a GGUF file (whisper.cpp models are legacy GGML .bin files)",
    0x67676D66: "an old llama.cpp GGMF file",
    0x67676A74: "an old llama.cpp GGJT file",
}

HPARAM_NAMES = (
    "n_vocab", "n_audio_ctx", "n_audio_state", "n_audio_head", "n_audio_layer",
    "n_text_ctx", "n_text_state", "n_text_head", "n_text_layer", "n_mels", "ftype",
)

# whisper.cpp's file types (enum ggml_ftype) and the weight type each implies.
FTYPE_NAMES = {0: "f32", 1: "f16", 2: "q4_0", 3: "q4_1", 7: "q8_0", 8: "q5_0", 9: "q5_1"}
FTYPE_OF_TYPE = {GGMLType.F32: 0, GGMLType.F16: 1, GGMLType.Q4_0: 2, GGMLType.Q4_1: 3,
                 GGMLType.Q8_0: 7, GGMLType.Q5_0: 8, GGMLType.Q5_1: 9}

# Sanity bounds far above any real Whisper (large-v3: vocab 51866, ctx 1500, state 1280,
# 32 layers, 128 mels) that keep a corrupt header from sizing anything absurd.
_MAX_DIM = 1 << 20
_MAX_LAYERS = 1024
_MAX_N_DIMS = 4
_MAX_NAME = 1024


@dataclasses.dataclass(frozen=True)
class HParams:
    n_vocab: int
    n_audio_ctx: int
    n_audio_state: int
    n_audio_head: int
    n_audio_layer: int
    n_text_ctx: int
    n_text_state: int
    n_text_head: int
    n_text_layer: int
    n_mels: int
    ftype: int  # raw header value: file type + 1000 * quantization version

    @property
    def file_type(self) -> int:
        return self.ftype % QNT_VERSION_FACTOR

    @property
    def qnt_version(self) -> int:
        return self.ftype // QNT_VERSION_FACTOR

    @property
    def file_type_name(self) -> str:
        return FTYPE_NAMES.get(self.file_type, f"ftype {self.file_type}")

    @property
    def is_multilingual(self) -> bool:
        return self.n_vocab >= 51865  # whisper.cpp: vocab.is_multilingual()

    def pack(self) -> bytes:
        return struct.pack("<11i", *dataclasses.astuple(self))


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    name: str
    ggml_type: GGMLType
    shape: tuple[int, ...]  # numpy order: shape[-1] == ne[0], the contiguous axis
    offset: int  # byte offset of the data in the file (0 for tensors not read from a file)
    data: np.ndarray  # raw bytes, uint8, 1-D (a memmap view when read from a file)

    @property
    def nbytes(self) -> int:
        return self.data.size

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    def dequantize(self) -> np.ndarray:
        """float32 array of `shape`, by the numpy golden."""
        from .quants import dequantize

        return dequantize(self.data, self.ggml_type, self.shape)


@dataclasses.dataclass
class GGMLFile:
    path: str
    hparams: HParams
    mel_filters: np.ndarray  # (n_mel, n_fft) float32
    vocab: list[bytes]  # the regular tokens; whisper.cpp adds the special ones itself
    tensors: dict[str, TensorInfo]  # in file order

    def __getitem__(self, name: str) -> TensorInfo:
        return self.tensors[name]

    def types(self) -> dict[GGMLType, int]:
        counts: dict[GGMLType, int] = {}
        for t in self.tensors.values():
            counts[t.ggml_type] = counts.get(t.ggml_type, 0) + 1
        return counts


def expected_tensor_shapes(hp: HParams) -> dict[str, tuple[int, ...]]:
    """Every tensor whisper.cpp's loader requires, name -> numpy shape.

    The order is openai/whisper's state_dict order, which convert-pt-to-ggml.py keeps: torch lists
    a module's own parameters and buffers before its children's, in definition order.
    """
    na, nt, nm = hp.n_audio_state, hp.n_text_state, hp.n_mels
    shapes: dict[str, tuple[int, ...]] = {
        "encoder.positional_embedding": (hp.n_audio_ctx, na),
        "encoder.conv1.weight": (na, nm, 3),
        "encoder.conv1.bias": (na, 1),
        "encoder.conv2.weight": (na, na, 3),
        "encoder.conv2.bias": (na, 1),
    }

    def block(prefix: str, n: int, cross: bool) -> None:
        # openai's ResidualAttentionBlock defines attn, attn_ln, [cross_attn, cross_attn_ln], mlp, mlp_ln
        for attn in ("attn", "cross_attn") if cross else ("attn",):
            shapes.update({
                f"{prefix}.{attn}.query.weight": (n, n), f"{prefix}.{attn}.query.bias": (n,),
                f"{prefix}.{attn}.key.weight": (n, n),  # Whisper's key projection has no bias
                f"{prefix}.{attn}.value.weight": (n, n), f"{prefix}.{attn}.value.bias": (n,),
                f"{prefix}.{attn}.out.weight": (n, n), f"{prefix}.{attn}.out.bias": (n,),
                f"{prefix}.{attn}_ln.weight": (n,), f"{prefix}.{attn}_ln.bias": (n,),
            })
        shapes.update({
            f"{prefix}.mlp.0.weight": (4 * n, n), f"{prefix}.mlp.0.bias": (4 * n,),
            f"{prefix}.mlp.2.weight": (n, 4 * n), f"{prefix}.mlp.2.bias": (n,),
            f"{prefix}.mlp_ln.weight": (n,), f"{prefix}.mlp_ln.bias": (n,),
        })

    for i in range(hp.n_audio_layer):
        block(f"encoder.blocks.{i}", na, cross=False)
    shapes["encoder.ln_post.weight"] = (na,)
    shapes["encoder.ln_post.bias"] = (na,)
    shapes["decoder.positional_embedding"] = (hp.n_text_ctx, nt)
    shapes["decoder.token_embedding.weight"] = (hp.n_vocab, nt)
    for i in range(hp.n_text_layer):
        block(f"decoder.blocks.{i}", nt, cross=True)
    shapes["decoder.ln.weight"] = (nt,)
    shapes["decoder.ln.bias"] = (nt,)
    return shapes


class _Cursor:
    """Bounds-checked little-endian reads over the file's bytes."""

    def __init__(self, path: str, buf: np.ndarray):
        self.path, self.buf, self.pos = path, buf, 0

    def remaining(self) -> int:
        return self.buf.size - self.pos

    def take(self, n: int, what: str, tensor: str | None = None) -> np.ndarray:
        if n < 0 or n > self.remaining():
            raise ModelFormatError(
                self.path, f"truncated file: {what} needs {n} bytes, {self.remaining()} left",
                self.pos, tensor)
        view = self.buf[self.pos:self.pos + n]
        self.pos += n
        return view

    def ints(self, count: int, what: str, tensor: str | None = None, fmt: str = "i") -> tuple[int, ...]:
        return struct.unpack(f"<{count}{fmt}", self.take(4 * count, what, tensor).tobytes())


def read_ggml(path: str | os.PathLike, check_tensors: bool = True) -> GGMLFile:
    """Parse a whisper.cpp GGML file; tensor data stay on disk (memmap views).

    With check_tensors, the tensor set must be exactly the one whisper.cpp loads for these
    hparams, with the right shapes; every problem raises ModelFormatError naming the file,
    the byte offset and the tensor.
    """
    path = str(path)
    try:
        size = os.path.getsize(path)
        buf = np.memmap(path, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)
    except FileNotFoundError:
        raise ModelFormatError(path, "no such file") from None
    except IsADirectoryError:
        raise ModelFormatError(path, "is a directory, not a model file") from None
    except OSError as e:
        raise ModelFormatError(path, f"cannot read: {e.strerror or e}") from None
    cur = _Cursor(path, buf)

    (magic,) = cur.ints(1, "magic", fmt="I")
    if magic != MAGIC:
        other = _OTHER_MAGICS.get(magic)
        hint = f"this is {other}" if other else "not a whisper.cpp GGML model file"
        raise ModelFormatError(path, f"bad magic 0x{magic:08x} (expected 0x{MAGIC:08x}): {hint}", 0)

    hp_offset = cur.pos
    hp = HParams(*cur.ints(len(HPARAM_NAMES), "hparams"))
    _check_hparams(path, hp, hp_offset)

    mel_offset = cur.pos
    n_mel, n_fft = cur.ints(2, "mel filter header")
    if not (0 < n_mel <= 4096 and 0 < n_fft <= 65536):
        raise ModelFormatError(path, f"absurd mel filter shape ({n_mel}, {n_fft})", mel_offset)
    if n_mel != hp.n_mels:
        raise ModelFormatError(path, f"mel filters have {n_mel} bins but hparams say n_mels={hp.n_mels}",
                               mel_offset)
    mel = cur.take(4 * n_mel * n_fft, "mel filters").view("<f4").reshape(n_mel, n_fft)

    vocab_offset = cur.pos
    (n_tokens,) = cur.ints(1, "vocabulary size")
    if not 0 <= n_tokens <= min(hp.n_vocab, cur.remaining() // 4):
        raise ModelFormatError(path, f"absurd vocabulary size {n_tokens} (n_vocab={hp.n_vocab})", vocab_offset)
    vocab = []
    for i in range(n_tokens):
        (n,) = cur.ints(1, f"length of token {i}", fmt="I")
        vocab.append(cur.take(n, f"token {i}").tobytes())

    tensors: dict[str, TensorInfo] = {}
    while cur.remaining():
        t = _read_tensor(cur)
        if t.name in tensors:
            raise ModelFormatError(path, "duplicate tensor name", t.offset, t.name)
        tensors[t.name] = t

    f = GGMLFile(path, hp, mel, vocab, tensors)
    if check_tensors:
        _check_tensor_set(f)
    return f


def _check_hparams(path: str, hp: HParams, offset: int) -> None:
    for name in HPARAM_NAMES[:-1]:
        v = getattr(hp, name)
        limit = _MAX_LAYERS if name.endswith("layer") else _MAX_DIM
        if not 0 < v <= limit:
            raise ModelFormatError(path, f"absurd hparam {name}={v}", offset + 4 * HPARAM_NAMES.index(name))
    for kind in ("audio", "text"):
        state, head = getattr(hp, f"n_{kind}_state"), getattr(hp, f"n_{kind}_head")
        if state % head:
            raise ModelFormatError(path, f"n_{kind}_state={state} is not divisible by n_{kind}_head={head}", offset)
    if hp.file_type not in FTYPE_NAMES or hp.ftype < 0:
        raise ModelFormatError(path, f"unknown or unsupported ftype {hp.ftype}", offset + 40)
    if hp.file_type >= 2 and hp.qnt_version != QNT_VERSION:
        raise ModelFormatError(
            path, f"quantization version {hp.qnt_version} (ftype {hp.ftype}); qwhisper reads version "
                  f"{QNT_VERSION} (files from whisper.cpp since 2023-05); re-quantize the f16 model", offset + 40)


def _read_tensor(cur: _Cursor) -> TensorInfo:
    path, start = cur.path, cur.pos
    n_dims, name_len, type_id = cur.ints(3, "tensor header")
    if not 1 <= n_dims <= _MAX_N_DIMS:
        raise ModelFormatError(path, f"tensor header has n_dims={n_dims}", start)
    if not 1 <= name_len <= _MAX_NAME:
        raise ModelFormatError(path, f"tensor name length {name_len}", start + 4)
    ne = cur.ints(n_dims, "tensor dims")
    raw_name = cur.take(name_len, "tensor name").tobytes()
    try:
        name = raw_name.decode("utf-8")
    except UnicodeDecodeError:
        raise ModelFormatError(path, f"tensor name is not UTF-8: {raw_name[:40]!r}", start) from None
    try:
        ggml_type = GGMLType(type_id)
    except ValueError:
        raise ModelFormatError(path, f"tensor type {type_name(type_id)} (id {type_id}) is not supported yet",
                               start + 8, name) from None
    if any(not 0 < d <= _MAX_DIM * 64 for d in ne):
        raise ModelFormatError(path, f"absurd tensor dims {list(ne)}", start, name)
    shape = tuple(reversed(ne))
    block = BLOCK_SIZES[ggml_type][0]
    if ne[0] % block:
        raise ModelFormatError(path, f"{ggml_type.name} row of {ne[0]} is not a multiple of its block of {block}",
                               start, name)
    nbytes = tensor_nbytes(ggml_type, shape)
    offset = cur.pos
    data = cur.take(nbytes, f"data of {ggml_type.name} tensor {list(shape)}", name)
    return TensorInfo(name, ggml_type, shape, offset, data)


def _check_tensor_set(f: GGMLFile) -> None:
    expected = expected_tensor_shapes(f.hparams)
    for name, t in f.tensors.items():
        if name not in expected:
            raise ModelFormatError(f.path, "unknown tensor for this architecture", t.offset, name)
        if t.shape != expected[name]:
            raise ModelFormatError(f.path, f"shape {list(t.shape)} does not match hparams (expected "
                                           f"{list(expected[name])})", t.offset, name)
    missing = [n for n in expected if n not in f.tensors]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ModelFormatError(f.path, f"missing tensor {missing[0]!r}{more}")


def write_ggml(
    path: str | os.PathLike,
    hparams: HParams,
    mel_filters: np.ndarray,
    vocab: Iterable[bytes],
    tensors: Iterable[TensorInfo],
) -> None:
    """Write a GGML file atomically (temp file in the same folder, then rename).

    `tensors` may be a generator, so a converter or quantizer holds one tensor at a time.
    Writing back what read_ggml returned reproduces the file byte for byte.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(struct.pack("<I", MAGIC))
            out.write(hparams.pack())
            mel = np.ascontiguousarray(mel_filters, dtype="<f4")
            out.write(struct.pack("<2i", *mel.shape))
            out.write(mel.tobytes())
            vocab = list(vocab)
            out.write(struct.pack("<i", len(vocab)))
            for tok in vocab:
                out.write(struct.pack("<I", len(tok)))
                out.write(tok)
            for t in tensors:
                name = t.name.encode("utf-8")
                if t.data.dtype != np.uint8 or t.data.size != tensor_nbytes(t.ggml_type, t.shape):
                    raise ValueError(f"tensor {t.name}: {t.data.size} bytes of {t.data.dtype} do not fit "
                                     f"{t.ggml_type.name} {list(t.shape)}")
                out.write(struct.pack(f"<3i{len(t.shape)}i", len(t.shape), len(name), int(t.ggml_type),
                                      *reversed(t.shape)))
                out.write(name)
                out.write(np.ascontiguousarray(t.data).tobytes())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a model file is as readable as any other
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def tensor_from_array(name: str, ggml_type: GGMLType, array: np.ndarray) -> TensorInfo:
    """A TensorInfo for writing: float array -> raw bytes of ggml_type (golden quantizer)."""
    from .quants import quantize

    array = np.asarray(array, dtype=np.float32)
    return TensorInfo(name, ggml_type, tuple(array.shape), 0, quantize(array, ggml_type))
