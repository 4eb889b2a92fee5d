"""The batched step's cross-attention read from the encoder output (quants/triton_enc_attn.py)
against today's, over the cross keys and values (triton_decoder.attention), on the GPU.

    python benchmarks/bench_enc_attn.py [--arch large-v3] [--rows 1,8,25] [--type q5_0] [--keys 0,144,304,752]

For each number of rows (one window each, as in a batched long-form step): us per layer of
  kv        triton_decoder.attention over each layer's own K and V (R x S x C float16 each), as the
            step runs it now (32 distinct layers in one CUDA graph, so K and V come from memory);
  enc       triton_enc_attn.enc_attention over the windows' encoder output E (R x S x C, the same
            for every layer, as in the model) + its split combine, at each --keys (keys a program;
            0: the module's rule), and the programs it launched;
  products  the two grouped products the rewrite adds (Q' = W_k,h^T q_h and W_v,h U_h) on
            --type blocks (query_product_blocks, value_product_blocks), 32 layers of each;
and the relative difference of the rewrite's output (Q', U, W_v U + b_v) from attention over
K = E W_k^T + b_k, V = E W_v^T + b_v (both from float16 inputs). Bytes a layer: K + V 2RSC x 2,
E RSC x 2. Times from CUDA graph replays (graph_timing.graph_us), median of 9.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.environ.get("QWHISPER_SRC", str(Path(__file__).resolve().parents[1])))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_rows_gemm import random_blocks
from graph_timing import graph_us

from qwhisper.architectures import ARCHITECTURES
from qwhisper.quants import GGMLType, quantize, triton_decoder, triton_enc_attn, triton_ops


def rewrite(q: torch.Tensor, enc: torch.Tensor, windows: torch.Tensor, w_k: torch.Tensor, w_v: torch.Tensor,
            ggml_type: GGMLType, b_v: torch.Tensor | None, n_head: int, keys_split: int | None = None) -> torch.Tensor:
    """The cross-attention output (R, C) float16 through Q', enc_attention and W_v U + b_v, the two
    products on the raw blocks w_k, w_v, as model.CROSS_FROM_ENCODER runs it."""
    qp = triton_enc_attn.query_product_blocks(q, w_k, ggml_type, n_head, torch.float16)  # (H, R, C)
    return triton_enc_attn.value_product_blocks(triton_enc_attn.attend(qp, enc, windows, keys_split), w_v, ggml_type, b_v)


def rel_diff(rows: int, c: int, n_head: int, s: int, ggml_type: GGMLType, gen: torch.Generator) -> float:
    """max |rewrite - attention over K, V| / max |attention over K, V| for one layer of random
    weights quantized by the golden (K and V from their float16 dequantization, as the model's)."""
    enc = torch.randn(rows, s, c, device="cuda", generator=gen).half()
    raws = [torch.from_numpy(np.ascontiguousarray(quantize(w, ggml_type)).reshape(-1).copy()).cuda()
            for w in (torch.randn(2, c, c, generator=torch.Generator().manual_seed(1)) / c**0.5).numpy()]
    w_k, w_v = (triton_ops.dequantize(r, ggml_type, (c, c), torch.float16).float() for r in raws)
    b_k, b_v = torch.randn(2, c, device="cuda", generator=gen).half()
    q = torch.randn(rows, c, device="cuda", generator=gen).half()
    k = (enc.float() @ w_k.T + b_k.float()).half()
    v = (enc.float() @ w_v.T + b_v.float()).half()
    want = torch.empty(rows, c, device="cuda", dtype=torch.float32)
    counters = torch.zeros(rows * n_head, dtype=torch.int32, device="cuda")
    triton_decoder.attention(q, k, v, n_head, want, counters, split_s=triton_decoder.CROSS_SPLIT_S)
    windows = torch.arange(rows, dtype=torch.int32, device="cuda")
    got = rewrite(q, enc, windows, raws[0], raws[1], ggml_type, b_v, n_head).float()
    return ((got - want).abs().max() / want.abs().max()).item()


def kv_us(q: torch.Tensor, n_head: int, s: int, layers: int, gen: torch.Generator) -> float:
    """us a layer of today's cross-attention over `layers` distinct K, V pairs of q's rows."""
    rows, c = q.shape
    kvs = [(torch.randn(rows, s, c, device="cuda", generator=gen).half(),
            torch.randn(rows, s, c, device="cuda", generator=gen).half()) for _ in range(layers)]
    out = torch.empty(rows, c, device="cuda", dtype=torch.float16)
    counters = torch.zeros(rows * n_head, dtype=torch.int32, device="cuda")
    return graph_us(lambda: [triton_decoder.attention(q, k, v, n_head, out, counters, split_s=triton_decoder.CROSS_SPLIT_S)
                             for k, v in kvs], layers)


def measure(rows: int, c: int, n_head: int, s: int, layers: int, keys: list[int], ggml_type: GGMLType,
            gen: torch.Generator) -> str:
    """One table row: kv us, enc us at each keys a program, the products' us, the rewrite's rel diff."""
    q = torch.randn(rows, c, device="cuda", generator=gen).half()
    kv = kv_us(q, n_head, s, layers, gen)
    enc = torch.randn(rows, s, c, device="cuda", generator=gen).half()
    windows = torch.arange(rows, dtype=torch.int32, device="cuda")
    qp = (torch.randn(rows, n_head, c, device="cuda", generator=gen) / c).half()
    u = torch.empty(rows, n_head, c, device="cuda", dtype=torch.float32)
    cells, rule_us = [], None
    for k in keys:
        ks = k or triton_enc_attn.keys_split_for(rows, n_head, s)
        if ks >= s + triton_enc_attn.KEYS_STEP:
            continue
        us = graph_us(lambda ks=ks: [triton_enc_attn.enc_attention(qp, enc, windows, out=u, keys_split=ks)
                                     for _ in range(layers)], layers)
        rule_us = us if not k else rule_us
        progs = rows * -(-n_head // triton_enc_attn.HEAD_GROUP) * -(-s // ks)
        cells.append(f"{us:.1f}: {ks}{'*' if not k else ''} ({progs})")
    ws = [random_blocks(ggml_type, c, c, gen) for _ in range(2 * layers)]
    whole = graph_us(lambda: [rewrite(q, enc, windows, ws[2 * i], ws[2 * i + 1], ggml_type, None, n_head)
                              for i in range(layers)], layers)
    mb_kv = 2 * rows * s * c * 2 / 1e6
    products = f"{whole - rule_us:.1f}" if rule_us is not None else "-"
    return (f"| {rows} | {kv:.1f} ({mb_kv:.0f}) | " + "; ".join(cells) + f" ({mb_kv / 2:.0f} MB) | {products} | "
            f"{rel_diff(rows, c, n_head, s, ggml_type, gen):.1e} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="large-v3")
    ap.add_argument("--rows", default="1,8,25")
    ap.add_argument("--type", default="q5_0", help="block type of W_k and W_v (the two products)")
    ap.add_argument("--keys", default="0,160,320,480,768", help="keys a program to try, multiples of KEYS_STEP (0: the module's rule)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_enc_attn: needs a CUDA GPU", file=sys.stderr)
        return 1
    hp = ARCHITECTURES[args.arch]
    c, n_head, s, layers = hp.n_text_state, hp.n_text_head, hp.n_audio_ctx, hp.n_text_layer
    print(f"# {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}; {args.arch}: "
          f"C {c}, {n_head} heads, {s} keys, {layers} layers; enc_attention on {triton_enc_attn.WARPS} warps")
    print("| rows | kv us (MB a layer) | enc us: keys a program (programs) | products us | rel diff |\n"
          "| --- | --- | --- | --- | --- |")
    gen = torch.Generator(device="cuda").manual_seed(0)
    keys = [int(x) for x in args.keys.split(",")]
    for rows in (int(x) for x in args.rows.split(",")):
        print(measure(rows, c, n_head, s, layers, keys, GGMLType[args.type.upper()], gen), flush=True)
    print("(* the module's rule; products: the whole rewrite at the rule's keys minus its attention)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
