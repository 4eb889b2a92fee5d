"""CUDA graphs of the decoder step (model._GraphedStep): persistent KV buffers per shape, one
graph per buffer set, replayed for one-token steps; and graphs of the prompt pass, padded to a
bucket of lengths.

CPU: the buffer bookkeeping (what a window's cache gets, who owns the set). CUDA: transcripts
and logits with graphs equal those without (same kernels, so bit-identical), beams included, and
the graph is captured once and reused across windows.
"""

import gc

import numpy as np
import pytest
import torch

from qwhisper.model import KVCache, _GraphedStep


def test_buffer_set_bookkeeping():
    """take() copies the window's cross K/V in, zeroes the self-attention rows, and the set is
    in use exactly while its KVCache is alive."""
    layers, rows, n_ctx, s, c = 2, 3, 8, 5, 4
    zeros = lambda r, n: [torch.zeros(r, n, c) for _ in range(layers)]  # noqa: E731
    st = _GraphedStep(zeros(rows, n_ctx), zeros(rows, n_ctx), zeros(1, s), zeros(1, s))
    for buf in st.self_k + st.self_v:
        buf.fill_(7.0)  # a previous window's keys/values
    kv = [(torch.randn(1, s, c), torch.randn(1, s, c)) for _ in range(layers)]
    assert not st.in_use()
    cache = st.take(kv, n_group=rows)
    assert isinstance(cache, KVCache) and cache.n_group == rows and cache.offset == 0
    assert st.in_use() and cache._graphed is st
    for i, (k, v) in enumerate(kv):
        assert cache.cross_k[i] is st.cross_k[i] and torch.equal(cache.cross_k[i], k)
        assert torch.equal(cache.cross_v[i], v)
        assert cache.self_k[i] is st.self_k[i] and not cache.self_k[i].any() and not cache.self_v[i].any()
    del cache
    gc.collect()
    assert not st.in_use()


def test_cpu_caches_are_not_graphed(tmp_path):
    from qwhisper.architectures import write_random_model
    from qwhisper.loader import load_model

    write_random_model(tmp_path / "toy.bin", "toy.en", "q8_0", seed=2)
    model = load_model(tmp_path / "toy.bin", "cpu")
    cache = model.new_kv_cache(torch.zeros(1, 1500, 64))
    assert getattr(cache, "_graphed", None) is None and not model.decoder._graphed


def _graph_sets(model):
    return [st for sets in model.decoder._graphed.values() for st in sets]


@pytest.mark.cuda
def test_cuda_graph_transcripts_equal_eager(shared_q5_1):
    """Greedy and 5-beam decoding of two windows: with graphs the tokens and the logits' bits are
    those of the eager steps; each shape is captured once and replayed in the next window."""
    from qwhisper.decoding import DecodingOptions, DecodingTask
    from qwhisper.ggml_file import read_ggml
    from qwhisper.loader import load_model
    from qwhisper.tokenizer import Tokenizer

    f = read_ggml(shared_q5_1)
    tok = Tokenizer.from_ggml(f)
    model = load_model(f, "cuda")
    rng = np.random.default_rng(11)
    mels = [torch.from_numpy(rng.uniform(-0.8, 1.2, (1, 80, 3000)).astype(np.float32)) for _ in range(2)]
    results = {}
    for graphs in (False, True):
        model.decoder.cuda_graphs = graphs
        out = []
        for mel in mels:
            for beams in (None, 5):
                opts = DecodingOptions(language="en", beam_size=beams, sample_len=24)
                r = DecodingTask(model, tok, opts).run(mel)[0]
                out.append((r.tokens, r.avg_logprob))
        results[graphs] = out
    # tokens equal; log-probs within rounding: with graphs the prompt pass is padded to its bucket
    # (model.PROMPT_BUCKETS), and cuBLAS may pick another kernel for the padded shape
    assert [t for t, _ in results[True]] == [t for t, _ in results[False]]
    assert np.allclose([lp for _, lp in results[True]], [lp for _, lp in results[False]], rtol=0, atol=2e-3)
    sets = _graph_sets(model)
    assert {st.tokens.shape[0] for st in sets} == {1, 5}
    # greedy (1 row) replays the greedy loop's graph (model step + filters, greedy_loop.py);
    # beams (5 rows) the model step's own graph
    assert all(not st.failed and (st.graph is not None or any(lg.graph is not None for lg in st.loop_graphs.values()))
               for st in sets)

    # step logits: replayed graph == eager, bit for bit
    xa = model.embed_audio(mels[0])
    ref = model.decoder
    ref.cuda_graphs = False
    eager_cache = model.new_kv_cache(xa)
    ref.cuda_graphs = True
    graph_cache = model.new_kv_cache(xa)
    assert graph_cache._graphed is not None
    prompt = torch.tensor([[tok.sot, tok.no_timestamps]], device="cuda")
    model.logits(prompt, eager_cache)
    model.logits(prompt, graph_cache)
    for t in (440, 1049, 286):
        step = torch.tensor([[t]], device="cuda")
        a, b = model.logits(step, eager_cache), model.logits(step, graph_cache)
        assert torch.equal(a, b)
    assert graph_cache.offset == eager_cache.offset == 5


@pytest.mark.cuda
def test_cuda_concurrent_caches_do_not_share_buffers(shared_q5_1):
    from qwhisper.loader import load_model
    from qwhisper.model import GRAPH_SETS_PER_SHAPE

    model = load_model(shared_q5_1, "cuda")
    xa = model.embed_audio(torch.zeros(1, 80, 3000))
    caches = [model.new_kv_cache(xa) for _ in range(GRAPH_SETS_PER_SHAPE + 1)]
    graphed = [c._graphed for c in caches if getattr(c, "_graphed", None) is not None]
    assert len(graphed) == GRAPH_SETS_PER_SHAPE and len({id(g) for g in graphed}) == GRAPH_SETS_PER_SHAPE
    ptrs = [c.self_k[0].data_ptr() for c in caches]
    assert len(set(ptrs)) == len(ptrs)  # the extra one got fresh (eager) buffers


@pytest.mark.cuda
def test_cuda_prompt_graph_equals_eager(shared_q5_1):
    """Prompts of 3, 8, 20 and 100 tokens through the graphs of their buckets (8, 8, 32, 128):
    the logits of the asked positions match the eager pass (same argmax, float16 rounding), and
    the K/V rows the padded graph wrote serve the following steps like the eager ones."""
    from qwhisper.loader import load_model
    from qwhisper.model import PROMPT_BUCKETS

    model = load_model(shared_q5_1, "cuda")
    rng = np.random.default_rng(12)
    xa = model.embed_audio(torch.from_numpy(rng.uniform(-0.8, 1.2, (1, 80, 3000)).astype(np.float32)))
    n_vocab = model.dims.n_vocab
    for t in (3, 8, 20, 100):
        tokens = torch.from_numpy(rng.integers(0, n_vocab - 1000, (1, t))).to("cuda")
        out = {}
        for graphs in (False, True):
            model.decoder.cuda_graphs = graphs
            cache = model.new_kv_cache(xa)
            assert (getattr(cache, "_graphed", None) is not None) == graphs
            first = model.logits(tokens, cache, logit_positions=[0, -1])
            steps = [model.logits(torch.tensor([[w]], device="cuda"), cache) for w in (440, 1049, 286)]
            out[graphs] = (first, steps, cache.offset)
            del cache
        (fe, se, oe), (fg, sg, og) = out[False], out[True]
        assert oe == og == t + 3 and fg.shape == fe.shape == (1, 2, n_vocab)
        for a, b in [(fe, fg)] + list(zip(se, sg)):
            torch.testing.assert_close(b, a, rtol=1e-2, atol=5e-2)
            assert torch.equal(a.argmax(-1), b.argmax(-1))
    keys = {k for sets in model.decoder._graphed.values() for st in sets for k, g in st.prompt_graphs.items()
            if g is not None}
    assert keys == {(b, 2) for b in (8, 32, 128)} and set(PROMPT_BUCKETS) >= {8, 32, 128}


def test_prompt_graph_inputs_are_padded_after_the_prompt():
    """_GraphedPrompt.fill (CPU tensors): the prompt, then its last token repeated up to the
    bucket; positions offset..offset+bucket-1; logit positions as given (already absolute)."""
    from qwhisper.model import _GraphedPrompt

    g = _GraphedPrompt(rows=2, bucket=8, n_logits=2, device=torch.device("cpu"))
    tokens = torch.tensor([[5, 6, 7], [8, 9, 10]])
    g.fill(tokens, offset=3, lp=[0, 2])
    assert g.tokens.tolist() == [[5, 6, 7, 7, 7, 7, 7, 7], [8, 9, 10, 10, 10, 10, 10, 10]]
    assert g.positions.tolist() == list(range(3, 11)) and g.lp.tolist() == [0, 2]
    g.fill(torch.arange(8).view(1, 8).repeat(2, 1), offset=0, lp=[1, 7])  # a full bucket: no padding
    assert g.tokens[0].tolist() == list(range(8)) and g.positions.tolist() == list(range(8))


def test_prompt_graph_declines_what_it_cannot_replay(tmp_path):
    """_GraphedStep.prompt returns None (the caller runs the pass eagerly) for a prompt longer
    than the largest bucket, one whose bucket would pass the context, and logit positions outside
    the prompt, before touching any graph."""
    from qwhisper.model import PROMPT_BUCKETS

    layers, n_ctx, s, c = 1, 448, 5, 4
    zeros = lambda r, n: [torch.zeros(r, n, c) for _ in range(layers)]  # noqa: E731
    st = _GraphedStep(zeros(1, n_ctx), zeros(1, n_ctx), zeros(1, s), zeros(1, s))

    class Decoder:  # only n_ctx is read before a graph is built
        pass

    dec = Decoder()
    dec.n_ctx = n_ctx
    too_long = torch.zeros((1, PROMPT_BUCKETS[-1] + 1), dtype=torch.long)
    assert st.prompt(dec, too_long, 0, [0, -1], None) is None
    assert st.prompt(dec, torch.zeros((1, 100), dtype=torch.long), n_ctx - 120, [0, -1], None) is None  # 128 > 120
    assert st.prompt(dec, torch.zeros((1, 10), dtype=torch.long), 0, [10], None) is None
    assert st.prompt(dec, torch.zeros((1, 10), dtype=torch.long), 0, [-11], None) is None
    assert not st.prompt_graphs
