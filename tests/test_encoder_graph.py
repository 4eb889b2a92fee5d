"""The encoder's CUDA graph (model._GraphedEncoder): replays equal the eager encoder bit for bit,
also after the shared dequantize buffer has grown; CPU models never build one."""

import pytest
import torch

from qwhisper.architectures import write_random_model
from qwhisper.loader import load_model


@pytest.fixture(scope="module")
def toy_q5_0(tmp_path_factory):
    path = tmp_path_factory.mktemp("toy") / "ggml-toy-q5_0.bin"
    write_random_model(path, "toy.en", "q5_0", seed=3)
    return path


def _mel(model, batch: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, model.dims.n_mels, 2 * model.dims.n_audio_ctx, generator=g)


def test_cpu_encoder_is_not_graphed(toy_q5_0):
    model = load_model(toy_q5_0, "cpu")
    model.embed_audio(_mel(model, 1, 0))
    assert model._encoder_graphs == {}


@pytest.mark.cuda
def test_encoder_graph_replays_equal_eager(toy_q5_0):
    model = load_model(toy_q5_0, "cuda")
    for batch in (1, 2):
        for seed in (0, 1, 2):  # capture, then replays with new inputs
            mel = _mel(model, batch, seed)
            model.encoder_graphs = True
            graphed = model.embed_audio(mel)
            model.encoder_graphs = False
            eager = model.embed_audio(mel)
            assert torch.equal(graphed, eager), (batch, seed)
    assert {k[0] for k in model._encoder_graphs} == {1, 2}
    assert all(g.graph is not None for g in model._encoder_graphs.values())
    # a prompt pass dequantizes the vocabulary into a bigger scratch buffer: the graph stays valid
    from qwhisper.quants import triton_ops

    before = {k: v.data_ptr() for k, v in triton_ops._scratch.items()}
    features = model.embed_audio(_mel(model, 1, 5))
    cache = model.new_kv_cache(features)
    model.logits(torch.arange(40, device="cuda")[None] % model.dims.n_vocab, cache)
    triton_ops._scratch_buffer(64 << 20, model.dtype, torch.device("cuda"))  # force a regrowth
    assert {k: v.data_ptr() for k, v in triton_ops._scratch.items()} != before
    mel = _mel(model, 1, 7)
    model.encoder_graphs = True
    graphed = model.embed_audio(mel)
    model.encoder_graphs = False
    assert torch.equal(graphed, model.embed_audio(mel))


@pytest.mark.cuda
@pytest.mark.parametrize("way", ["dequant+cublas", "splitk"])
def test_decoder_graph_of_many_rows_equals_eager(toy_q5_0, monkeypatch, way):
    """12 rows (a batched-pipeline step: the split-K GEMM's partials summed by their consumers, or
    dequantize + cuBLAS into the shared scratch buffer) replay from a CUDA graph equal to eager
    steps, also after the scratch buffer was replaced."""
    from qwhisper.model import GRAPH_MAX_ROWS
    from qwhisper.quants import triton_ops

    rows = 12
    assert rows <= GRAPH_MAX_ROWS
    # the toy's layers are small enough for the GEMV: force the 9..16-row way of large models
    monkeypatch.setattr(triton_ops, "GEMV_MAX_WEIGHTS_9_16", 0)
    if way == "dequant+cublas":
        monkeypatch.setattr(triton_ops, "SPLITK_MAX_M", 0)
    assert triton_ops.pick(rows, 256, 256, torch.float16) == way
    model = load_model(toy_q5_0, "cuda")
    features = model.embed_audio(_mel(model, rows, 11))
    prompt = (torch.arange(3 * rows, device="cuda").view(rows, 3) * 7) % model.dims.n_vocab

    def run(graphs: bool, regrow_at: int | None = None) -> list[torch.Tensor]:
        model.decoder.cuda_graphs = graphs
        cache = model.new_kv_cache(features)
        out = [model.logits(prompt, cache)[:, -1]]
        for step in range(6):
            if step == regrow_at:
                triton_ops._scratch_buffer(2 * max(b.numel() for b in triton_ops._scratch.values()),
                                           model.dtype, torch.device("cuda"))
            token = out[-1].argmax(-1, keepdim=True)
            out.append(model.logits(token, cache)[:, -1])
        return out

    eager = run(False)
    graphed = run(True, regrow_at=3)
    assert any(st.graph is not None for sets in model.decoder._graphed.values() for st in sets)
    for a, b in zip(eager, graphed):
        assert torch.equal(a, b)


@pytest.mark.cuda
def test_decoder_step_of_many_rows_splitk_matches_cublas(toy_q5_0, monkeypatch):
    """The batched step's GEMMs as split-K partials (summed by the residual add + LayerNorm, the
    GELU, or their own kernel) against dequantize + cuBLAS: 20 rows, prompt
    and four steps, logits within float16 rounding of each other (a partial dropped, added twice
    or summed without its bias is off by O(1))."""
    from qwhisper.quants import triton_ops

    rows = 20
    model = load_model(toy_q5_0, "cuda")
    model.decoder.cuda_graphs = False
    features = model.embed_audio(_mel(model, rows, 5))
    prompt = (torch.arange(3 * rows, device="cuda").view(rows, 3) * 11) % model.dims.n_vocab
    calls = []
    real = triton_ops.splitk_linear
    monkeypatch.setattr(triton_ops, "splitk_linear", lambda *a, **k: calls.append(1) or real(*a, **k))

    def run(max_m: int) -> list[torch.Tensor]:
        monkeypatch.setattr(triton_ops, "SPLITK_MAX_M", max_m)  # pick(): linear() and QLinear.forward_parts
        cache = model.new_kv_cache(features)
        out = [model.logits(prompt, cache)[:, -1]]
        for step in range(4):  # fixed tokens: both runs see the same inputs
            out.append(model.logits(prompt[:, step % 3:step % 3 + 1] + 5 * step, cache)[:, -1])
        return out

    ref = run(0)
    assert not calls
    got = run(32)
    assert calls  # the split-K way ran
    for a, b in zip(ref, got):
        scale = a.abs().max().item()
        assert (a - b).abs().max().item() <= 4e-3 * scale, ((a - b).abs().max().item(), scale)
