"""Torch model (CPU, float32) vs numpy golden (model_ref), layer by layer, on real speech.

Writes docs/reports/golden-vs-torch.md. For each model file (tiny.en f16 and its q4_0, q4_1,
q5_0, q5_1, q8_0 quantizations, whisper.cpp's own tiny.en q5_1 file, and base likewise when its
weights are installed) and each utterance (jfk.wav and a LibriVox utterance):

1. the golden transcribes greedily (sot sequence with no timestamps), and so does torch;
2. every layer of torch is fed the golden's input of that layer and compared with the golden's
   output (conv stem, each encoder block, ln_post; token + positional embedding, each decoder
   block over the whole teacher-forced sequence, the logits);
3. end to end: torch's own encoder output and its logits from its own audio features.

Errors: max abs = max |torch - golden|; rel = max abs / max |golden| (relative to the tensor's
scale; element-wise relative error means nothing near 0). Also the greedy transcripts and
whether torch picks the golden's tokens.

Usage: python scripts/report_golden_vs_torch.py [--models tiny.en base] [--out PATH]
Files come from qwhisper.models.resolve_model (converted from the installed CTranslate2 weights
by qwhisper.convert, quantized by qwhisper.quantize, cached), never downloaded.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from qwhisper import model_ref as R  # noqa: E402
from qwhisper.audio import load_audio, log_mel_spectrogram, pad_or_trim  # noqa: E402
from qwhisper.ggml_file import read_ggml  # noqa: E402
from qwhisper.loader import load_model  # noqa: E402
from qwhisper.tokenizer import Tokenizer  # noqa: E402

SHARED = Path(os.environ.get("QWHISPER_SHARED", "/work/shared"))
WHISPER_CPP_Q5_1 = SHARED / "models" / "ggml-tiny.en-q5_1.bin"
UTTERANCES = {
    "jfk.wav": SHARED / "data" / "speech" / "jfk.wav",
    "librivox-0870": Path("/usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0870.wav"),
}
QTYPES = ("f16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0")
MAX_TOKENS = 96


def err(actual, expected) -> tuple[float, float]:
    a = actual.detach().float().numpy() if torch.is_tensor(actual) else np.asarray(actual)
    diff = float(np.abs(a.astype(np.float64) - expected).max())
    return diff, diff / float(np.abs(expected).max())


def greedy(step, sot: list[int], eot: int) -> list[int]:
    out: list[int] = []
    logits = step(sot)
    while len(out) < MAX_TOKENS:
        token = int(np.argmax(logits))
        if token == eot:
            break
        out.append(token)
        logits = step([token])
    return out


def compare(path: Path, audio: np.ndarray) -> dict:
    """Per-layer and end-to-end errors of one model file on one utterance."""
    f = read_ggml(path)
    w, model = R.Weights(f), load_model(f)
    tok = Tokenizer.from_ggml(f, language="en" if f.hparams.is_multilingual else None, task="transcribe")
    sot = list(tok.sot_sequence_including_notimestamps)
    mel = log_mel_spectrogram(pad_or_trim(audio), f.mel_filters)
    rows: list[tuple[str, float, float]] = []

    t0 = time.perf_counter()
    h = [R.encoder_stem(w, mel)]
    for i in range(f.hparams.n_audio_layer):
        h.append(R.encoder_block(w, i, h[-1]))
    xa = R.layer_norm(h[-1], w["encoder.ln_post.weight"], w["encoder.ln_post.bias"])
    cache_ref = R.DecoderCacheRef.new(w, xa)
    tokens_ref = greedy(lambda new: R.decode(w, new, cache_ref)[-1], sot, tok.eot)
    t_golden = time.perf_counter() - t0

    enc = model.encoder
    with torch.no_grad():
        rows.append(("encoder stem (conv1, conv2, +pos)", *err(enc.stem(torch.from_numpy(mel)[None])[0], h[0])))
        for i, block in enumerate(enc.blocks):
            rows.append((f"encoder.blocks.{i}", *err(block(torch.from_numpy(h[i])[None])[0], h[i + 1])))
        rows.append(("encoder.ln_post", *err(enc.ln_post(torch.from_numpy(h[-1])[None])[0], xa)))

    # decoder over the golden's teacher-forced sequence
    seq = sot + tokens_ref
    t = len(seq)
    cache_ref = R.DecoderCacheRef.new(w, xa)
    x = [R.decoder_embed(w, np.array(seq), 0)]
    for i in range(f.hparams.n_text_layer):
        x.append(R.decoder_block(w, i, x[-1], cache_ref))
    xn = R.layer_norm(x[-1], w["decoder.ln.weight"], w["decoder.ln.bias"])
    logits_ref = xn @ w["decoder.token_embedding.weight"].T
    dec = model.decoder
    cache = model.new_kv_cache(torch.from_numpy(xa)[None])
    positions = torch.arange(t)
    mask = torch.arange(dec.n_ctx)[None, :] <= positions[:, None]
    with torch.no_grad():
        emb = dec.token_embedding.rows(torch.tensor([seq]))[0] + dec.positional_embedding[:t]
        rows.append(("decoder embeddings (token + pos)", *err(emb, x[0])))
        for i, block in enumerate(dec.blocks):
            out = block(torch.from_numpy(x[i])[None], cross_kv=(cache.cross_k[i], cache.cross_v[i]), mask=mask,
                        positions=positions, cache=(cache.self_k[i], cache.self_v[i]))
            rows.append((f"decoder.blocks.{i}", *err(out[0], x[i + 1])))
        logits_head = dec.ln(torch.from_numpy(x[-1])[None])[0] @ dec.token_embedding.dequantized().T
        rows.append(("decoder.ln + logits head", *err(logits_head, logits_ref)))

    # end to end: torch's own encoder and decoder
    t0 = time.perf_counter()
    xa_t = model.embed_audio(torch.from_numpy(mel)[None])
    cache_t = model.new_kv_cache(xa_t)
    tokens_t = greedy(lambda new: model.logits(torch.tensor([new]), cache_t)[0, -1].numpy(), sot, tok.eot)
    t_torch = time.perf_counter() - t0
    logits_golden_xa = model.logits(torch.tensor([seq]), model.new_kv_cache(torch.from_numpy(xa)[None]))[0]
    logits_own_xa = model.logits(torch.tensor([seq]), model.new_kv_cache(xa_t))[0]
    return {
        "rows": rows,
        "xa": err(xa_t[0], xa),
        "logits_decoder": err(logits_golden_xa, logits_ref),
        "logits_e2e": err(logits_own_xa, logits_ref),
        "argmax_agree": float((logits_own_xa.argmax(-1).numpy() == logits_ref.argmax(-1)).mean()),
        "n_tokens": t,
        "text_ref": tok.decode(tokens_ref).strip(),
        "same_tokens": tokens_t == tokens_ref,
        "text_torch": tok.decode(tokens_t).strip(),
        "t_golden": t_golden,
        "t_torch": t_torch,
    }


def model_files(base: str) -> list[tuple[str, Path]]:
    from qwhisper.models import resolve_model

    files = []
    for q in QTYPES:
        name = base if q == "f16" else f"{base}-{q}"
        try:
            files.append((f"{base} {q} (qwhisper convert/quantize)", resolve_model(name, download=False)))
        except Exception as e:  # weights of this model not installed: say so in the report
            print(f"skipping {name}: {e}", file=sys.stderr)
    if base == "tiny.en" and WHISPER_CPP_Q5_1.exists():
        ours = dict(files).get("tiny.en q5_1 (qwhisper convert/quantize)")
        same = ours is not None and ours.read_bytes() == WHISPER_CPP_Q5_1.read_bytes()
        files.append(("tiny.en q5_1 (whisper.cpp's quantizer" + (", byte-identical to ours)" if same else ")"),
                      WHISPER_CPP_Q5_1))
    return files


def git_commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["tiny.en", "base"])
    ap.add_argument("--out", default=str(REPO / "docs" / "reports" / "golden-vs-torch.md"))
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    audios = {name: load_audio(p) for name, p in UTTERANCES.items() if p.exists()}

    lines = [
        "# Torch (CPU, float32) vs numpy golden, layer by layer",
        "",
        f"Generated by `scripts/report_golden_vs_torch.py` on {datetime.date.today()} at commit {git_commit()}: "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"numpy {np.__version__}, torch {torch.__version__}.",
        "",
        "Each torch layer is fed the golden's input of that layer (so errors do not compound) and compared "
        "with the golden's output. **max abs** = max |torch - golden|; **rel** = max abs / max |golden| over the "
        "tensor. The decoder runs over the golden's greedy transcript, teacher-forced (sot sequence included). "
        "End to end: torch's own encoder output (*xa*) and logits from its own *xa*. "
        "tests/test_model.py holds per-layer rel < 2e-5, the whole encoder (xa) < 2e-4 and logits < 1e-4.",
        "",
    ]
    summary = ["## Summary", "",
               "| model file | audio | tokens | xa rel | logits rel (decoder) | logits rel (end to end) | "
               "argmax agree | torch = golden tokens | golden s | torch s |",
               "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    details = ["## Per layer", ""]
    transcripts = ["## Transcripts (golden greedy)", ""]
    worst_layer = 0.0
    for base in args.models:
        for label, path in model_files(base):
            for aname, audio in audios.items():
                print(f"{label} / {aname} ...", file=sys.stderr, flush=True)
                r = compare(path, audio)
                worst_layer = max([worst_layer] + [rel for _, _, rel in r["rows"]])
                summary.append(
                    f"| {label} | {aname} | {r['n_tokens']} | {r['xa'][1]:.2e} | {r['logits_decoder'][1]:.2e} | "
                    f"{r['logits_e2e'][1]:.2e} | {r['argmax_agree']:.3f} | {'yes' if r['same_tokens'] else 'NO'} | "
                    f"{r['t_golden']:.1f} | {r['t_torch']:.1f} |")
                details += [f"### {label}, {aname}", "", f"`{path.name}`", "", "| layer | max abs | rel |",
                            "| --- | --- | --- |"]
                details += [f"| {name} | {a:.2e} | {rel:.2e} |" for name, a, rel in r["rows"]]
                details.append("")
                transcripts.append(f"- {label}, {aname}: {r['text_ref']!r}"
                                   + ("" if r["same_tokens"] else f" (torch: {r['text_torch']!r})"))
    summary += ["", f"Worst per-layer rel over all files and utterances: {worst_layer:.2e}. "
                "*golden s* / *torch s*: wall seconds for encoder + greedy decode of the window "
                "(golden includes its one-time dequantization of the weights it touches; torch its weight "
                "cache), on a shared machine: indicative only.", ""]
    text = "\n".join(lines + summary + transcripts + [""] + details) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
