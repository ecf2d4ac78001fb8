"""Execute every chapter once, as the notebook test, and hand the outputs to the book.

Each notebook listed in _toc.yml runs top to bottom in a fresh kernel (nbclient), in its own folder, with
nbdev's skip rules: cells marked `#| eval: false` or with a flag from settings.ini's `tst_flags` (slow, gpu)
are not run. A cell that raises fails the test and prints its traceback. The executed notebook goes into the
book's jupyter-cache (_build/.jupyter_cache), so `jupyter-book build` renders these outputs instead of running
every chapter a second time; a chapter that is not in the cache (edited since) is executed by the book.

    python tests/execute_chapters.py [--workers 2] [--cache _build/.jupyter_cache] [NOTEBOOK ...]
"""
import argparse, configparser, copy, pathlib, sys, time, traceback
from concurrent.futures import ProcessPoolExecutor, as_completed

import nbformat
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]


def toc_notebooks() -> list:
    "The chapters in the book's order, from _toc.yml."
    toc = yaml.safe_load((ROOT / '_toc.yml').read_text())
    files = [toc['root']] + [c['file'] for part in toc.get('parts', []) for c in part['chapters']]
    return [ROOT / f'{f}.ipynb' for f in files]


def skip_flags() -> set:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / 'settings.ini')
    return set(cfg['DEFAULT'].get('tst_flags', '').split())


def is_skipped(source: str, flags: set) -> bool:
    "nbdev's rule: a `#| eval: false` directive, or a directive naming one of the skipped flags."
    for line in source.splitlines():
        if not line.startswith('#|'): break
        words = line[2:].replace(':', ' ').split()
        if not words: continue
        if words[0] == 'eval' and len(words) > 1 and words[1].lower() == 'false': return True
        if words[0] in flags: return True
    return False


def execute(path: str, timeout: int, flags: set, kernel: str = 'python3'):
    "Run one notebook in `kernel`; return (path, seconds, executed notebook or None, error text)."
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    path = pathlib.Path(path)
    nb = nbformat.read(path, as_version=4)
    run = copy.deepcopy(nb)
    skipped = [i for i, c in enumerate(run.cells) if c.cell_type == 'code' and is_skipped(c.source, flags)]
    for i in skipped: run.cells[i].source = ''                  # run as an empty cell, restored below
    t0 = time.time()
    try:
        NotebookClient(run, timeout=timeout, kernel_name=kernel, record_timing=False,
                       resources={'metadata': {'path': str(path.parent)}}).execute()
    except CellExecutionError as e:
        return str(path), time.time() - t0, None, str(e)
    except Exception:
        return str(path), time.time() - t0, None, traceback.format_exc()
    for i in skipped: run.cells[i].source, run.cells[i].outputs = nb.cells[i].source, []
    for c, c0 in zip(run.cells, nb.cells): c.metadata = c0.metadata   # the cache hashes sources and metadata
    run.metadata.kernelspec = nb.metadata.get('kernelspec', run.metadata.get('kernelspec'))
    return str(path), time.time() - t0, run, ''


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('notebooks', nargs='*', help='notebooks to run (default: every chapter in _toc.yml)')
    p.add_argument('--workers', type=int, default=2)
    p.add_argument('--timeout', type=int, default=900, help='seconds per cell, as the book allows')
    p.add_argument('--cache', default=str(ROOT / '_build' / '.jupyter_cache'),
                   help="the book's execution cache to fill ('' to fill none)")
    a = p.parse_args(argv)
    nbs = [pathlib.Path(n).resolve() for n in a.notebooks] or toc_notebooks()
    missing = [str(n) for n in nbs if not n.is_file()]
    if missing:
        print(f'no such notebook: {", ".join(missing)}', file=sys.stderr)
        return 2
    cache = None
    if a.cache:
        from jupyter_cache import get_cache
        cache = get_cache(a.cache)
    flags, failed, t0 = skip_flags(), [], time.time()
    # longest first keeps both workers busy to the end (sizes stand in for run times)
    nbs.sort(key=lambda n: -n.stat().st_size)
    with ProcessPoolExecutor(a.workers) as ex:
        futures = [ex.submit(execute, str(n), a.timeout, flags) for n in nbs]
        for f in as_completed(futures):
            path, secs, run, err = f.result()
            name = pathlib.Path(path)
            name = name.relative_to(ROOT) if name.is_relative_to(ROOT) else name
            if run is None:
                failed.append(str(name))
                print(f'FAILED {name} ({secs:.0f} s)\n{err}', flush=True)
                continue
            print(f'ok     {name} ({secs:.0f} s)', flush=True)
            if cache is not None:
                from jupyter_cache.base import CacheBundleIn
                cache.cache_notebook_bundle(CacheBundleIn(run, path), check_validity=False, overwrite=True)
    print(f'{len(nbs) - len(failed)} of {len(nbs)} chapters ran without an error in {time.time() - t0:.0f} s')
    if failed: print('failed: ' + ', '.join(failed))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
