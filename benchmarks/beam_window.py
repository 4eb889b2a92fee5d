"""Why a beam transcript differs from greedy: the window of a long-form transcription that wrote a phrase.

    python benchmarks/beam_window.py [--model tiny.en] [--seconds 200] [--phrase "without spinning his contents"]
        [--beam-size 5] [--threads 1]

Transcribes the first --seconds of the devlong workload (benchmarks/evalsets.py) with beam search
and default options, recording every DecodingTask.run call (its options, prompt and audio
features). For the first window whose result contains --phrase it prints:

- the beam's finished candidates: sum logprob, length, sum / length (openai's ranking), text with
  timestamps;
- the returned sequence and the greedy decode of the same window (same features, same prompt),
  each scored teacher-forced through the same logit filters: sum logprob of its tokens and EOT,
  and per token;
- greedy and beam decodes of that window without the prompt (condition_on_previous_text off).

docs/reports/decoding-features.md ("Why tiny.en f16 loses words with beam 5 on devlong") quotes it.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
import torch.nn.functional as F
from evalsets import devlong


def main(argv: list[str] | None = None) -> int:
    from qwhisper import decoding
    from qwhisper.models import resolve_model
    from qwhisper.transcribe import WhisperModel

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny.en")
    p.add_argument("--seconds", type=float, default=200.0)
    p.add_argument("--phrase", default="without spinning his contents")
    p.add_argument("--beam-size", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    audio, _ = devlong()
    audio = audio[: int(args.seconds * 16000)]
    wm = WhisperModel(resolve_model(args.model), "cpu")
    tok = wm.tokenizer

    # record each window's decode (the candidates come from the beam decoder's finalize)
    calls, current = [], {}
    run, finalize = decoding.DecodingTask.run, decoding.BeamSearchDecoder.finalize

    def recording_run(self, mel):
        current.clear()
        results = run(self, mel)
        calls.append({"options": self.options, "features": mel, "result": results[0], **current})
        return results

    def recording_finalize(self, tokens, sum_logprobs):
        current["candidates"] = finalize(self, tokens, sum_logprobs)
        return current["candidates"]

    decoding.DecodingTask.run, decoding.BeamSearchDecoder.finalize = recording_run, recording_finalize
    try:
        segments, _ = wm.transcribe(audio, language="en", beam_size=args.beam_size, verbose=False)
        list(segments)
    finally:
        decoding.DecodingTask.run, decoding.BeamSearchDecoder.finalize = run, finalize
    call = next((c for c in calls if args.phrase in c["result"].text), None)
    if call is None:
        print(f"no window wrote {args.phrase!r}", file=sys.stderr)
        return 1

    def show(tokens):
        return "".join(f"<|{tok.timestamp_seconds(t):.2f}|>" if t >= tok.timestamp_begin else tok.decode([t])
                       for t in tokens)

    def teacher_forced(task, features, sampled):
        """Sum logprob of sampled + EOT under the task's prompt and logit filters."""
        init = list(task.initial_tokens)
        seq = torch.tensor([init + list(sampled) + [tok.eot]])
        logits = wm.model.logits(seq[:, :-1], wm.model.new_kv_cache(features))[0].float()
        total = 0.0
        for k, t in enumerate([*sampled, tok.eot]):
            pos = len(init) - 1 + k
            row = logits[pos].clone()[None]
            for f in task.logit_filters:
                f.apply(row, seq[:, : pos + 1])
            total += F.log_softmax(row, dim=-1)[0, t].item()
        return total

    opts, feats = call["options"], call["features"]
    task = decoding.DecodingTask(wm.model, tok, opts)
    print(f"window: temperature {opts.temperature}, prompt {len(opts.prompt or [])} tokens "
          f"(the last {task.sample_begin - len(task.sot_sequence) - 1} fed)")
    print("beam candidates: sum logprob, length, sum/length, text")
    cands, sums = call["candidates"]
    for c, lp in zip(cands[0], sums[0]):
        s = c[task.sample_begin: c.index(tok.eot, task.sample_begin)]
        print(f"  {lp:8.3f} {len(s):4d} {lp / max(len(s), 1):8.4f}  {show(s)}")
    greedy = decoding.DecodingTask(wm.model, tok, dataclasses.replace(opts, beam_size=None, patience=None)).run(feats)[0]
    for name, tokens in (("returned by the beam", call["result"].tokens), ("greedy, same window", greedy.tokens)):
        lp = teacher_forced(task, feats, tokens)
        print(f"{name}: sum {lp:.3f}, {len(tokens)} tokens, {lp / len(tokens):.4f} per token\n  {show(tokens)}")
    for beam in (None, args.beam_size):
        r = decoding.DecodingTask(wm.model, tok, dataclasses.replace(opts, beam_size=beam, patience=None,
                                                                     prompt=None)).run(feats)[0]
        print(f"no prompt, {'greedy' if beam is None else f'beam {beam}'}: {show(r.tokens)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
