"Chapter 13's committed context table: parseable, sourced, its T2T-ViT rows the published ones."
import csv
import pathlib

import t2t_vit_lite

CSV = pathlib.Path(t2t_vit_lite.__file__).parent / 'results' / 'context.csv'
# top-1 (%), params (M), MACs (G): yitu-opensource/T2T-ViT README.md @ e362efb, section 2
OFFICIAL = {'t2t_vit_7': (71.7, 4.3, 1.1), 't2t_vit_10': (75.2, 5.9, 1.5),
            't2t_vit_12': (76.5, 6.9, 1.8), 't2t_vit_14': (81.5, 21.5, 4.8),
            't2t_vit_19': (81.9, 39.2, 8.5), 't2t_vit_24': (82.3, 64.1, 13.8),
            't2t_vit_t_14': (81.7, 21.5, 6.1), 't2t_vit_t_19': (82.4, 39.2, 9.8),
            't2t_vit_t_24': (82.6, 64.1, 15.0)}

def rows():
    with open(CSV) as f: return list(csv.DictReader(f))

def test_every_row_is_sourced_and_complete():
    rs = rows()
    assert len({r['name'] for r in rs}) == len(rs)
    for r in rs:
        assert r['source'].strip(), r['name']
        for k in ('params_m', 'gmacs', 'top1'): assert 0 < float(r[k]), (r['name'], k)
        assert int(r['img_size']) in (224, 256) and 2015 <= int(r['year']) <= 2026
        if r['model'].startswith('timm:'): assert 'results/results-imagenet.csv' in r['source']

def test_t2t_rows_are_the_official_ones():
    got = {r['model']: (float(r['top1']), float(r['params_m']), float(r['gmacs']))
           for r in rows() if r['family'] == 'T2T-ViT'}
    assert got == OFFICIAL

def test_csv_ships_as_package_data():
    ini = (pathlib.Path(__file__).parents[1] / 'settings.ini').read_text()
    line = next(l for l in ini.splitlines() if l.startswith('package_data'))
    assert 'results/context.csv' in line.split()
