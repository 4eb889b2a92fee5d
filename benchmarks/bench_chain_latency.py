"""Chain latency floor of the fused decoder step: what one dependent stage costs when it does
almost nothing, as (a) one kernel per stage in a CUDA graph, with or without programmatic dependent
launch (PDL), against (b) one persistent kernel whose programs meet at a grid barrier (an atomic
counter, polled with loads or atomics) between stages. Each stage: every program reads the whole
1280-float vector the previous stage wrote (as a GEMV reads x) and writes its share of the next.

    python benchmarks/bench_chain_latency.py        (CUDA, sm_90 for PDL)

Prints us per stage over 256 stages. On an H100 (docs/reports/performance.md section 7): PDL
kernels 1.34-1.56 us, grid barriers 1.74-5.5 us (worse with more programs): a persistent
"megakernel" with flat barriers would not shorten the step's 8-stages-a-layer chain.
"""
import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

N = 1280
BLOCK = 2048


@triton.jit
def hop(x_ptr, y_ptr, N, G, BLOCK: tl.constexpr, PER: tl.constexpr, PDL: tl.constexpr):
    pid = tl.program_id(0)
    if PDL:
        gdc_launch_dependents()
        gdc_wait()
    offs = tl.arange(0, BLOCK)
    v = tl.load(x_ptr + offs, mask=offs < N, other=0.0)
    s = tl.sum(v) * 1e-3
    for j in range(PER):
        i = pid + j * G
        if i < N:
            tl.store(y_ptr + i, s + i)


@triton.jit
def persist(buf, bar_ptr, N, G, STAGES, BLOCK: tl.constexpr, PER: tl.constexpr, POLL_LOAD: tl.constexpr):
    pid = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    for st in range(STAGES):
        src = buf + (st % 2) * BLOCK
        dst = buf + ((st + 1) % 2) * BLOCK
        v = tl.load(src + offs, mask=offs < N, other=0.0, cache_modifier=".cg")
        s = tl.sum(v) * 1e-3
        for j in range(PER):
            i = pid + j * G
            if i < N:
                tl.store(dst + i, s + i)
        tl.debug_barrier()
        tl.atomic_add(bar_ptr, 1, sem="release")
        target = (st + 1) * G
        if POLL_LOAD:
            c = tl.load(bar_ptr, volatile=True)
            while c < target:
                c = tl.load(bar_ptr, volatile=True)
            c = tl.atomic_add(bar_ptr, 0, sem="acquire")
        else:
            c = tl.atomic_add(bar_ptr, 0, sem="acquire")
            while c < target:
                c = tl.atomic_add(bar_ptr, 0, sem="acquire")
        tl.debug_barrier()


def timed(fn, reps=20):
    fn(); torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    g.replay(); torch.cuda.synchronize()
    st, en = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    ts = []
    for _ in range(reps):
        st.record(); g.replay(); en.record(); torch.cuda.synchronize()
        ts.append(st.elapsed_time(en) * 1e3)
    return sorted(ts)[len(ts) // 2]


def main():
    dev = "cuda"
    stages = 256
    a = torch.randn(BLOCK, device=dev); b = torch.randn(BLOCK, device=dev)
    print(torch.cuda.get_device_name(0), "torch", torch.__version__, "triton", triton.__version__)
    for g, w in [(1056, 1), (528, 1), (264, 4), (132, 4)]:
        per = triton.cdiv(N, g)
        for pdl in (False, True):
            def chain(g=g, w=w, per=per, pdl=pdl):
                for s in range(stages):
                    x, y = (a, b) if s % 2 == 0 else (b, a)
                    hop[(g,)](x, y, N, g, BLOCK=BLOCK, PER=per, PDL=pdl, num_warps=w, **({"launch_pdl": True} if pdl else {}))
            print(f"kernel chain  G={g:5d} warps={w} pdl={pdl!s:5}: {timed(chain) / stages:.2f} us/stage", flush=True)
    for g, w in [(132, 4), (132, 1), (264, 1), (264, 4), (528, 1), (1056, 1)]:
        per = triton.cdiv(N, g)
        buf = torch.randn(2 * BLOCK, device=dev)
        bar = torch.zeros(1, dtype=torch.int32, device=dev)
        for poll in (True, False):
            def run(g=g, w=w, per=per, poll=poll, buf=buf, bar=bar):
                bar.zero_()
                persist[(g,)](buf, bar, N, g, stages, BLOCK=BLOCK, PER=per, POLL_LOAD=poll, num_warps=w)
            try:
                print(f"grid barrier  G={g:5d} warps={w} poll={'load' if poll else 'atomic'}: {timed(run) / stages:.2f} us/stage", flush=True)
            except (RuntimeError, triton.CompilationError) as e:
                print("persist failed", g, w, e)
    # correctness of the persistent result against the chain (one stage = same values)
    buf = torch.zeros(2 * BLOCK, device=dev); buf[:N] = torch.randn(N, device=dev)
    x0 = buf[:N].clone()
    bar = torch.zeros(1, dtype=torch.int32, device=dev)
    persist[(132,)](buf, bar, N, 132, 2, BLOCK=BLOCK, PER=triton.cdiv(N, 132), POLL_LOAD=True, num_warps=4)
    s1 = x0.sum() * 1e-3 + torch.arange(N, device=dev)
    s2 = s1.sum() * 1e-3 + torch.arange(N, device=dev)
    print("persist 2 stages ok:", torch.allclose(buf[:N], s2, rtol=1e-4, atol=1e-3), "barrier", bar.item())


if __name__ == "__main__":
    main()
