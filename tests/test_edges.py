"""Every tool at its edges (issue 24, second round): output paths, unusable weights, data folder traps, a requeued
fine-tuning run, bad flags reported before any work, the command line recorded, and the two batch-size flags.
The tools run in this process (chapter 14's `call_cli`): exit status and output as a shell sees them."""
import json, os, shutil
import pytest
import torch
import t2t_vit_lite as T
from t2t_vit_lite import train, evaluate, export
from t2t_vit_lite.runtime import call_cli
from helpers import tiny_folder, TINY_MODEL

KW = json.loads(TINY_MODEL[-1])


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return tiny_folder(tmp_path_factory.mktemp('edges') / 'tiny')


def tiny_model(**kw):
    return T.create_model('t2t_vit_t_14', img_size=16, num_classes=4, **KW, **kw)


def t2t_train(data, out, *extra):
    return call_cli(train.main, '--data', data, '--output', out, '--workers', 0, '--no-progress', *TINY_MODEL,
                    '--epochs', 1, '--warmup-epochs', 0, *extra)


def one_line_error(r, tool, expected):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and lines and lines[-1].startswith(f'{tool}: error: ') and expected in lines[-1], r.stderr[-2000:]
    assert 'Traceback' not in r.stderr
    return lines[-1]


@pytest.fixture
def no_data(monkeypatch):
    "Building the data (or the model) fails the test: a refusal must come before them."
    def built(*a, **k): raise AssertionError('the data or the model was built before the refusal')
    monkeypatch.setattr(train, 'build_data', built); monkeypatch.setattr(train, 'build_model', built)


def listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob('*'))


# ---- output paths ----

@pytest.mark.parametrize('case', ['below_file', 'is_file', 'unwritable', 'inside_data', 'empty'])
def test_train_output_path_is_refused_before_any_work(data, tmp_path, no_data, case):
    (tmp_path / 'notes.txt').write_text('mine')
    out, expected = {'below_file': (tmp_path / 'notes.txt' / 'run', 'notes.txt is a file, not a folder'),
                     'is_file': (tmp_path / 'notes.txt', 'is a file, not a folder'),
                     'unwritable': ('/proc/t2t_run', 'cannot create files in /proc'),
                     'inside_data': (data / 'train', 'is inside the input'),
                     'empty': ('', '--output: an empty path')}[case]
    before = listing(data)
    one_line_error(t2t_train(data, out, '-b', 8), 't2t-train', expected)
    assert (tmp_path / 'notes.txt').read_text() == 'mine' and listing(data) == before


def test_overwrite_moves_only_the_run_files(data, tmp_path):
    out = tmp_path / 'run'; out.mkdir(); (out / 'notes.md').write_text('mine')
    assert t2t_train(data, out, '-b', 8, '--no-ema').returncode == 0
    r = t2t_train(data, out, '-b', 8, '--no-ema', '--overwrite')
    assert r.returncode == 0, r.stderr[-2000:]
    old = [d for d in out.iterdir() if d.name.startswith('old-')]
    assert len(old) == 1 and (old[0] / 'last.pth.tar').exists() and not (old[0] / 'notes.md').exists()
    assert (out / 'notes.md').read_text() == 'mine'


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    return T.save_checkpoint(tiny_model(), tmp_path_factory.mktemp('ck') / 'tiny.safetensors')


@pytest.mark.parametrize('case', ['exists', 'input_itself', 'folder', 'below_file', 'no_folder', 'unwritable'])
def test_export_output_path_is_refused_before_the_model_is_built(checkpoint, tmp_path, monkeypatch, case):
    monkeypatch.setattr(export, 'create_model', lambda *a, **k: pytest.fail('the model was built before the refusal'))
    (tmp_path / 'mine.pt2').write_bytes(b'mine')
    out, extra, expected = {'exists': (tmp_path / 'mine.pt2', [], 'already exists; pass --overwrite'),
                            'input_itself': (checkpoint, ['--overwrite'], 'is the input file'),
                            'folder': (tmp_path, [], 'is a folder; give a file name'),
                            'below_file': (tmp_path / 'mine.pt2' / 'm.pt2', [], 'mine.pt2 is a file, not a folder'),
                            'no_folder': (tmp_path / 'new' / 'm.pt2', [], 'the folder'),
                            'unwritable': ('/proc/m.pt2', [], 'cannot create files in /proc')}[case]
    size = checkpoint.stat().st_size
    one_line_error(call_cli(export.main, '--checkpoint', checkpoint, '--format', 'pt2', '--output', out, *extra), 't2t-export', expected)
    assert (tmp_path / 'mine.pt2').read_bytes() == b'mine' and checkpoint.stat().st_size == size
    assert sorted(p.name for p in tmp_path.iterdir()) == ['mine.pt2']


def test_export_overwrite_replaces_only_after_verifying(checkpoint, tmp_path):
    out = tmp_path / 'm.pt2'; out.write_bytes(b'old')
    r = call_cli(export.main, '--checkpoint', checkpoint, '--format', 'pt2', '--output', out, '--overwrite')
    assert r.returncode == 0 and 'verified' in r.stdout, r.stderr
    assert torch.export.load(str(out)).module()(torch.randn(2, 3, 16, 16)).shape == (2, 4)
    r = call_cli(export.main, '--checkpoint', checkpoint, '--format', 'pt2', '--output', tmp_path / 'n.pt2', '--atol', -1)
    one_line_error(r, 't2t-export', '--atol -1.0: must be a finite number, 0 or more')


# ---- weights that load but mean nothing ----

def _bad_weights(path, case):
    "A tiny model's safetensors export with one NaN, or with an integer / complex tensor (metadata kept)."
    from safetensors.torch import save_file
    from t2t_vit_lite.checkpoints import read_checkpoint
    ck = read_checkpoint(T.save_checkpoint(tiny_model(), path))
    sd = dict(ck['state_dict'])
    if case == 'nan': sd['head.weight'] = sd['head.weight'].clone(); sd['head.weight'][1, 2] = float('nan')
    if case == 'int': sd['head.weight'] = (sd['head.weight'] * 100).long()
    if case == 'complex': sd['head.bias'] = sd['head.bias'].to(torch.complex64)
    save_file(sd, str(path), metadata=ck['metadata'])
    return path


@pytest.mark.parametrize('case,expected', [('nan', 'holds 1 NaN/infinite value in 1 of'), ('int', 'head.weight (int64)'),
                                           ('complex', 'head.bias (complex64)')])
def test_finetune_from_unusable_weights_is_refused(data, tmp_path, case, expected):
    bad = _bad_weights(tmp_path / f'{case}.safetensors', case)
    out = tmp_path / 'ft'
    line = one_line_error(t2t_train(data, out, '-b', 8, '--finetune', bad), 't2t-train', expected)
    assert line.startswith('t2t-train: error: --finetune') and not (out / 'last.pth.tar').exists()


@pytest.mark.parametrize('case,expected', [('nan', 'holds 1 NaN/infinite value'), ('int', 'head.weight (int64)')])
def test_export_of_unusable_weights_is_refused(tmp_path, case, expected):
    bad = _bad_weights(tmp_path / f'{case}.safetensors', case)
    r = call_cli(export.main, '--checkpoint', bad, '--format', 'pt2')
    one_line_error(r, 't2t-export', expected)
    assert 'verified' not in r.stdout and not (tmp_path / f'{case}.pt2').exists()


def test_eval_of_integer_weights_is_refused(data, tmp_path):
    bad = _bad_weights(tmp_path / 'int.safetensors', 'int')
    one_line_error(call_cli(evaluate.main, '--checkpoint', bad, '--data', data, '--workers', 0), 't2t-eval', 'head.weight (int64)')


def test_verify_never_passes_nan_logits(checkpoint, tmp_path):
    m = tiny_model().eval()
    assert call_cli(export.main, '--checkpoint', checkpoint, '--format', 'pt2', '--output', tmp_path / 'm.pt2').returncode == 0
    with torch.no_grad(): m.head.bias[0] = float('nan')
    assert export.verify(tmp_path / 'm.pt2', m, 'pt2') == float('inf')


# ---- data folder traps ----

def _unreadable(root, splits=('train', 'val')):
    for split in splits:
        for f in (root / split).rglob('*.png'): f.write_bytes(b'not a png')
    return root


def test_training_folder_with_no_readable_image_exits_2(data, tmp_path):
    d = _unreadable(shutil.copytree(data, tmp_path / 'd'), ('train',))
    out = tmp_path / 'out'
    line = one_line_error(t2t_train(d, out, '-b', 8, '--no-ema'), 't2t-train', 'not one image of the training folder')
    assert '32 files skipped (first: ' in line and 'unreadable' in line and not (out / 'last.pth.tar').exists()


def test_validation_folder_with_no_readable_image_exits_2(data, tmp_path):
    d = _unreadable(shutil.copytree(data, tmp_path / 'd'), ('val',))
    line = one_line_error(t2t_train(d, tmp_path / 'out', '-b', 8, '--no-ema'), 't2t-train', 'not one image of the validation folder')
    assert '8 files skipped' in line


def test_eval_of_a_folder_with_no_readable_image_exits_2(data, tmp_path, checkpoint):
    d = _unreadable(shutil.copytree(data, tmp_path / 'd'), ('val',))
    r = call_cli(evaluate.main, '--checkpoint', checkpoint, '--data', d, '--workers', 0, '--json')
    line = one_line_error(r, 't2t-eval', 'not one image of the evaluation folder')
    assert '8 files skipped' in line and r.stdout.strip() == ''


def test_a_link_loop_is_not_followed_round(data, tmp_path, checkpoint):
    d = shutil.copytree(data, tmp_path / 'd')
    os.symlink(d / 'val' / '0', d / 'val' / '0' / 'again')               # val/0/again -> val/0
    r = call_cli(evaluate.main, '--checkpoint', checkpoint, '--data', d, '--workers', 0, '--json')
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])['images'] == 8   # 2 per class, each once


# ---- a requeued fine-tuning run ----

def test_resume_auto_does_not_need_the_finetune_file(data, tmp_path):
    src = T.save_checkpoint(tiny_model(), tmp_path / 'src.safetensors')
    out, args = tmp_path / 'ft', ['-b', 8, '--no-ema', '--resume', 'auto']
    r = t2t_train(data, out, *args, '--finetune', src)
    assert r.returncode == 0, r.stderr[-2000:]
    src.rename(tmp_path / 'moved.safetensors')                            # cleaned up between the job's runs
    r = t2t_train(data, out, *args, '--finetune', src, '--epochs', 2)
    assert r.returncode == 0, r.stderr[-2000:]
    log = (out / 'log.txt').read_text()
    assert 'resumed from' in log and f'--finetune {src}: not loaded, the run resumes from its own checkpoint' in log
    one_line_error(t2t_train(data, tmp_path / 'fresh', *args, '--finetune', src), 't2t-train',
                   'no such checkpoint file, and no checkpoint to resume from in')


# ---- bad flags, before any work ----

@pytest.mark.parametrize('flags,expected', [
    (['--opt', 'adamz'], '--opt adamz / --opt-kwargs: Optimizer adamz not found'),
    (['--opt-kwargs', '{"betaz": 1}'], "unexpected keyword argument 'betaz'"),
    (['--aa', 'foo'], '--aa foo: AssertionError: Unknown AA policy foo'),
    (['--clip-grad', -1], '--clip-grad -1.0: must be a finite number above 0'),
    (['--model-ema-decay', 2], '--model-ema-decay 2.0: must be between 0 and 1'),
    (['--mixup', 'inf'], '--mixup inf: must be a finite number'),
    (['--weight-decay', 'inf'], '--weight-decay inf: must be a finite number'),
    (['--model-kwargs', '[1]'], '--model-kwargs [1]: must be a JSON object'),
    (['--model-kwargs', '{}', '--img-size', 2], 'leaves no token'),
    (['--model-kwargs', json.dumps(dict(KW, depth=-1))], '--img-size 16 / --model-kwargs:'),
    (['--num-classes', 10**11], 'more than the'),
    (['--total-batch-size', 0], '--total-batch-size 0: must be at least 1'),
    (['--total-batch-size', 6, '--accum-steps', 4], 'use a multiple of 4, or give -b/--batch-size per process'),
    (['--finetune', '/no/such.pth'], '--finetune /no/such.pth: no such checkpoint file'),
])
def test_bad_flag_is_one_line_before_data_and_model(data, tmp_path, no_data, flags, expected):
    extra = [] if any(str(f).startswith('--total') for f in flags) else ['-b', 8]
    one_line_error(t2t_train(data, tmp_path / 'out', *extra, *flags), 't2t-train', expected)
    assert not (tmp_path / 'out').exists()


def test_out_of_memory_is_one_line(data, tmp_path, monkeypatch, checkpoint):
    def oom(*a, **k): raise torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 80.00 GiB')
    monkeypatch.setattr(train, 'train_one_epoch', oom)
    line = one_line_error(t2t_train(data, tmp_path / 'out', '-b', 8), 't2t-train', 'out of cpu memory at batch: 8 per process x 1 process')
    assert 'lower -b/--batch-size and raise --accum-steps' in line
    monkeypatch.setattr(evaluate, 'evaluate', lambda *a, **k: torch.empty(2**62, dtype=torch.uint8))   # the CPU allocator's error
    r = call_cli(evaluate.main, '--checkpoint', checkpoint, '--data', data, '--workers', 0, '-b', 4)
    one_line_error(r, 't2t-eval', 'out of cpu memory at -b/--batch-size 4 per process; use a smaller -b')


# ---- the command line, recorded ----

def test_the_command_line_is_recorded(data, tmp_path):
    import yaml
    out = tmp_path / 'run'
    assert t2t_train(data, out, '-b', 8, '--no-ema').returncode == 0
    first = yaml.safe_load(open(out / 'args.yaml'))['command']
    assert first.startswith('t2t-train --data ') and first.endswith('--epochs 1 --warmup-epochs 0 -b 8 --no-ema')
    assert t2t_train(data, out, '-b', 8, '--no-ema', '--resume', 'auto', '--epochs', 2).returncode == 0
    resumed = yaml.safe_load(open(out / 'resumes.yaml'))[0]['command']
    assert resumed.endswith('--resume auto --epochs 2') and yaml.safe_load(open(out / 'args.yaml'))['command'] == first
    assert torch.load(out / 'last.pth.tar', weights_only=False)['args'].command == resumed


# ---- the batch: per process (-b, timm's convention) or total (--total-batch-size) ----

def test_batch_per_process_or_total_and_never_both(data, tmp_path):
    r = t2t_train(data, tmp_path / 'a', '-b', 4, '--accum-steps', 2, '--no-ema', '--max-steps-per-epoch', 1)
    assert r.returncode == 0, r.stderr[-2000:]
    log = (tmp_path / 'a' / 'log.txt').read_text()
    assert 'batch: 4 per process x 1 process x 2 accumulation steps = 8 total' in log
    assert 'lr 0.0005 for a total batch of 8 -> lr used 0.0005' in log       # the recipe's lr; TINY_MODEL: --lr-base-batch 8
    r = t2t_train(data, tmp_path / 'b', '--total-batch-size', 8, '--accum-steps', 2, '--no-ema', '--max-steps-per-epoch', 1)
    assert r.returncode == 0 and 'batch: 4 per process x 1 process x 2 accumulation steps = 8 total' in (tmp_path / 'b' / 'log.txt').read_text()
    ck = torch.load(tmp_path / 'b' / 'last.pth.tar', weights_only=False)
    assert (ck['args'].batch_size, ck['args'].total_batch_size) == (4, 8)
    r = t2t_train(data, tmp_path / 'c', '-b', 8, '--total-batch-size', 64)
    assert r.returncode == 2 and 'argument --total-batch-size: not allowed with argument -b/--batch-size' in r.stderr


def test_a_checkpoint_from_when_b_was_the_total_resumes(data, tmp_path):
    "Before version 4, args.batch_size held the total: resuming such a run with the same total is accepted."
    out = tmp_path / 'run'
    assert t2t_train(data, out, '--total-batch-size', 8, '--accum-steps', 2, '--no-ema').returncode == 0
    ck = torch.load(out / 'last.pth.tar', weights_only=False)
    old = vars(ck['args']); old['batch_size'] = old.pop('total_batch_size'); old.pop('command')   # -b 8 was the total then
    ck['version'] = 3; torch.save(ck, out / 'last.pth.tar')
    r = t2t_train(data, out, '--total-batch-size', 8, '--accum-steps', 2, '--no-ema', '--resume', 'auto', '--epochs', 2)
    assert r.returncode == 0, r.stderr[-2000:]
    r = t2t_train(data, out, '--total-batch-size', 16, '--accum-steps', 2, '--no-ema', '--resume', 'auto', '--epochs', 3)
    one_line_error(r, 't2t-train', 'changing --total-batch-size (8 -> 16) mid-run is refused')
