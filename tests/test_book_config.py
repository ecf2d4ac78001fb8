"""The book's execution: each chapter runs once (tests/execute_chapters.py fills the book's cache), and a chapter
that raises fails the book build whatever the flags (_config.yml)."""
import json, pathlib, shutil, subprocess, sys
import nbformat
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'tests'))
import execute_chapters as X


def notebook(path, *sources):
    nb = nbformat.v4.new_notebook()
    nb.metadata.kernelspec = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    nb.cells = [nbformat.v4.new_markdown_cell('# A page')] + [nbformat.v4.new_code_cell(s) for s in sources]
    nbformat.write(nb, path)
    return path


def test_skip_rule_is_nbdevs():
    flags = {'slow', 'gpu'}
    assert X.is_skipped('#| eval: false\nimport os', flags)
    assert X.is_skipped('#| gpu\nx = 1', flags) and X.is_skipped('#|slow\nx = 1', flags)
    assert not X.is_skipped('#| export\nx = 1', flags)
    assert not X.is_skipped('x = 1\n#| gpu', flags)                 # a directive only counts at the top
    assert not X.is_skipped('#| eval: true\nx = 1', flags)


def test_executed_chapter_fills_the_cache_the_book_reads(tmp_path):
    from jupyter_cache import get_cache
    nb = notebook(tmp_path / 'ok.ipynb', "print('ran')", "#| gpu\nraise SystemExit('a gpu cell must be skipped')")
    assert X.main([str(nb), '--cache', str(tmp_path / 'cache'), '--workers', '1']) == 0
    record = get_cache(str(tmp_path / 'cache')).match_cache_notebook(nbformat.read(nb, 4))   # KeyError if missed
    _, merged = get_cache(str(tmp_path / 'cache')).merge_match_into_notebook(nbformat.read(nb, 4))
    assert record.pk >= 1 and merged.cells[1].outputs[0]['text'] == 'ran\n'
    assert merged.cells[2].outputs == []                             # skipped, not run


def test_a_raising_chapter_fails_the_test(tmp_path, capsys):
    nb = notebook(tmp_path / 'bad.ipynb', 'x = 1', '1 / 0')
    assert X.main([str(nb), '--cache', '', '--workers', '1']) == 1
    assert 'ZeroDivisionError' in capsys.readouterr().out


def test_a_raising_chapter_fails_the_book_build_without_W(tmp_path):
    # the project's own _config.yml (less the local extension), a one-page book whose page raises
    cfg = [l for l in (ROOT / '_config.yml').read_text().splitlines() if 'unique_scripts' not in l
           and 'local_extensions' not in l]
    (tmp_path / '_config.yml').write_text('\n'.join(cfg) + '\n')
    (tmp_path / '_toc.yml').write_text('format: jb-book\nroot: page\n')
    notebook(tmp_path / 'page.ipynb', '1 / 0')
    jb = shutil.which('jupyter-book', path=str(pathlib.Path(sys.executable).parent))
    if jb is None: pytest.skip('jupyter-book is not installed (make setup installs it)')
    r = subprocess.run([jb, 'build', str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert r.returncode != 0, r.stdout[-2000:]
    assert 'Executing notebook failed' in r.stdout + r.stderr


def test_toc_has_three_parts_and_chapter_numbers_follow_the_reading_order():
    "The model, the evidence, practice; chapter files numbered 01, 02, ... in the order the book shows them."
    import yaml
    toc = yaml.safe_load((ROOT / '_toc.yml').read_text())
    assert [p['caption'] for p in toc['parts']] == ['The model', 'The evidence', 'Practice']
    files = [c['file'] for p in toc['parts'] for c in p['chapters']]
    numbers = [f.split('/')[-1].split('_')[0] for f in files]
    assert numbers == [f'{i:02d}' for i in range(1, len(files) + 1)], numbers
    titles = [json.load(open(ROOT / f'{f}.ipynb'))['cells'] for f in files]
    for f, n, cells in zip(files, numbers, titles):
        first = next(''.join(c['source']) for c in cells if c['cell_type'] == 'markdown')
        assert first.startswith(f'# {n} '), f'{f}: its title does not start with "# {n} "'


def test_figure_text_is_at_least_9_points():
    "No chapter or plotting module asks for text below 9 pt (figures are shown at their size: test_browser.py)."
    import re
    small = []
    files = sorted((ROOT / 'nbs').glob('*.ipynb')) + sorted((ROOT / 't2t_vit_lite').glob('*.py'))
    for f in files:
        text = (''.join(''.join(c['source']) for c in json.load(open(f))['cells'] if c['cell_type'] == 'code')
                if f.suffix == '.ipynb' else f.read_text())
        small += [(f.name, m.group(0)) for m in re.finditer(
            r"\b(fontsize|labelsize|titlesize)\s*=\s*([0-8](\.\d+)?\b|'(xx-small|x-small|small)')", text)]
    assert small == [], f'text below 9 pt: {small}'


def test_library_lines_fit_the_page_except_what_nbdev_writes():
    """`make lint` (ruff.toml) checks the notebooks' code at 100 characters, the width the book shows. The
    library is written from those cells; only what nbdev itself generates may be longer: the `__all__` list
    (wrapped by nbdev at 120), the module docstring (the chapter's summary line) and `_modidx.py`."""
    import ast
    long = []
    for f in sorted((ROOT / 't2t_vit_lite').glob('*.py')):
        if f.name == '_modidx.py': continue
        text = f.read_text()
        tree = ast.parse(text)
        spans = [range(n.lineno, n.end_lineno + 1) for n in tree.body
                 if isinstance(n, ast.Assign) and [getattr(t, 'id', '') for t in n.targets] == ['__all__']
                 or n.lineno <= 3 and isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)]
        long += [f'{f.name}:{i}' for i, line in enumerate(text.splitlines(), 1)
                 if len(line) > 100 and not any(i in s for s in spans)]
    assert long == [], f'library lines over 100 characters that no notebook cell checks: {long[:20]}'


def test_notebook_code_and_commands_fit_the_column():
    """What the book shows in a code block fits its column without a scroll bar: code cells at 100
    characters (ruff skips a long line inside a string, and a `noqa` silences it; this does not), and the
    commands and snippets in the chapters' fenced blocks at 92 (those blocks have a wider padding)."""
    long = []
    for nb_path in sorted((ROOT / 'nbs').glob('*.ipynb')):
        for i, cell in enumerate(nbformat.read(nb_path, as_version=4).cells):
            fence = False
            for line in cell.source.splitlines():
                if cell.cell_type == 'markdown':
                    if line.lstrip().startswith('```'): fence = not fence
                    elif fence and len(line) > 92: long.append(f'{nb_path.name} cell {i}: {line[:60]}')
                elif cell.cell_type == 'code' and len(line) > 100:
                    long.append(f'{nb_path.name} cell {i}: {line[:60]}')
    assert long == [], f'lines that would run past the column: {long}'
