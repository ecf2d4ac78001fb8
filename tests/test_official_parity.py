"""Parity with the official T2T-ViT: same state-dict keys and shapes (measured from the official code), and the
same logits for the same weights as the official forward pass written out from its formulas (official_formulas.py)."""
import json, pathlib
import pytest
import torch
import t2t_vit_lite as T
from official_formulas import t2t_vit_forward, sinusoid_table

FIX = pathlib.Path(T.__file__).parent / 'results'   # measured from the official code; shipped so chapter 06 runs in Colab
OFFICIAL_KEYS = json.loads((FIX / 'official_keys.json').read_text())
OFFICIAL_SIZE = json.loads((FIX / 'official_size.json').read_text())


def randomized(name, seed=0, **kw):
    "A model whose every tensor is random (norm weights and biases too), so that no term of the forward is trivial."
    torch.manual_seed(seed)
    m = T.create_model(name, **kw).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if p.requires_grad and (n.endswith('bias') or 'norm' in n): p.add_(torch.randn_like(p) * 0.1)
        m.head.weight.mul_(20)    # logits of order 1-10, so 2e-4 is a real bound
    return m


def test_every_official_variant_is_known():
    assert set(OFFICIAL_KEYS) <= set(T.list_models())


@pytest.mark.parametrize('name', sorted(OFFICIAL_KEYS))
def test_state_dict_keys_shapes_and_params_equal_official(name):
    m = T.create_model(name)
    assert {k: list(v.shape) for k, v in m.state_dict().items()} == OFFICIAL_KEYS[name]
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == OFFICIAL_SIZE[name]['trainable']


@pytest.mark.parametrize('name', T.list_models())
def test_logits_equal_official_formulas(name):
    m = randomized(name)
    v = T.VARIANTS[name]
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ours = m(x)
        ref = t2t_vit_forward(x, m.state_dict(), v['tokens_type'], v['num_heads'])
    assert ours.abs().max() > 0.5, 'logits too small for the bound to mean anything'
    assert (ours - ref).abs().max() <= 2e-4, (ours - ref).abs().max()
    assert (ours.argmax(-1) == ref.argmax(-1)).all()


def test_qk_scale_override_and_384_input_match_official_formulas():
    # the official `pretrained=True` factories pass qk_scale = embed_dim ** -0.5; that path must match too
    m = randomized('t2t_vit_t_14', img_size=384, qk_scale=384 ** -0.5)
    x = torch.randn(1, 3, 384, 384)
    with torch.no_grad():
        ref = t2t_vit_forward(x, m.state_dict(), 'transformer', 6, qk_scale=384 ** -0.5)
        assert (m(x) - ref).abs().max() <= 2e-4


def test_position_table_equals_official_numpy_table():
    from t2t_vit_lite.backbone import get_sinusoid_encoding
    for n, d in [(197, 384), (577, 256), (197, 448)]:
        assert torch.equal(get_sinusoid_encoding(n, d), sinusoid_table(n, d))   # bit for bit
    assert torch.equal(T.create_model('t2t_vit_7').pos_embed.detach(), get_sinusoid_encoding(197, 256))


def test_reference_is_sensitive():
    "The reference must notice a wrong detail: a T2T layer scaled by 64 ** -0.5 instead of its input width."
    m = randomized('t2t_vit_t_14')
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        m.tokens_to_token.attention1.attn.qkv.weight.mul_(20)   # a peaked attention, where the scale matters
        good = m(x)
        m.tokens_to_token.attention1.attn.scale = 64 ** -0.5
        bad = m(x)
        ref = t2t_vit_forward(x, m.state_dict(), 'transformer', 6)
    assert (good - ref).abs().max() <= 2e-4 < (bad - ref).abs().max()
