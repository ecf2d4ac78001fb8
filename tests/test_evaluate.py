"""t2t-eval under torchrun: the shards cover every image exactly once, and top-1/top-5 are the known answers."""
import json, subprocess, sys
import torch
from PIL import Image
from helpers import ENV


def colour_folder(root, per_class):
    "Class c: solid images of red level c/9 (a different count per class, 41 images in all)."
    for c, n in enumerate(per_class):
        d = root / 'val' / f'class{c}'; d.mkdir(parents=True)
        for i in range(n): Image.new('RGB', (40, 40), (round(255 * c / 9), 128, 64)).save(d / f'{i}.png')
    return root


def biased_checkpoint(path):
    "A t2t_vit_7 whose head ignores the image and ranks classes 3, 7, 1, 5, 0 first: predictions known in advance."
    import t2t_vit_lite as T
    m = T.create_model('t2t_vit_7', num_classes=10, img_size=32)
    with torch.no_grad():
        m.head.weight.zero_(); m.head.bias.copy_(torch.tensor([6., 8., 0, 10, 0, 7, 0, 9, 0, 0]))
    return T.save_checkpoint(m, path)


def test_torchrun_eval_counts_every_image_once(tmp_path):
    per_class = [5, 4, 4, 7, 4, 4, 4, 3, 3, 3]           # 41 images: not divisible by 2 ranks
    root = colour_folder(tmp_path / 'data', per_class)
    ck = biased_checkpoint(tmp_path / 'biased.safetensors')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', '--master_port=29591', '-m', 't2t_vit_lite.evaluate',
           '--model', 't2t_vit_7', '--img-size', '32', '--checkpoint', str(ck), '--data', str(root), '--workers', '0', '-b', '4', '--json']
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads([l for l in r.stdout.splitlines() if l.startswith('{')][-1])
    assert res['images'] == 41 and res['world_size'] == 2
    assert abs(res['top1'] - 100 * 7 / 41) < 1e-9                  # only class 3 is right
    assert abs(res['top5'] - 100 * (7 + 3 + 4 + 4 + 5) / 41) < 1e-9   # classes 3, 7, 1, 5, 0 are in the top 5


def test_own_safetensors_export_of_a_demo_sized_model_is_evaluated_without_flags(tmp_path):
    """`save_checkpoint` of a demo-sized T2T-ViT (embed_dim 128, depth 4, a 32-pixel schedule): t2t-eval rebuilds the
    model from the file's metadata alone (no --model, no --img-size) and scores it exactly as the model in memory.
    Hidden files and folders in the data folder are ignored."""
    import t2t_vit_lite as T
    from t2t_vit_lite.data import SafeImageFolder, collate_skip, eval_transform
    from t2t_vit_lite.runtime import evaluate
    per_class = [3, 2, 4, 3, 2, 3, 2, 3, 2, 2]
    root = colour_folder(tmp_path / 'data', per_class)
    (root / 'val' / '.ipynb_checkpoints').mkdir(); (root / 'val' / 'class0' / '.hidden.png').write_bytes(b'not an image')
    torch.manual_seed(0)
    m = T.create_model('t2t_vit_7', img_size=32, num_classes=10, embed_dim=128, depth=4, num_heads=4, mlp_ratio=2., token_dim=32,
                       schedule=((3, 2, 1), (3, 2, 1), (3, 1, 1))).eval()
    ck = T.save_checkpoint(m, tmp_path / 'demo.safetensors', class_names=[f'class{c}' for c in range(10)])
    cmd = [sys.executable, '-m', 't2t_vit_lite.evaluate', '--checkpoint', str(ck), '--data', str(root), '--workers', '0', '--json']
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    ds = SafeImageFolder(root / 'val', transform=eval_transform(32))
    ref = evaluate(m, torch.utils.data.DataLoader(ds, batch_size=7, collate_fn=collate_skip), progress=False)
    assert res['images'] == sum(per_class) == ref['images'] and res['img_size'] == 32
    assert abs(res['top1'] - ref['top1']) < 1e-9 and abs(res['loss'] - ref['loss']) < 1e-5, (res, ref)
