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
