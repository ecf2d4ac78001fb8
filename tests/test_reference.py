"""The shipped reference models (chapter 08): each file's held-out top-1 recomputed from its float16 weights equals
its metadata exactly (the glyph models on the regenerated glyph folder); the glyph models converged by the stated
rule; the wheel ships them; a regeneration (slow) reproduces the top-1 within one point."""
import json, shutil, subprocess, sys, zipfile, pathlib
import pytest
import torch
import t2t_vit_lite as T
from t2t_vit_lite import reference as R

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize('kind', list(R.KINDS))
def test_shipped_top1_equals_metadata_exactly(kind):
    meta, model = R.reference_metadata(kind), T.demo_model(kind)
    assert not model.training and model.pretrained_cfg['label_names'] == meta['class_names'] == [str(i) for i in range(10)]
    assert all(v.dtype == torch.float16 for v in R.read_checkpoint(meta['path'])['state_dict'].values())   # what is scored is what ships
    got = R.held_out_top1(model)
    assert (got['correct'], got['n']) == (int(meta['held_out_correct']), int(meta['held_out_n']))
    assert meta['held_out_top1'] == f"{got['top1']:.2f}"
    assert got['top1'] > 90, f'{kind}: a reference model should recognise digits, got {got["top1"]:.2f}%'
    assert meta['command'].startswith('t2t-train ') and f"--seed {meta['seed']}" in meta['command']
    assert json.loads(meta['command'].split("--model-kwargs '")[1].split("'")[0])['tokens_type'] == meta['model_kwargs']['tokens_type']


def test_default_demo_model_is_the_digits_t2t():
    m, ref = T.demo_model(), T.demo_model('t2t')
    assert m.pretrained_cfg['file'] == ref.pretrained_cfg['file'] == R.reference_metadata('t2t')['path']
    assert m.pretrained_cfg['label_names'] == [str(i) for i in range(10)] and m.num_classes == 10


@pytest.fixture(scope='module')
def fresh_glyphs(tmp_path_factory):
    "T2T_DATA pointing at an empty folder: the glyphs are written again from the generator."
    tmp = tmp_path_factory.mktemp('data')
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('T2T_DATA', str(tmp))
        yield tmp


@pytest.mark.parametrize('kind', list(R.GLYPH_KINDS))
def test_glyph_models_score_their_metadata_on_the_regenerated_glyphs(kind, fresh_glyphs):
    from t2t_vit_lite.glyphs import CLASSES
    meta, model = R.reference_metadata(kind), T.demo_model(kind)
    assert model.pretrained_cfg['label_names'] == meta['class_names'] == sorted(CLASSES)
    assert meta['model_kwargs']['tokens_type'] == R.KINDS[R.GLYPH_KINDS[kind]]['tokens_type']
    assert all(v.dtype == torch.float16 for v in R.read_checkpoint(meta['path'])['state_dict'].values())
    root = R.data_root(kind)
    assert root == fresh_glyphs / 'glyphs'
    got = R.held_out_top1(model, root)
    assert (got['correct'], got['n']) == (int(meta['held_out_correct']), int(meta['held_out_n'])) == (got['correct'], 2048)
    train = R.held_out_top1(model, root, split='train')
    assert f"{train['top1']:.2f}" == meta['train_top1'] and train['n'] == int(meta['train_n']) == 8192
    assert float(meta['train_top1']) >= R.CONVERGED_TOP1 and meta['converged'] == 'True', \
        f'{kind} did not converge: train top-1 {meta["train_top1"]}% < {R.CONVERGED_TOP1}%'
    assert got['top1'] > 50, f'{kind}: a glyph model should read unseen typefaces, got {got["top1"]:.2f}%'
    for key in ('command', 'date', 'machine', 'train_seconds', 'data'): assert meta[key], key
    assert '--data $T2T_DATA/glyphs' in meta['command'] and '--no-aug' in meta['command']


def test_kinds_differ_only_in_the_stem():
    for t2t, patch in (('t2t', 'patch'), ('glyphs_t2t', 'glyphs_patch')):
        a, b = (R.reference_metadata(k)['model_kwargs'] for k in (t2t, patch))
        same = ('embed_dim', 'depth', 'num_heads', 'mlp_ratio', 'img_size', 'num_classes')
        assert {k: a[k] for k in same} == {k: b[k] for k in same}
        assert (a['tokens_type'], b['tokens_type']) == ('performer', 'patch')
        assert T.demo_model(t2t).tokens_to_token.grid == T.demo_model(patch).tokens_to_token.grid == 8


def test_shipped_weights_fit_the_budget_and_a_bad_kind_is_named():
    files = sorted(R.WEIGHTS_DIR.glob('*.safetensors'))
    assert [f.stem for f in files] == sorted(R.ALL_KINDS)
    assert sum(f.stat().st_size for f in files) <= 20e6
    with pytest.raises(ValueError, match='choose one of t2t, patch, glyphs_t2t, glyphs_patch'): T.demo_model('vit')


def test_the_wheel_ships_the_weights_and_results(tmp_path):
    src = tmp_path / 'src'                                  # build from a copy, so the checkout gets no build/ folder
    shutil.copytree(ROOT / 't2t_vit_lite', src / 't2t_vit_lite', ignore=shutil.ignore_patterns('__pycache__'))
    for f in ('setup.py', 'settings.ini', 'pyproject.toml', 'MANIFEST.in', 'README.md', 'LICENSE'):
        if (ROOT / f).exists(): shutil.copy(ROOT / f, src / f)
    r = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', str(src), '-w', str(tmp_path)],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    names = zipfile.ZipFile(next(tmp_path.glob('t2t_vit_lite-*.whl'))).namelist()
    for kind in R.ALL_KINDS: assert f't2t_vit_lite/weights/{kind}.safetensors' in names
    results = sorted(f.name for f in (ROOT / 't2t_vit_lite' / 'results').iterdir() if f.is_file())
    assert {'ablations_pilot.csv', 'ablations_round1.csv', 'official_size.json', 'gpu.json', 'context.csv'} <= set(results)
    for f in results:                                        # every committed result, whatever the chapters add later
        assert f't2t_vit_lite/results/{f}' in names, f'{f} is not in the wheel: the chapters that render it would fail in Colab'


@pytest.mark.slow
@pytest.mark.parametrize('kind', list(R.ALL_KINDS))
def test_regeneration_reproduces_top1_within_one_point(kind, tmp_path):
    made = R.make_reference(kind, out_dir=tmp_path / 'weights', work=tmp_path / 'run')
    assert abs(float(made['held_out_top1']) - float(R.reference_metadata(kind)['held_out_top1'])) <= 1.0
