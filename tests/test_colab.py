"""Every chapter runs the way Colab runs it: the package installed without its dev extras, plus what Colab's
Python kernel brings and what the chapter's own install cell adds, with the notebook outside the checkout.

Two checks. For every chapter, each module its code imports (and each optional module it looks up by name)
must come from one of those three sources: a chapter that needs `onnx` must install it in its install cell.
And two chapters run top to bottom in such an environment: a venv whose site-packages holds only those
distributions (linked from this venv, so nothing is downloaded), with the notebook copied to an empty folder.
"""
import configparser, importlib.metadata as md, json, os, pathlib, re, shutil, subprocess, sys
import pytest
from packaging.requirements import Requirement

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / 'nbs').glob('[0-9][0-9]_*.ipynb')) + [ROOT / 'nbs' / 'index.ipynb']
# what a Colab notebook has before any install cell runs and the chapters rely on: its kernel (IPython, ipykernel)
COLAB_KERNEL = ('ipython', 'ipykernel')


def _name(dist: str) -> str:
    return re.sub(r'[-_.]+', '-', dist).lower()


def closure(names) -> set:
    "The distributions `names` pull in when pip installs them (their requirements, recursively, no extras)."
    seen, todo = set(), [_name(n) for n in names]
    while todo:
        n = todo.pop()
        if n in seen: continue
        try: dist = md.distribution(n)
        except md.PackageNotFoundError: continue                  # not installed here: cannot be linked either
        seen.add(n)
        for r in dist.requires or []:
            req = Requirement(r)
            if req.marker is None or req.marker.evaluate({'extra': ''}): todo.append(_name(req.name))
    return seen


def base_requirements() -> list:
    cfg = configparser.ConfigParser(); cfg.read(ROOT / 'settings.ini')
    return [Requirement(r).name for r in cfg['DEFAULT']['requirements'].split()]


def code_of(nb) -> list:
    return [''.join(c['source']) for c in json.load(open(nb))['cells'] if c['cell_type'] == 'code']


def install_cell_packages(nb) -> list:
    "The packages the chapter's Colab install cell installs besides the book's own package."
    cell = next((s for s in code_of(nb) if 'Colab only' in s), '')
    return re.findall(r"'([A-Za-z][\w.-]*)'", cell.split("'install'", 1)[-1])   # '-q' and the git URL do not match


def imported_modules(nb) -> set:
    "Top-level modules the chapter imports, or looks up by name (find_spec / import_module), outside the stdlib."
    src = '\n'.join(code_of(nb))
    mods = set(re.findall(r'^\s*(?:from|import)\s+([A-Za-z_]\w*)', src, re.M))
    mods |= set(re.findall(r"(?:find_spec|import_module)\(\s*'([A-Za-z_]\w*)", src))
    for m in re.findall(r'^#\|\s*default_exp\s+(\w+)', src, re.M):   # the module it exports looks up its own
        py = (ROOT / 't2t_vit_lite' / f'{m}.py').read_text()
        mods |= set(re.findall(r"find_spec\(\s*'([A-Za-z_]\w*)", py))
        mods |= {x for group in re.findall(r"for m in \(([^)]*)\) if importlib\.util\.find_spec", py)
                 for x in re.findall(r"'(\w+)'", group)}
    return {m for m in mods if not m.startswith('_')} - set(sys.stdlib_module_names) - {'t2t_vit_lite'}   # _x: made at run time


def allowed_for(nb) -> set:
    return closure(base_requirements() + list(COLAB_KERNEL) + install_cell_packages(nb))


@pytest.mark.parametrize('nb', CHAPTERS, ids=lambda p: p.stem)
def test_chapter_needs_only_the_package_colab_and_its_install_cell(nb):
    owners = md.packages_distributions()
    allowed = allowed_for(nb)
    missing = {m: owners.get(m, [m]) for m in imported_modules(nb)
               if not any(_name(d) in allowed for d in owners.get(m, [m]))}
    assert missing == {}, (f'{nb.name} imports {sorted(missing)} (from {sorted({d for v in missing.values() for d in v})}), '
                           f'which neither the package, Colab nor its install cell provides: add them to the install cell')


def test_the_check_sees_a_missing_install():
    "The rule above would have caught the chapter that imported onnx without installing it."
    nb = ROOT / 'nbs' / '20_export.ipynb'
    assert {'onnx', 'onnxruntime'} <= imported_modules(nb)
    assert {'onnx', 'onnxscript', 'onnxruntime'} <= set(install_cell_packages(nb))
    assert 'onnx' not in closure(base_requirements() + list(COLAB_KERNEL))   # without its install cell: missing


def colab_like_venv(path: pathlib.Path, dists: set) -> pathlib.Path:
    "A venv at `path` whose site-packages links only the files of `dists` from this environment."
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(path)], check=True)
    site = next(path.glob('lib/python*/site-packages'))
    ours = pathlib.Path(md.distribution('torch').locate_file(''))     # this venv's site-packages
    for d in dists:
        dist = md.distribution(d)
        base = pathlib.Path(dist.locate_file(''))
        if base != ours: continue                                   # an editable checkout (the package: copied in by the test)
        for t in {pathlib.Path(f).parts[0] for f in dist.files or [] if not str(f).startswith('..')}:
            if not (site / t).exists() and (base / t).exists(): (site / t).symlink_to(base / t)
    return path / 'bin' / 'python'


@pytest.mark.parametrize('chapter', ['01_soft_split', '20_export'])
def test_chapter_runs_outside_the_checkout_with_only_colab_packages(chapter, tmp_path):
    nb = ROOT / 'nbs' / f'{chapter}.ipynb'
    dists = allowed_for(nb) - {'t2t-vit-lite'}
    py = colab_like_venv(tmp_path / 'venv', dists)
    # the package itself as pip would install it from git: a copy of the library, not the checkout's folder
    site = next((tmp_path / 'venv').glob('lib/python*/site-packages'))
    shutil.copytree(ROOT / 't2t_vit_lite', site / 't2t_vit_lite', ignore=shutil.ignore_patterns('__pycache__'))
    work = tmp_path / 'colab'; work.mkdir()
    shutil.copy(nb, work)
    for dev in ('nbdev', 'selenium', 'pytest'):                       # dev extras are really absent
        r = subprocess.run([str(py), '-c', f'import {dev}'], capture_output=True)
        assert r.returncode != 0, f'{dev} is importable in the Colab-like venv'
    kernels = tmp_path / 'share' / 'jupyter' / 'kernels' / 'colab'; kernels.mkdir(parents=True)
    (kernels / 'kernel.json').write_text(json.dumps(dict(argv=[str(py), '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
                                                         display_name='colab-like', language='python')))
    env = dict(os.environ, JUPYTER_PATH=str(tmp_path / 'share' / 'jupyter'), OMP_NUM_THREADS='1', PYTHONPATH='')
    run = (f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r}); import execute_chapters as X;"   # the notebook test's runner,
           f"_, _, nb, err = X.execute({str(work / nb.name)!r}, 600, X.skip_flags(), kernel='colab');"     # in the Colab-like kernel
           f"print(err or 'ran')")
    r = subprocess.run([sys.executable, '-c', run], env=env, cwd=work, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0 and r.stdout.strip().endswith('ran'), f'{chapter} failed as Colab runs it:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}'
