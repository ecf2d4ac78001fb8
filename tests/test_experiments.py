"""Chapter 12's sweep: the CLI, the committed results, and (slow) the full sweep reproduced."""
import json, subprocess, sys, pathlib
import pytest
from t2t_vit_lite import experiments as E


def test_cli_reduced_sweep_writes_csv_json_and_figure(tmp_path):
    r = subprocess.run([sys.executable, '-m', 't2t_vit_lite.experiments', '--out', str(tmp_path), '--arms', 'patch', 'conv',
                        '--sizes', '60', '--seeds', '3', '--steps', '3'], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = E.read_rows(tmp_path / 'ablations.csv')
    assert [(x['arm'], x['n_train'], x['seed'], x['steps']) for x in rows] == [('patch', 60, 3, 3), ('conv', 60, 3, 3)]
    info = json.loads((tmp_path / 'ablations.json').read_text())
    assert info['runs'] == 2 and info['recipe']['steps'] == 3 and 'cores' in info['machine']
    assert (tmp_path / 'ablations.png').stat().st_size > 1000


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path):
    for bad in (['--arms', 'vit'], ['--sizes', '3'], ['--steps', '0']):
        r = subprocess.run([sys.executable, '-m', 't2t_vit_lite.experiments', '--out', str(tmp_path), *bad], capture_output=True, text=True)
        assert r.returncode == 2 and 'Traceback' not in r.stderr and r.stderr.strip().splitlines()[-1].startswith('t2t-experiments: error:'), r.stderr


def test_committed_results_match_their_description():
    rows, info = E.read_rows(E.RESULTS_DIR / 'ablations.csv'), json.loads((E.RESULTS_DIR / 'ablations.json').read_text())
    assert len(rows) == info['runs'] >= len(E.ARMS) * len(E.SIZES)          # at least one seed of everything
    assert {r['arm'] for r in rows} == set(E.ARMS) and {r['n_train'] for r in rows} == set(E.SIZES)
    assert {r['steps'] for r in rows} == {E.RECIPE['steps']} == {info['recipe']['steps']}
    keys = [(r['arm'], r['n_train'], r['seed']) for r in rows]
    assert len(keys) == len(set(keys))
    for r in rows: assert r['params'] == sum(p.numel() for p in E.arm_model(r['arm']).parameters())


@pytest.mark.slow
def test_full_sweep_reproduces_the_committed_means(tmp_path):
    E.main(['--out', str(tmp_path)])
    ours, committed = E.summarize(E.read_rows(tmp_path / 'ablations.csv')), E.summarize(E.read_rows(E.RESULTS_DIR / 'ablations.csv'))
    assert len(ours) == len(E.ARMS) * len(E.SIZES)
    for k in committed: assert abs(ours[k][0] - committed[k][0]) <= max(3., 2 * committed[k][1]), k
