"""The glyph data set (chapter 07): the atlas rebuilds byte for byte where the fonts are installed, the wheel ships
it, and generation does not depend on the number of threads."""
import hashlib, pathlib, shutil, subprocess, sys, zipfile
import pytest
import torch
from t2t_vit_lite import glyphs as G

ROOT = pathlib.Path(__file__).resolve().parents[1]
FONTS = all(pathlib.Path(f[4]).exists() for f in G.FAMILIES)


@pytest.mark.skipif(not FONTS, reason='the Debian font packages are not installed (make glyph-atlas names them)')
def test_rebuilding_the_atlas_gives_the_shipped_files(tmp_path):
    G.build_atlas(out_dir=tmp_path)
    for f in (G.ATLAS_FILE, G.FAMILIES_FILE):
        assert (tmp_path / f.name).read_bytes() == f.read_bytes(), f'{f.name} differs from a rebuild: run make glyph-atlas'


def test_generation_does_not_depend_on_threads():
    digest = lambda: hashlib.sha256(G.glyph_dataset('test', 2100, seed=7)[0].numpy().tobytes()).hexdigest()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1); one = digest()
        torch.set_num_threads(2); two = digest()
    finally:
        torch.set_num_threads(threads)
    assert one == two


def test_the_wheel_ships_the_atlas(tmp_path):
    src = tmp_path / 'src'                                  # build from a copy, so the checkout gets no build/ folder
    shutil.copytree(ROOT / 't2t_vit_lite', src / 't2t_vit_lite', ignore=shutil.ignore_patterns('__pycache__'))
    for f in ('setup.py', 'settings.ini', 'pyproject.toml', 'MANIFEST.in', 'README.md', 'LICENSE'):
        if (ROOT / f).exists(): shutil.copy(ROOT / f, src / f)
    r = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', str(src),
                        '-w', str(tmp_path)], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    wheel = zipfile.ZipFile(next(tmp_path.glob('t2t_vit_lite-*.whl')))
    for f in (G.ATLAS_FILE, G.FAMILIES_FILE):
        assert wheel.read(f't2t_vit_lite/assets/{f.name}') == f.read_bytes(), f'{f.name} is not in the wheel'
