"""End-to-end transcription: the same GGML files and audio on the GPU, the CPU torch backend and
the numpy golden; transcripts compared, time and memory measured.

Three steps, so that each side can run where it must (the GPU machine has no PyAV and no network):

    # 1. here: decode the evaluation set (17 English utterances, 154 s) into one .npz of int16
    #    samples (load_audio's s16 before / 32768, so the float32 samples are the same) + references
    python benchmarks/bench_transcribe.py pack --out .gpurun/evalset.npz

    # 2. anywhere: transcribe every utterance with every model, one JSON per run
    python benchmarks/bench_transcribe.py run --audio .gpurun/evalset.npz --device cuda \
        --models ggml-tiny.en-q5_1.bin ... --out gpu.json
    python benchmarks/bench_transcribe.py run --audio ... --backend numpy --out golden.json

    # 3. compare: per model, transcripts equal or each difference with its WER effect; speed
    python benchmarks/bench_transcribe.py compare gpu.json --golden golden.json [--cpu cpu.json] [--report PATH]

Transcription: qwhisper.transcribe with its defaults (greedy, temperature fallback, timestamps,
previous text as prompt), language "en" given (the files are English; language detection is
left out of the comparison). The first utterance is transcribed once before timing (Triton
compiles, cuBLAS handles). Times are wall clock with the GPU synchronised; RTFx = audio seconds /
transcription seconds. Memory (CUDA): bytes of the model's tensors on the GPU against the file
size, and the peak allocated during the timed transcriptions (torch.cuda.max_memory_allocated).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# QWHISPER_SRC: import qwhisper from another copy (a frozen snapshot both sides of a comparison share)
sys.path.insert(0, os.environ.get("QWHISPER_SRC", str(REPO)))

SAMPLE_RATE = 16000


# --- pack ----------------------------------------------------------------------------------------

def pack(out: str) -> None:
    """Decode the evaluation set (benchmarks/evalsets.py: LibriVox + English speech) to int16."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import evalsets

    from qwhisper.audio import load_audio

    utts = evalsets.librivox() + evalsets.speech(english_only=True)
    arrays, meta = {}, []
    for i, u in enumerate(utts):
        x = load_audio(u.path)
        s16 = np.round(x * 32768.0).astype(np.int16)
        assert np.array_equal(s16.astype(np.float32) / np.float32(32768.0), x), u.name  # exact round trip
        arrays[f"a{i}"] = s16
        meta.append({"name": u.name, "reference": u.reference, "seconds": len(x) / SAMPLE_RATE})
    np.savez(out, meta=json.dumps(meta), **arrays)
    print(f"{out}: {len(meta)} utterances, {sum(m['seconds'] for m in meta):.1f} s")


def load_pack(path: str) -> list[tuple[dict, np.ndarray]]:
    """[(meta, float32 samples)] from a pack()ed .npz."""
    z = np.load(path)
    meta = json.loads(str(z["meta"]))
    return [(m, z[f"a{i}"].astype(np.float32) / np.float32(32768.0)) for i, m in enumerate(meta)]


# --- run -----------------------------------------------------------------------------------------

def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def environment(device: str) -> dict:
    import torch

    env = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
           "python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
           "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "commit": os.environ.get("QWHISPER_COMMIT", "")}
    if device.startswith("cuda"):
        import triton

        env.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda, triton=triton.__version__)
    return env


def _tensor_bytes(model) -> int:
    """Bytes of every parameter and buffer of a torch model (the weights as stored on the device)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def transcribe_one(model, samples: np.ndarray, sync) -> tuple[dict, float]:
    t0 = time.perf_counter()
    segments, _info = model.transcribe(samples, language="en", verbose=False)
    segments = list(segments)
    sync()
    dt = time.perf_counter() - t0
    return {"text": "".join(s.text for s in segments).strip(),
            "tokens": [list(s.tokens) for s in segments],
            "segments": [[s.start, s.end] for s in segments],
            "temperatures": [s.temperature for s in segments]}, dt


def count_syncs(model, utt) -> dict:
    """Host-device synchronisations of one transcription (torch's sync debug mode), by source line."""
    import warnings

    import torch

    meta, samples = utt
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            out, _ = transcribe_one(model, samples, lambda: None)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    where: dict[str, int] = {}
    for w in caught:
        if "synchroniz" in str(w.message):
            key = f"{Path(w.filename).name}:{w.lineno}"
            where[key] = where.get(key, 0) + 1
    tokens = sum(len(t) for t in out["tokens"])
    return {"utterance": meta["name"], "tokens": tokens, "syncs": sum(where.values()), "where": where}


_worker_models: dict = {}


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _worker_job(job: tuple[str, str, str, str, int]) -> tuple[str, str, dict, float]:
    """One (model, utterance) transcription in a pool worker (models cached per worker)."""
    from qwhisper.transcribe import WhisperModel

    path, backend, device, audio, index = job
    model = _worker_models.get(path)
    if model is None:
        model = _worker_models[path] = WhisperModel(path, device=device, backend=backend)
    meta, samples = load_pack(audio)[index]
    out, dt = transcribe_one(model, samples, lambda: None)
    out.update(seconds=dt, audio_seconds=meta["seconds"], reference=meta["reference"])
    return Path(path).name, meta["name"], out, dt


def run_parallel(args: argparse.Namespace) -> None:
    """CPU only (the golden): (model, utterance) jobs over --jobs processes, longest audio first,
    until --deadline seconds have passed (then the unfinished ones are dropped)."""
    import multiprocessing as mp

    utts = load_pack(args.audio)[: args.limit or None]
    result = {"env": environment(args.device), "device": args.device, "backend": args.backend, "models": {},
              "jobs": args.jobs}
    if Path(args.out).exists() and args.resume:
        result = json.loads(Path(args.out).read_text())
    for path in args.models:
        label = Path(path).name
        result["models"].setdefault(label, {"file_bytes": os.path.getsize(path), "sha256": sha256(path),
                                            "utterances": {}})
    order = sorted(range(len(utts)), key=lambda i: -utts[i][0]["seconds"])
    jobs = [(p, args.backend, args.device, args.audio, i) for i in order for p in args.models
            if utts[i][0]["name"] not in result["models"][Path(p).name]["utterances"]]
    t0 = time.perf_counter()
    pool = mp.get_context("fork").Pool(args.jobs, _worker_init, (args.threads or 1,))
    try:
        for label, name, out, dt in pool.imap_unordered(_worker_job, jobs):
            result["models"][label]["utterances"][name] = out
            print(f"{label} {name}: {dt:.2f} s  {out['text'][:60]!r}", flush=True)
            Path(args.out).write_text(json.dumps(result, indent=1))
            if args.deadline and time.perf_counter() - t0 > args.deadline:
                print(f"deadline of {args.deadline} s reached; dropping the rest", flush=True)
                break
    finally:
        pool.terminate()
    Path(args.out).write_text(json.dumps(result, indent=1))


def run(args: argparse.Namespace) -> None:
    import torch

    if args.jobs > 1:
        return run_parallel(args)

    from qwhisper.transcribe import WhisperModel

    if args.threads:
        torch.set_num_threads(args.threads)
    utts = load_pack(args.audio)
    if args.limit:
        utts = utts[: args.limit]
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    result = {"env": environment(args.device), "device": args.device, "backend": args.backend,
              "compute_type": args.compute_type, "models": {}}
    if Path(args.out).exists() and args.resume:
        result = json.loads(Path(args.out).read_text())
    for path in args.models:
        label = Path(path).name
        if label in result["models"]:
            continue
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base_alloc = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        model = WhisperModel(path, device=args.device, backend=args.backend, compute_type=args.compute_type)
        sync()
        entry = {"file_bytes": os.path.getsize(path), "sha256": sha256(path),
                 "load_s": time.perf_counter() - t0, "utterances": {}}
        if cuda:
            entry["weights_vram_bytes"] = _tensor_bytes(model.model)
            entry["allocated_after_load"] = torch.cuda.memory_allocated() - base_alloc
        if not args.no_warmup:  # Triton compiles, cuBLAS handles, the CPU weight cache
            _, entry["warmup_s"] = transcribe_one(model, utts[0][1], sync)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        total_audio = total_time = 0.0
        for meta, samples in utts:
            best = None
            for _ in range(args.repeat):
                out, dt = transcribe_one(model, samples, sync)
                best = dt if best is None else min(best, dt)
            out["seconds"] = best
            out["audio_seconds"] = meta["seconds"]
            out["reference"] = meta["reference"]
            entry["utterances"][meta["name"]] = out
            total_audio += meta["seconds"]
            total_time += best
            print(f"{label} {meta['name']}: {best:.3f} s  {out['text'][:70]!r}", flush=True)
        entry["total_seconds"], entry["audio_seconds"] = total_time, total_audio
        if cuda:
            entry["peak_vram_bytes"] = torch.cuda.max_memory_allocated() - base_alloc
            if args.count_syncs:
                entry["syncs"] = count_syncs(model, utts[args.count_syncs - 1])
        print(f"== {label}: {total_audio:.1f} s of audio in {total_time:.2f} s (RTFx {total_audio / total_time:.1f})",
              flush=True)
        result["models"][label] = entry
        Path(args.out).write_text(json.dumps(result, indent=1))  # after each model: partial results survive
        del model
        if cuda:
            torch.cuda.empty_cache()


# --- compare -------------------------------------------------------------------------------------

def _wer_points(refs: list[str], hyps: list[str]) -> float:
    from qwhisper.normalizer import wer

    return 100.0 * wer(refs, hyps)


def compare(args: argparse.Namespace) -> str:
    """Markdown: per model, GPU transcripts vs the golden's (differences with WER), speed, memory."""
    golden = json.loads(Path(args.golden[0]).read_text())
    for extra in args.golden[1:]:  # more golden runs (other machines, partial runs): first one wins
        for label, m in json.loads(Path(extra).read_text())["models"].items():
            mine = golden["models"].setdefault(label, m)
            if mine is not m and mine["sha256"] == m["sha256"]:
                for n, u in m["utterances"].items():
                    mine["utterances"].setdefault(n, u)
    gpu = json.loads(Path(args.gpu).read_text())
    cpu = json.loads(Path(args.cpu).read_text()) if args.cpu else None
    lines = [(f"GPU: {gpu['env'].get('gpu', gpu['device'])}, torch {gpu['env']['torch']}, triton "
             f"{gpu['env'].get('triton', '-')}, {gpu['env']['date']}. Golden: {golden['backend']} backend on "
             f"{golden['env']['cpu']} ({golden['env']['cpu_count']} CPUs), {golden['env']['date']}.")]
    if cpu:
        lines.append(f"CPU timing: torch backend, {cpu['env']['torch_threads']} threads on {cpu['env']['cpu']} "
                     f"({cpu['env']['cpu_count']} CPUs), {cpu['env']['date']}.")
    lines += ["", "| model file | utterances | same text as golden | same tokens | golden WER % | GPU WER % | "
              "WER delta (pt) | GPU s | RTFx | weights VRAM / file MB | peak VRAM MB |" + (" CPU s | GPU speed-up |" if cpu else ""),
              "|" + " --- |" * (11 + (2 if cpu else 0))]
    diffs = []
    for label, g in gpu["models"].items():
        ref = golden["models"].get(label)
        if ref is None:
            continue
        if ref["sha256"] != g["sha256"]:
            lines.append(f"| {label} | file differs from the golden's (sha256) | | | | | | | | | |")
            continue
        names = [n for n in g["utterances"] if n in ref["utterances"]]
        same_text = sum(g["utterances"][n]["text"] == ref["utterances"][n]["text"] for n in names)
        same_tok = sum(g["utterances"][n]["tokens"] == ref["utterances"][n]["tokens"] for n in names)
        refs = [g["utterances"][n]["reference"] for n in names]
        w_gold = _wer_points(refs, [ref["utterances"][n]["text"] for n in names])
        w_gpu = _wer_points(refs, [g["utterances"][n]["text"] for n in names])
        gpu_s = sum(g["utterances"][n]["seconds"] for n in names)
        audio_s = sum(g["utterances"][n]["audio_seconds"] for n in names)
        row = (f"| {label} | {len(names)} | {same_text} | {same_tok} | {w_gold:.2f} | {w_gpu:.2f} | "
               f"{w_gpu - w_gold:+.2f} | {gpu_s:.2f} | {audio_s / gpu_s:.1f} | "
               f"{g.get('weights_vram_bytes', 0) / 1e6:.1f} / {g['file_bytes'] / 1e6:.1f} | "
               f"{g.get('peak_vram_bytes', 0) / 1e6:.0f} |")
        if cpu:
            c = cpu["models"].get(label)
            if c is not None:
                cn = [n for n in names if n in c["utterances"]]
                cs = sum(c["utterances"][n]["seconds"] for n in cn)
                gs = sum(g["utterances"][n]["seconds"] for n in cn)
                row += f" {cs:.2f} ({len(cn)} utt.) | {cs / gs:.1f}x |"
            else:
                row += " - | - |"
        lines.append(row)
        for n in names:
            a, b = ref["utterances"][n], g["utterances"][n]
            if a["text"] != b["text"]:
                r = [b["reference"]]
                diffs.append(f"- {label}, {n}: golden {a['text']!r} (WER {_wer_points(r, [a['text']]):.1f} %) / "
                             f"GPU {b['text']!r} (WER {_wer_points(r, [b['text']]):.1f} %)")
    lines += ["", "Differences:" if diffs else "No transcript differs.", ""] + diffs
    text = "\n".join(lines) + "\n"
    if args.report:
        Path(args.report).write_text(text)
    print(text)
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack")
    a.add_argument("--out", required=True)
    r = sub.add_parser("run")
    r.add_argument("--audio", required=True, help="the .npz written by `pack`")
    r.add_argument("--models", nargs="+", required=True, help="GGML files")
    r.add_argument("--device", default="cuda")
    r.add_argument("--backend", default="torch", choices=["torch", "numpy"])
    r.add_argument("--compute-type", default="auto", choices=["auto", "float16", "float32"],
                   help="torch backend activation dtype (auto: float16 on CUDA, float32 on CPU)")
    r.add_argument("--out", required=True)
    r.add_argument("--repeat", type=int, default=1, help="transcribe each utterance this often, keep the fastest")
    r.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    r.add_argument("--limit", type=int, default=0, help="only the first N utterances")
    r.add_argument("--resume", action="store_true", help="skip models already in --out")
    r.add_argument("--no-warmup", action="store_true", help="time the first transcription too (the golden)")
    r.add_argument("--count-syncs", type=int, default=0, help="CUDA: count host syncs transcribing utterance N (1-based)")
    r.add_argument("--jobs", type=int, default=1, help="CPU only: processes, one (model, utterance) each")
    r.add_argument("--deadline", type=float, default=0, help="with --jobs: stop after this many seconds")
    c = sub.add_parser("compare")
    c.add_argument("gpu", help="the device run's JSON")
    c.add_argument("--golden", action="append", required=True, help="golden run JSON (repeatable; merged)")
    c.add_argument("--cpu", default=None)
    c.add_argument("--report", default=None)
    args = p.parse_args(argv)
    if args.cmd == "pack":
        pack(args.out)
    elif args.cmd == "run":
        run(args)
    else:
        compare(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
