"""CPU speed fixes: the decoder's first pass projects only the positions decoding reads
(`logit_positions`), and importing qwhisper asks OpenMP for passive waiting.

A window's first pass feeds the whole prompt (up to 224 tokens) but decoding reads the logits
of two positions only: <|startoftranscript|> (P(no speech)) and the last one (the first sampled
token). Checked against the full projection, on the logits, on the KV cache the pass leaves
behind, and on the decoded tokens, including models without the keyword (duck-typed ones).
"""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from qwhisper.decoding import DecodingOptions, DecodingTask, Inference
from qwhisper.transcribe import WhisperModel


def test_selected_logits_equal_the_full_projection(toy_f16):
    m = WhisperModel(toy_f16, "cpu").model
    xa = m.embed_audio(torch.randn(2, 80, 3000))
    tokens = torch.randint(0, 50000, (2, 9))
    full_cache, sel_cache = m.new_kv_cache(xa), m.new_kv_cache(xa)
    full = m.logits(tokens, full_cache)
    sel = m.logits(tokens, sel_cache, logit_positions=[3, -1, 0])
    assert sel.shape == (2, 3, m.dims.n_vocab) and sel.dtype == torch.float32
    # a (B, 3, C) product against the (B, 9, C) one: same sums, possibly another blocking
    torch.testing.assert_close(sel, full[:, [3, 8, 0]], rtol=1e-5, atol=1e-4)
    # the pass left the same cache: the K/V rows are computed before the selection
    assert sel_cache.offset == full_cache.offset == 9
    for a, b in zip(full_cache.self_k + full_cache.self_v, sel_cache.self_k + sel_cache.self_v):
        assert torch.equal(a, b)
    nxt = torch.randint(0, 50000, (2, 1))
    assert torch.equal(m.logits(nxt, full_cache), m.logits(nxt, sel_cache))
    # the index as a tensor (graphed prompt passes hand one in): the same selection
    t_cache = m.new_kv_cache(xa)
    by_tensor = m.decoder.forward_at(tokens, torch.arange(9), t_cache, logit_positions=torch.tensor([3, 8, 0]))
    torch.testing.assert_close(by_tensor, sel, rtol=0, atol=0)


def test_inference_selects_with_or_without_model_support(toy_f16):
    """Inference.logits(tokens, positions): through the keyword where the model has it, else by
    indexing the full logits; the same values either way."""
    wm = WhisperModel(toy_f16, "cpu")
    m = wm.model

    class Plain:  # a model whose logits() has no logit_positions keyword (like a scripted test model)
        dims, device = m.dims, m.device

        @staticmethod
        def new_kv_cache(xa, n_group=1):
            return m.new_kv_cache(xa, n_group=n_group)

        @staticmethod
        def logits(tokens, cache):
            return m.logits(tokens, cache)

    xa = m.embed_audio(torch.randn(1, 80, 3000))
    tokens = torch.randint(0, 50000, (1, 6))
    a, b = Inference(m, xa), Inference(Plain(), xa)
    assert a._select and not b._select
    torch.testing.assert_close(a.logits(tokens, [1, -1]), b.logits(tokens, [1, -1]), rtol=1e-5, atol=1e-4)
    assert a.cache.offset == b.cache.offset == 6
    step = torch.cat([tokens, torch.tensor([[7]])], dim=1)
    torch.testing.assert_close(a.logits(step), b.logits(step), rtol=1e-5, atol=1e-4)


def test_decoding_with_a_prompt_is_unchanged(toy_f16, monkeypatch):
    """Greedy decoding with a long prompt gives the same tokens, no-speech probability and
    logprob whether the first pass projects two positions or all of them."""
    wm = WhisperModel(toy_f16, "cpu")
    mel = torch.randn(2, 80, 3000)
    opts = DecodingOptions(sample_len=10, prompt=list(range(300, 360)))  # 60 prompt tokens
    selected = DecodingTask(wm.model, wm.tokenizer, opts).run(mel)
    original = Inference.__init__

    def without_selection(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self._select = False

    monkeypatch.setattr(Inference, "__init__", without_selection)
    full = DecodingTask(wm.model, wm.tokenizer, opts).run(mel)
    for s, f in zip(selected, full):
        assert s.tokens == f.tokens
        assert abs(s.no_speech_prob - f.no_speech_prob) < 1e-5
        assert abs(s.avg_logprob - f.avg_logprob) < 1e-4


def _omp_wait_policy_after_import(preset: str | None) -> str:
    """OMP_WAIT_POLICY seen by a fresh interpreter after `import qwhisper` and torch."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if preset is not None:
        env["OMP_WAIT_POLICY"] = preset
    code = "import os, qwhisper, torch; print(os.environ.get('OMP_WAIT_POLICY'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_import_sets_passive_omp_wait_unless_given():
    assert _omp_wait_policy_after_import(None) == "PASSIVE"
    assert _omp_wait_policy_after_import("ACTIVE") == "ACTIVE"  # the user's choice wins
