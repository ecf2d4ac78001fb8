"""Package-level checks that do not fit one chapter: the installed package exposes the chapters' modules."""
import importlib, configparser, pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_exported_notebook_has_its_module():
    "Each `#| default_exp m` notebook produced t2t_vit_lite/m.py (nbdev_export ran)."
    import json
    for nb in sorted((ROOT / 'nbs').glob('[0-9][0-9]_*.ipynb')):
        src = '\n'.join(''.join(c['source']) for c in json.load(open(nb))['cells'] if c['cell_type'] == 'code')
        for line in src.splitlines():
            if line.startswith('#| default_exp'):
                mod = line.split()[-1]
                assert importlib.import_module(f't2t_vit_lite.{mod}'), mod


def test_settings_keep_book_tags_and_colab_metadata():
    cfg = configparser.ConfigParser(); cfg.read(ROOT / 'settings.ini')
    d = cfg['DEFAULT']
    assert d['allowed_cell_metadata_keys'] == 'tags'
    assert set(d['allowed_metadata_keys'].split()) == {'accelerator', 'colab'}
    assert d['tst_flags'].split() == ['slow', 'gpu']
    assert d['cell_number'] == 'False'


def test_every_notebook_keeps_its_kernelspec_and_is_in_the_toc():
    import json
    toc = (ROOT / '_toc.yml').read_text()
    for nb in sorted((ROOT / 'nbs').glob('*.ipynb')):
        meta = json.load(open(nb))['metadata']
        assert meta.get('kernelspec', {}).get('name') == 'python3', nb.name
        assert f'nbs/{nb.stem}' in toc, f'{nb.name} is missing from _toc.yml'


def test_visualize_helpers_work_from_the_package_and_leave_matplotlib_settings_alone():
    import matplotlib
    before = dict(matplotlib.rcParams)
    import t2t_vit_lite as T
    from t2t_vit_lite import visualize as V
    from t2t_vit_lite.soft_split import sample_image, T2T_SCHEDULE
    assert dict(matplotlib.rcParams) == before
    m, img = T.create_model('t2t_vit_7'), sample_image(224)
    feats = V.collect_features(m, img)
    fig = V.plot_feature_maps(feats['attention1'])
    assert fig.axes and fig.axes[0].images[0].get_array().shape == (4 * 58, 4 * 58)   # 16 padded 56x56 maps
    fig = V.plot_attention(img, V.cls_attention_grid(V.attention_maps(m, img))[0])
    assert len(fig.axes[0].images) == 2
    assert V.plot_token_grid(img, T2T_SCHEDULE).axes[0].get_title().startswith('14 x 14 tokens')
