"""The Transformer: shapes, masks, causality, tied weights, init, generation; exact numbers at a fixed seed."""

from __future__ import annotations

import math

import pytest
import torch

from core.ml.config import ModelConfig
from core.ml.model import (
    MLP,
    LanguageModel,
    SquaredReLU,
    TextClassifier,
    build_model,
    count_parameters,
    sinusoidal_encoding,
)

CFG = ModelConfig(d_model=16, n_heads=2, n_layers=2, dim_feedforward=32, dropout=0.0, max_length=12)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_sinusoidal_encoding_follows_the_formula():
    pe = sinusoidal_encoding(50, 16)
    assert pe.shape == (50, 16)
    for pos, i in [(0, 0), (3, 2), (17, 5), (49, 7)]:
        angle = pos / 10000 ** (2 * i / 16)
        assert pe[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
        assert pe[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    assert sinusoidal_encoding(4, 7).shape == (4, 7)  # odd widths work too


def test_parameter_count_matches_the_config_estimate_and_lm_weights_are_tied():
    clf = TextClassifier(CFG, vocab_size=40, num_classes=3)
    assert count_parameters(clf) == CFG.estimate_parameters(40, 3)
    lm = LanguageModel(CFG, vocab_size=40)
    assert count_parameters(lm) == CFG.estimate_parameters(40)
    # One tensor for input embedding and output projection; the encoding is a buffer, not saved.
    assert "backbone.pos_enc" not in lm.state_dict()
    assert not any("head" in k for k in lm.state_dict())


def test_init_is_fan_in_with_scaled_residual_projections_and_small_embeddings():
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=64, n_heads=4, n_layers=4, dim_feedforward=256)
    m = TextClassifier(cfg, vocab_size=500, num_classes=2)
    block = m.backbone.blocks[0]
    assert m.backbone.tok_emb.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert block.attn.qkv.weight.std().item() == pytest.approx(1 / math.sqrt(64), rel=0.05)
    assert block.mlp.fc.weight.std().item() == pytest.approx(1 / math.sqrt(64), rel=0.05)
    # fan_in 256, and 1/sqrt(2 * n_layers) for a projection into the residual stream
    assert block.mlp.proj.weight.std().item() == pytest.approx(1 / math.sqrt(256 * 8), rel=0.05)
    assert block.attn.proj.weight.std().item() == pytest.approx(1 / math.sqrt(64 * 8), rel=0.05)
    assert m.head.weight.std().item() == pytest.approx(0.02, rel=0.15)  # 128 values only
    assert block.attn.qkv.bias.abs().max().item() == 0.0
    assert m.backbone.ln_f.weight.min().item() == 1.0


def test_mlp_is_squared_relu():
    torch.manual_seed(0)
    mlp = MLP(CFG).eval()
    x = torch.randn(2, 3, CFG.d_model)
    assert torch.equal(mlp(x), mlp.proj(torch.relu(mlp.fc(x)) ** 2))


def test_classifier_shapes_loss_and_exact_numbers():
    torch.manual_seed(0)
    m = TextClassifier(CFG.model_copy(update={"ngrams": 0}), vocab_size=30, num_classes=3)  # the encoder's
    idx = torch.tensor([[2, 5, 6, 7, 0, 0], [2, 9, 8, 0, 0, 0]])
    logits, loss = m(idx, torch.tensor([0, 2]))
    assert logits.shape == (2, 3)
    assert loss.item() == pytest.approx(1.12730073928833, rel=1e-6)
    assert m(idx)[1] is None


def test_classifier_ignores_padding():
    torch.manual_seed(0)
    m = TextClassifier(CFG, vocab_size=30, num_classes=2).eval()
    short = torch.tensor([[2, 5, 6, 7]])
    padded = torch.tensor([[2, 5, 6, 7, 0, 0, 0, 0]])
    assert torch.allclose(m(short)[0], m(padded)[0], atol=1e-6)


def test_language_model_is_causal():
    torch.manual_seed(0)
    m = LanguageModel(CFG, vocab_size=30).eval()
    a = torch.tensor([[4, 5, 6, 7, 8, 9]])
    b = torch.tensor([[4, 5, 6, 7, 20, 21]])  # differs from position 4 on
    la, lb = m(a)[0], m(b)[0]
    assert la.shape == (1, 6, 30)
    assert torch.equal(la[:, :4], lb[:, :4])
    assert not torch.allclose(la[:, 4:], lb[:, 4:])


def test_language_model_loss_at_init_is_near_uniform():
    torch.manual_seed(0)
    m = LanguageModel(CFG, vocab_size=30)
    idx = torch.randint(30, (3, 12))
    _, loss = m(idx[:, :-1], idx[:, 1:])
    assert loss.item() == pytest.approx(math.log(30), rel=0.05)
    assert loss.item() == pytest.approx(3.446453094482422, rel=1e-6)


def test_language_model_logits_are_scaled_and_old_weights_keep_1x():
    """New models multiply the tied output's logits by LOGIT_SCALE; weights saved before the factor
    existed (no ``logit_scale`` tensor) load at 1x, the factor they were trained with.

    Would catch: old checkpoints refused (a missing key) or silently predicting at 2x."""
    from core.ml.model import LOGIT_SCALE

    torch.manual_seed(0)
    m = LanguageModel(CFG, vocab_size=30).eval()
    idx = torch.randint(30, (2, 8))
    logits, _ = m(idx)
    assert float(m.logit_scale) == LOGIT_SCALE != 1.0
    old = {k: v for k, v in m.state_dict().items() if k != "logit_scale"}
    loaded = LanguageModel(CFG, vocab_size=30).eval()
    loaded.load_state_dict(old)  # strict: nothing missing
    assert float(loaded.logit_scale) == 1.0
    torch.testing.assert_close(loaded(idx)[0] * LOGIT_SCALE, logits)
    again = LanguageModel(CFG, vocab_size=30)
    again.load_state_dict(m.state_dict())
    assert float(again.logit_scale) == LOGIT_SCALE


def test_longer_than_max_length_is_refused():
    m = LanguageModel(CFG, vocab_size=30)
    with pytest.raises(ValueError, match="longer than model.max_length"):
        m(torch.zeros(1, 13, dtype=torch.long))


def test_generate_seeded_greedy_and_top_k():
    torch.manual_seed(0)
    m = LanguageModel(CFG, vocab_size=30).eval()
    start = torch.tensor([[4, 5]])
    g = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    a = m.generate(start, 20, temperature=1.0, generator=g())
    b = m.generate(start, 20, temperature=1.0, generator=g())
    assert a.shape == (1, 22) and torch.equal(a, b)  # longer than max_length: the context is cropped
    greedy = m.generate(start, 5, temperature=0)
    assert torch.equal(m.generate(start, 5, top_k=1, generator=g()), greedy)
    stopped = m.generate(start, 20, temperature=0, stop_id=int(greedy[0, 2]))
    assert stopped.shape == (1, 3)


def test_build_model_refuses_one_class():
    with pytest.raises(ValueError, match="at least 2 classes"):
        build_model("classification", CFG, 30, 1)


def test_cpu_bf16_autocast_keeps_attention_in_fp32_and_matches_fp32():
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=32, n_heads=4, n_layers=2, dim_feedforward=64, dropout=0.0, max_length=16)
    model = LanguageModel(cfg, vocab_size=50)
    idx = torch.randint(0, 50, (2, 16))
    _, loss32 = model(idx, idx)
    seen: list[torch.dtype] = []
    hook = torch.nn.functional.scaled_dot_product_attention

    def spy(q, *args, **kwargs):
        seen.append(q.dtype)
        return hook(q, *args, **kwargs)

    torch.nn.functional.scaled_dot_product_attention = spy
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, loss16 = model(idx, idx)
        loss16.backward()
    finally:
        torch.nn.functional.scaled_dot_product_attention = hook
    assert seen == [torch.float32, torch.float32]  # one call per block, in fp32 under bf16 autocast
    assert abs(loss16.item() - loss32.item()) < 0.05
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_squared_relu_gradient_matches_autograd():
    x = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(SquaredReLU.apply, (x,))
    g = torch.randn(4, 7, dtype=torch.float64)
    (mine,) = torch.autograd.grad(SquaredReLU.apply(x), x, g)
    (ref,) = torch.autograd.grad(torch.relu(x) ** 2, x, g)
    assert torch.allclose(mine, ref)
    xb = x.detach().bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 in, bf16 out, bf16 gradient
        y = SquaredReLU.apply(xb)
    y.backward(g.bfloat16())
    assert y.dtype == xb.grad.dtype == torch.bfloat16
    assert torch.allclose(xb.grad.double(), ref, rtol=0.05, atol=0.05)
