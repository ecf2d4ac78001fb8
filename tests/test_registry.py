"""`t2t_vit_lite.create_model` builds this package's T2TViT whatever else timm registers under the same names,
in both import orders; `timm.create_model` builds what timm's registry holds (chapter 06 documents the decision).
Each case runs in a fresh interpreter: timm's registry is process-wide."""
import os, pathlib, subprocess, sys, textwrap
import pytest

OFFICIAL = pathlib.Path(os.environ.get('T2T_OFFICIAL', '/work/official'))   # a checkout of the official repository, if any
FAKE = textwrap.dedent('''
    import sys, types, timm
    from timm.models import register_model
    mod = types.ModuleType('other_t2t'); sys.modules['other_t2t'] = mod     # another code's module, as timm's registry sees it
    def t2t_vit_14(pretrained=False, **kwargs): return types.SimpleNamespace(made_by='other t2t_vit_14')
    t2t_vit_14.__module__ = 'other_t2t'; register_model(t2t_vit_14)
''')
OFFICIAL_IMPORT = f'import sys; sys.path.insert(0, {str(OFFICIAL)!r}); import models  # the official repository registers t2t_vit_*\n'
CHECK = textwrap.dedent('''
    import timm, torch, t2t_vit_lite as T
    from timm.models._registry import _model_entrypoints
    for name in ('{name}', 't2t_vit_7', 't2t_vit_c_14'):  # ours, always, through our create_model
        m = T.create_model(name, img_size=32, embed_dim=32, depth=1, num_heads=2)
        assert type(m) is T.T2TViT, (name, type(m))
    print('timm:', _model_entrypoints['{name}'].__module__, _model_entrypoints['t2t_vit_c_14'].__module__)
''')


def run(code):
    r = subprocess.run([sys.executable, '-W', 'always::UserWarning', '-c', code], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout, r.stderr


def test_fake_registration_first():
    out, err = run(FAKE + CHECK.format(name='t2t_vit_14') + "assert timm.create_model('t2t_vit_14').made_by == 'other t2t_vit_14'\n")
    assert 'timm: other_t2t t2t_vit_lite.models' in out
    assert 'timm already registers t2t_vit_14 (from other_t2t)' in err          # we leave it alone, and say so once
    assert err.count('timm already registers') == 1


def test_fake_registration_after():
    out, err = run('import t2t_vit_lite\n' + FAKE + CHECK.format(name='t2t_vit_14'))
    assert 'timm: other_t2t t2t_vit_lite.models' in out                        # the later registration replaced ours in timm
    assert 'timm already registers' not in err


def test_no_other_registration():
    out, err = run(CHECK.format(name='t2t_vit_14') + "assert type(timm.create_model('t2t_vit_14', pretrained=False)) is T.T2TViT\n")
    assert 'timm: t2t_vit_lite.models t2t_vit_lite.models' in out and 'timm already registers' not in err


@pytest.mark.skipif(not (OFFICIAL / 'models' / 't2t_vit.py').exists(), reason=f'no official checkout at {OFFICIAL} (set T2T_OFFICIAL)')
@pytest.mark.parametrize('ours_first', [False, True])
def test_official_module_both_orders(ours_first):
    code = ('import t2t_vit_lite\n' + OFFICIAL_IMPORT) if ours_first else OFFICIAL_IMPORT
    out, err = run(code + CHECK.format(name='t2t_vit_t_14'))
    assert 'timm: models.t2t_vit t2t_vit_lite.models' in out                    # timm: the official factory; our ablations stay ours
    assert ('timm already registers' in err) != ours_first
