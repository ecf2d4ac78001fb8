"""The official T2T-ViT forward pass, written out from its formulas as plain tensor operations on a state dict.

An independent reference for the parity tests: it reads only the tensors (official key names) and reproduces
the official code's semantics (yitu-opensource/T2T-ViT, models/), detail by detail:
- T2T transformer layer: single head, scale = (input width) ** -0.5, skip connection from v;
- T2T Performer layer: kqv split in the order k, q, v; phi(x) = exp(w x - |x|^2 / 2) / sqrt(m); eps 1e-8;
- re-structurization: tokens.transpose(1, 2).reshape(B, C, sqrt(L), sqrt(L));
- backbone: pre-norm blocks, scale head_dim ** -0.5 unless qk_scale, logits from the class token.
"""
import math
import numpy as np
import torch
import torch.nn.functional as F


def sinusoid_table(n_position, d_hid):
    "The official table, computed with numpy in float64 as the official code does."
    angles = np.array([[pos / np.power(10000, 2 * (j // 2) / d_hid) for j in range(d_hid)] for pos in range(n_position)])
    angles[:, 0::2], angles[:, 1::2] = np.sin(angles[:, 0::2]), np.cos(angles[:, 1::2])
    return torch.tensor(angles, dtype=torch.float32)[None]


def _ln(x, sd, p): return F.layer_norm(x, (x.shape[-1],), sd[p + '.weight'], sd[p + '.bias'], 1e-5)
def _lin(x, sd, p): return x @ sd[p + '.weight'].T + (sd[p + '.bias'] if p + '.bias' in sd else 0.)


def token_transformer(x, sd, p):
    width = x.shape[-1]
    q, k, v = _lin(_ln(x, sd, p + '.norm1'), sd, p + '.attn.qkv').chunk(3, dim=-1)
    attn = ((q * width ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
    y = v + _lin(attn @ v, sd, p + '.attn.proj')
    return y + _lin(F.gelu(_lin(_ln(y, sd, p + '.norm2'), sd, p + '.mlp.fc1')), sd, p + '.mlp.fc2')


def token_performer(x, sd, p):
    kqv = _lin(_ln(x, sd, p + '.norm1'), sd, p + '.kqv')
    emb = kqv.shape[-1] // 3
    k, q, v = kqv[..., :emb], kqv[..., emb:2 * emb], kqv[..., 2 * emb:]
    w = sd[p + '.w']
    m = w.shape[0]
    def prm(t): return torch.exp(t @ w.T - (t * t).sum(-1, keepdim=True) / 2) / math.sqrt(m)
    kp, qp = prm(k), prm(q)
    D = qp @ kp.sum(dim=1).unsqueeze(-1)                 # (B, T, 1)
    kptv = v.transpose(1, 2) @ kp                         # (B, emb, m)
    y = (qp @ kptv.transpose(1, 2)) / (D + 1e-8)
    y = v + _lin(y, sd, p + '.proj')
    return y + _lin(F.gelu(_lin(_ln(y, sd, p + '.norm2'), sd, p + '.mlp.0')), sd, p + '.mlp.2')


def _to_image(t):
    B, L, C = t.shape
    s = int(math.sqrt(L))
    return t.transpose(1, 2).reshape(B, C, s, s)


def t2t_tokens(x, sd, tokens_type):
    p = 'tokens_to_token.'
    if tokens_type == 'patch':
        return F.conv2d(x, sd[p + 'project.weight'], sd[p + 'project.bias'], stride=16).flatten(2).transpose(1, 2)
    if tokens_type == 'convolution':
        x = F.conv2d(x, sd[p + 'soft_split0.weight'], sd[p + 'soft_split0.bias'], stride=4, padding=2)
        x = F.conv2d(x, sd[p + 'soft_split1.weight'], sd[p + 'soft_split1.bias'], stride=2, padding=1)
        x = F.conv2d(x, sd[p + 'project.weight'], sd[p + 'project.bias'], stride=2, padding=1)
        return x.flatten(2).transpose(1, 2)
    layer = token_performer if tokens_type == 'performer' else token_transformer
    t = F.unfold(x, 7, stride=4, padding=2).transpose(1, 2)
    t = layer(t, sd, p + 'attention1')
    t = F.unfold(_to_image(t), 3, stride=2, padding=1).transpose(1, 2)
    t = layer(t, sd, p + 'attention2')
    t = F.unfold(_to_image(t), 3, stride=2, padding=1).transpose(1, 2)
    return _lin(t, sd, p + 'project')


def block(x, sd, p, num_heads, qk_scale=None):
    B, N, C = x.shape
    h = _ln(x, sd, p + '.norm1')
    qkv = _lin(h, sd, p + '.attn.qkv').reshape(B, N, 3, num_heads, C // num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = ((q @ k.transpose(-2, -1)) * (qk_scale or (C // num_heads) ** -0.5)).softmax(dim=-1)
    x = x + _lin((attn @ v).transpose(1, 2).reshape(B, N, C), sd, p + '.attn.proj')
    return x + _lin(F.gelu(_lin(_ln(x, sd, p + '.norm2'), sd, p + '.mlp.fc1')), sd, p + '.mlp.fc2')


def t2t_vit_forward(x, sd, tokens_type, num_heads, qk_scale=None, pre_logits=False):
    "Logits (B, num_classes) of the official T2T-ViT for the weights `sd` (official keys)."
    t = t2t_tokens(x, sd, tokens_type)
    t = torch.cat([sd['cls_token'].expand(t.shape[0], -1, -1), t], dim=1) + sd['pos_embed']
    depth = 1 + max(int(k.split('.')[1]) for k in sd if k.startswith('blocks.'))
    for i in range(depth): t = block(t, sd, f'blocks.{i}', num_heads, qk_scale)
    cls = _ln(t, sd, 'norm')[:, 0]
    return cls if pre_logits else _lin(cls, sd, 'head')
