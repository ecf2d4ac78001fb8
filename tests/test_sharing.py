"""Sharing the timm way (chapter 21): `save_for_hf` folders load back as `local-dir:` and, from a filled
Hugging Face cache while offline, as `hf-hub:`, with the architecture, the weights and the class names;
`file` overlays still go through chapter 15's loader. No network: the Hub is a local cache."""
import argparse, json, os, subprocess, sys, textwrap
from pathlib import Path
import pytest, torch, timm
import torch.nn.functional as F
from timm.models import save_for_hf
import t2t_vit_lite as T
from t2t_vit_lite.checkpoints import to_mmpretrain, CheckpointError
from t2t_vit_lite.sharing import to_hub_cache

LABELS = ['circle', 'square', 'star']


def logits(model, x):
    with torch.no_grad(): return model.eval()(x)


def shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def finetuned(steps=2):
    "The shipped digits model with a new 3-class head and every weight moved by `steps` SGD steps."
    m = T.demo_model('t2t'); m.reset_classifier(len(LABELS)); m.train()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, 32, 32, generator=g), torch.arange(8) % len(LABELS)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    for _ in range(steps):
        loss = F.cross_entropy(m(x), y); opt.zero_grad(); loss.backward(); opt.step()
    m.pretrained_cfg = {**m.pretrained_cfg, 'num_classes': len(LABELS), 'label_names': LABELS}
    return m.eval()


@pytest.fixture(scope='module')
def shared(tmp_path_factory):
    "(fine-tuned model, its save_for_hf folder, an input batch)"
    model, folder = finetuned(), tmp_path_factory.mktemp('share') / 'model'
    save_for_hf(model, folder, safe_serialization='both')
    return model, folder, torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def folder_with(src:Path, dst:Path, state_dict:dict) -> Path:
    "A copy of `src`'s config.json with `state_dict` as its only weights file."
    dst.mkdir(); (dst / 'config.json').write_text((src / 'config.json').read_text())
    torch.save(state_dict, dst / 'pytorch_model.bin')
    return dst


@pytest.mark.parametrize('kind', ['t2t', 'patch'])
def test_demo_model_rebuilds_from_local_dir(tmp_path, kind):
    m = T.demo_model(kind)
    save_for_hf(m, tmp_path)
    args = json.loads((tmp_path / 'config.json').read_text())['model_args']
    meta = T.reference.reference_metadata(kind)['model_kwargs']
    assert {'tokens_type', 'embed_dim', 'depth', 'schedule'} <= set(meta)
    for k in set(meta) - {'img_size'}:                              # the architecture, not only in_chans..img_size
        assert args[k] == meta[k], (k, args[k], meta[k])
    assert args['img_size'] == [meta['img_size']] * 2
    back = timm.create_model(f'local-dir:{tmp_path}', pretrained=True)
    x = torch.randn(2, 3, 32, 32)
    assert type(back) is T.T2TViT and shapes(back) == shapes(m)
    assert torch.equal(logits(back, x), logits(m, x))
    assert back.pretrained_cfg['label_names'] == m.pretrained_cfg['label_names']


def test_finetuned_roundtrip_with_label_names(shared):
    model, folder, x = shared
    shipped = T.demo_model('t2t')
    assert not torch.equal(model.blocks[0].mlp.fc1.weight, shipped.blocks[0].mlp.fc1.weight)   # really moved
    cfg = json.loads((folder / 'config.json').read_text())
    assert cfg['pretrained_cfg']['label_names'] == LABELS and cfg['model_args']['num_classes'] == 3
    back = timm.create_model(f'local-dir:{folder}', pretrained=True)
    assert back.num_classes == 3 and back.pretrained_cfg['label_names'] == LABELS
    assert torch.equal(logits(back, x), logits(model, x))
    assert timm.data.resolve_model_data_config(back)['input_size'] == (3, 32, 32)


HUB = textwrap.dedent('''
    import sys, torch, timm, t2t_vit_lite
    from huggingface_hub import constants
    assert constants.is_offline_mode(), 'HF_HUB_OFFLINE is not in effect'
    m = timm.create_model('hf-hub:{repo}', pretrained=True).eval()
    x = torch.load(sys.argv[1])
    with torch.no_grad(): torch.save(m(x), sys.argv[2])
    print('labels', m.pretrained_cfg['label_names'], type(m).__name__)
''')


def test_hf_hub_offline_from_filled_cache(shared, tmp_path):
    model, folder, x = shared
    home = tmp_path / 'hf_home'
    snapshot = to_hub_cache(folder, 'me/t2t-shapes', home / 'hub')
    assert (home / 'hub' / 'models--me--t2t-shapes' / 'refs' / 'main').read_text() == snapshot.name
    torch.save(x, tmp_path / 'x.pt')
    env = dict(os.environ, HF_HUB_OFFLINE='1', HF_HOME=str(home), OMP_NUM_THREADS='1')
    r = subprocess.run([sys.executable, '-c', HUB.format(repo='me/t2t-shapes'), str(tmp_path / 'x.pt'),
                        str(tmp_path / 'y.pt')], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"labels {LABELS} T2TViT" in r.stdout
    assert torch.equal(torch.load(tmp_path / 'y.pt'), logits(model, x))
    r = subprocess.run([sys.executable, '-c', HUB.format(repo='me/not-cached'), 'x', 'y'],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode != 0 and 'LocalEntryNotFoundError' in r.stderr      # offline: nothing fetched


def test_hf_hub_cache_dir_argument(shared, tmp_path, monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    model, folder, x = shared
    to_hub_cache(folder, 'me/t2t-shapes', tmp_path)
    back = timm.create_model('hf-hub:me/t2t-shapes', pretrained=True, cache_dir=tmp_path)
    assert torch.equal(logits(back, x), logits(model, x))


def test_other_key_layouts_in_a_folder(shared, tmp_path):
    model, folder, x = shared
    sd = model.state_dict()
    for name, layout in (('mmpretrain', to_mmpretrain(sd)), ('ddp', {'module.' + k: v for k, v in sd.items()})):
        back = timm.create_model(f'local-dir:{folder_with(folder, tmp_path / name, layout)}', pretrained=True)
        assert torch.equal(logits(back, x), logits(model, x)), name


def test_unusable_weights_in_a_folder_are_refused(shared, tmp_path):
    model, folder, _ = shared
    nan = {k: v.clone() for k, v in model.state_dict().items()}; nan['head.bias'][0] = float('nan')
    with pytest.raises(CheckpointError, match='NaN/infinite'):
        timm.create_model(f"local-dir:{folder_with(folder, tmp_path / 'nan', nan)}", pretrained=True)
    ints = dict(model.state_dict(), **{'head.weight': torch.ones(3, 128, dtype=torch.int64)})
    with pytest.raises(CheckpointError, match=r'no floating-point type.*head\.weight \(int64\)'):
        timm.create_model(f"local-dir:{folder_with(folder, tmp_path / 'int', ints)}", pretrained=True)


def test_local_dir_with_other_classes_size_and_features(shared):
    model, folder, x = shared
    with pytest.warns(UserWarning, match='head is not loaded'):
        five = timm.create_model(f'local-dir:{folder}', pretrained=True, num_classes=5).eval()
    assert five.head.out_features == 5
    with torch.no_grad(): assert torch.equal(five.forward_features(x), model.forward_features(x))
    big = timm.create_model(f'local-dir:{folder}', pretrained=True, img_size=64)
    assert big.pos_embed.shape[1] > model.pos_embed.shape[1]           # resampled by chapter 15's filter
    assert torch.equal(big.blocks[0].attn.qkv.weight, model.blocks[0].attn.qkv.weight)
    feats = timm.create_model(f'local-dir:{folder}', pretrained=True, features_only=True,
                              out_indices=1).eval()
    with torch.no_grad():
        assert torch.equal(feats(x)[0], model.forward_intermediates(x, indices=1, intermediates_only=True)[0])


def test_push_to_hf_hub_up_to_the_upload(shared, tmp_path, monkeypatch):
    model, _, x = shared
    sent = tmp_path / 'uploaded'

    class OfflineApi:   # stands for huggingface_hub.HfApi: records what would be uploaded
        def __init__(self, **kwargs): pass
        def create_repo(self, repo_id, **kwargs): return argparse.Namespace(repo_id=repo_id)
        def file_exists(self, **kwargs): return False
        def upload_folder(self, repo_id, folder_path, **kwargs):
            import shutil; shutil.copytree(folder_path, sent); return repo_id
    monkeypatch.setattr(timm.models._hub, 'HfApi', OfflineApi)
    assert timm.models.push_to_hf_hub(model, 'me/t2t-shapes', safe_serialization=True) == 'me/t2t-shapes'
    assert {'config.json', 'model.safetensors', 'README.md'} <= {p.name for p in sent.iterdir()}
    back = timm.create_model(f'local-dir:{sent}', pretrained=True)
    assert torch.equal(logits(back, x), logits(model, x)) and back.pretrained_cfg['label_names'] == LABELS


def test_to_hub_cache_refuses_what_cannot_work(shared, tmp_path):
    _, folder, _ = shared
    with pytest.raises(FileNotFoundError, match='no config.json'): to_hub_cache(tmp_path, 'me/x', tmp_path)
    with pytest.raises(ValueError, match="'ORG/NAME'"): to_hub_cache(folder, 'me/x/y', tmp_path)


def test_no_source_names_every_way_to_load():
    with pytest.raises(ValueError, match=r"pretrained_cfg_overlay=dict\(file=.*'local-dir:FOLDER'"):
        timm.create_model('t2t_vit_7', pretrained=True)


def test_file_overlay_official_and_own_layouts(tmp_path):
    "Regression guard for the `file` source: chapter 15's loader, EMA weights first, our .safetensors."
    kw = dict(img_size=32, num_classes=3, embed_dim=32, depth=1, num_heads=2, token_dim=16)
    ema, raw = T.create_model('t2t_vit_7', **kw), T.create_model('t2t_vit_7', **kw)
    official = tmp_path / '71.7_T2T_ViT_7.pth.tar'
    torch.save({'state_dict': raw.state_dict(), 'state_dict_ema': ema.state_dict(),
                'args': argparse.Namespace(model='t2t_vit_7'), 'epoch': 309}, official)
    own = T.save_checkpoint(ema, tmp_path / 'own.safetensors')
    x = torch.randn(2, 3, 32, 32)
    for file in (official, own):
        back = timm.create_model('t2t_vit_7', pretrained=True, pretrained_cfg_overlay=dict(file=str(file)), **kw)
        assert torch.equal(logits(back, x), logits(ema, x)), file.name
