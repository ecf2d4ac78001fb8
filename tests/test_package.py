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
