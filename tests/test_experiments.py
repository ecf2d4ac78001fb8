"""Chapter 10's sweep: the CLI (resumable, two processes), the committed pilot and sweep, the verdicts."""
import json, subprocess, sys
import pytest
import torch
from t2t_vit_lite import experiments as E

CLI = [sys.executable, '-m', 't2t_vit_lite.experiments']


def test_cli_reduced_sweep_two_processes_then_resumes(tmp_path):
    args = ['--out', str(tmp_path), '--arms', 'patch', 'conv', '--sizes', '40', '--seeds', '3', '4',
            '--steps', '3', '--no-digits', '--no-progress']
    r = subprocess.run(CLI + args + ['--jobs', '2'], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = E.read_rows(tmp_path / 'ablations.csv')
    assert sorted((x['arm'], x['seed'], x['n_train'], x['steps']) for x in rows) == \
        [('conv', 3, 40, 3), ('conv', 4, 40, 3), ('patch', 3, 40, 3), ('patch', 4, 40, 3)]
    info = json.loads((tmp_path / 'ablations.json').read_text())
    assert (info['planned'], info['done'], info['jobs']) == (4, 4, 2) and 'cores' in info['machine']
    labels = E.read_labels(tmp_path / 'ablations.csv')
    for x in rows:   # the predictions in the CSV give back its top-1
        acc = 100 * float((E.decode_preds(x['test_pred']) == labels[('glyphs', x['seed'])]).float().mean())
        assert abs(acc - x['test_top1']) < 1e-2
    before = (tmp_path / 'ablations.csv').read_text()
    r = subprocess.run(CLI + args, capture_output=True, text=True)   # again: nothing is trained
    assert r.returncode == 0 and (tmp_path / 'ablations.csv').read_text() == before, r.stderr[-2000:]


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path):
    for bad in (['--arms', 'vit'], ['--sizes', '3'], ['--steps', '0'], ['--jobs', '0']):
        r = subprocess.run(CLI + ['--out', str(tmp_path), *bad], capture_output=True, text=True)
        last = r.stderr.strip().splitlines()[-1]
        assert r.returncode == 2 and 'Traceback' not in r.stderr and last.startswith('t2t-experiments: error:')


def _rows(arm, diffs, fail=(), n=300):
    """Rows of `arm` on seeds 0.. with `diffs[s]` points more right than half of n images."""
    out, labels = [], {}
    for s, d in enumerate(diffs):
        y = torch.arange(n) % 10; labels[('glyphs', s)] = y
        right = torch.arange(n) < n // 2 + round(d * n / 100)
        out.append(dict(dataset='glyphs', arm=arm, seed=s, n_train=64, converged=s not in fail,
                        test_top1=100 * float(right.float().mean()),
                        test_pred=E.encode_preds(torch.where(right, y, (y + 1) % 10))))
    return out, labels


def test_verdict_table_on_synthetic_rows():
    a, labels = _rows('t2t_transformer', [3., 4., 5., 4., 4.])
    b, _ = _rows('patch', [0.] * 5)
    c, _ = _rows('conv', [0., .3, 0., .3, .3], fail={1})
    pairs = [('t2t_transformer', 'patch', ''), ('conv', 'patch', ''), ('patch', 't2t_transformer', '')]
    t = E.verdict_table(a + b + c, labels, pairs=pairs, digit_pairs=())
    assert [x['verdict'] for x in t] == ['supports', 'equivalent', 'contradicts']
    assert abs(t[0]['mean'] - 4.) < 1e-4 and (t[0]['only_a'], t[0]['only_b'], t[0]['images']) == (60, 0, 1500)
    assert t[1]['seeds'] == [0, 2, 3, 4] and t[1]['failed'] == ['conv seed 1']   # the failure is left out
    lo, hi = t[0]['ci']; assert 0 < lo < 4 < hi


def test_committed_pilot_fixes_the_recipe():
    pilot = E.read_rows(E.RESULTS_DIR / 'ablations_pilot.csv')
    now = E.this_recipe(pilot)                                   # the round whose recipe RECIPE holds
    assert {r['arm'] for r in now} == set(E.ARMS) and {r['seed'] for r in now} == set(E.PILOT_SEEDS)
    assert not set(E.PILOT_SEEDS) & set(E.SEEDS) and max(r['steps'] for r in pilot) == E.RECIPE['steps']
    assert E.choose_lr([r for r in pilot if r['n_train'] == max(E.SIZES)]) == E.LR
    chosen = [r for r in now if r['lr'] == E.LR[r['arm']]]     # the pilot met its own rule before the sweep
    assert len(chosen) == len(E.ARMS) * len(E.PILOT_SEEDS) and all(r['converged'] for r in chosen)


def test_choose_lr_takes_the_rate_whose_worst_seed_fits_best():
    "One collapsed seed rules a rate out, however well the other seed fit (synthetic pilot rows)."
    row = lambda arm, lr, seed, top1: dict(arm=arm, lr=lr, seed=seed, train_top1=top1, final_loss=0.5,
                                           **{k: E.RECIPE[k] for k in ('steps', 'warmup_frac', 'beta2')})
    rows = [row('patch', 2e-3, 100, 100.), row('patch', 2e-3, 101, 10.), row('patch', 1e-3, 100, 98.5),
            row('patch', 1e-3, 101, 99.)]
    assert E.choose_lr(rows) == {'patch': 1e-3}
    assert E.choose_lr(rows[:2] + [dict(rows[2], beta2=0.999)]) == {'patch': 2e-3}   # another recipe is ignored


@pytest.mark.parametrize('name', ['ablations_round1.csv', 'ablations.csv'])
def test_committed_sweep_rows_recompute(name):
    "Each committed row's cost is its arm's, its flag follows the rule, its top-1 comes back from its predictions."
    if not (E.RESULTS_DIR / name).exists(): pytest.skip(f'{name} is not committed (no sweep at the current recipe yet)')
    rows, labels = E.read_rows(E.RESULTS_DIR / name), E.read_labels(E.RESULTS_DIR / name)
    keys = [E.run_key(r) for r in rows]
    assert rows and len(keys) == len(set(keys))
    if name == 'ablations.csv':                                 # the sweep: only runs that the plan holds
        assert set(keys) <= {E.run_key(s) for s in E.sweep_specs()}
    for r in rows:
        assert (r['params'], r['macs']) == E.arm_cost(r['arm'], len(E.DATASETS[r['dataset']]))
        assert r['converged'] == (r['train_top1'] >= E.CONVERGED)
        acc = 100 * float((E.decode_preds(r['test_pred']) == labels[(r['dataset'], r['seed'])]).float().mean())
        assert abs(acc - r['test_top1']) < 1e-2


@pytest.mark.slow
def test_one_seed_of_the_sweep_reproduces_the_committed_rows(tmp_path):
    E.main(['--out', str(tmp_path), '--seeds', '0', '--jobs', '2', '--no-progress'])
    ours = {E.run_key(r): r for r in E.read_rows(tmp_path / 'ablations.csv')}
    for r in E.read_rows(E.RESULTS_DIR / 'ablations.csv'):
        if E.run_key(r) in ours: assert abs(ours[E.run_key(r)]['test_top1'] - r['test_top1']) <= 0.5
