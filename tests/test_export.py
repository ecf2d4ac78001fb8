"""Export of every variant: torch.export with a dynamic batch equals eager mode, while eager mode keeps its clear
input errors (a model built with dynamic_img_size=False refuses another size; the default resamples its position table) (chapter 20 holds the ONNX, jit.trace and t2t-export round trips)."""
import pytest
import torch
import t2t_vit_lite as T
from t2t_vit_lite.export import export_program


@pytest.mark.parametrize('name', T.list_models())
def test_torch_export_dynamic_batch_equals_eager(name):
    # 64-pixel inputs (grid 4 x 4) keep 13 exports within CI time; chapter 20 exports at 224 px
    torch.manual_seed(0)
    m = T.create_model(name, img_size=64).eval()
    ep = export_program(m)
    x = torch.randn(3, 3, 64, 64)                      # the example had batch 2: batch 3 comes from the symbolic axis
    with torch.no_grad(): assert (ep.module()(x) - m(x)).abs().max() <= 1e-5
    fixed = T.create_model(name, img_size=64, dynamic_img_size=False).eval()
    with pytest.raises(ValueError, match='img_size=96'): fixed(torch.randn(1, 3, 96, 96))    # eager, fixed size: still the clear error
    with pytest.raises(Exception): ep.module()(torch.randn(1, 3, 96, 96))                  # exported: its own shape guard


def test_eager_input_errors_unchanged_after_export():
    m = T.create_model('t2t_vit_t_14', img_size=64).eval()
    export_program(m)
    with pytest.raises(ValueError, match='in_chans=1'): m(torch.randn(1, 1, 224, 224))
    with pytest.raises(ValueError, match='3-D tensor'): m(torch.randn(3, 224, 224))


def test_jit_trace_equals_eager_for_t2t_transformer():
    import warnings
    m = T.create_model('t2t_vit_t_14').eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter('ignore')
        tr = torch.jit.trace(m, torch.randn(2, 3, 224, 224))
        x = torch.randn(3, 3, 224, 224)
        assert (tr(x) - m(x)).abs().max() <= 1e-5


def test_onnx_export_without_its_packages_exits_2_before_any_work(monkeypatch, capsys, tmp_path):
    import importlib.util
    from t2t_vit_lite import export
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda n, *a: None if n == 'onnxscript' else real(n, *a))
    with pytest.raises(SystemExit) as e:   # the checkpoint does not exist: the package check comes first
        export.main(['--model', 't2t_vit_7', '--checkpoint', str(tmp_path / 'none.pth'), '--format', 'onnx'])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('t2t-export: error: --format onnx needs onnxscript;') and 'pip install' in err and '\n' not in err, err


def test_console_scripts_export_and_bench_read_the_checkpoint_and_refuse_in_one_line(tmp_path):
    """`t2t-export` and `t2t-bench` as real commands (the chapters call their `main` in-process): t2t-export rebuilds
    the model from our file's metadata without --model and verifies the .pt2; bad input is one line and exit 2, with
    no Python warning before it, even with warnings shown."""
    from helpers import script, run, ENV
    def cli(*args): return run([*map(str, args)], env=dict(ENV, PYTHONWARNINGS='default'))    # warnings shown
    ck = T.save_checkpoint(T.create_model('t2t_vit_7', num_classes=10, img_size=64), tmp_path / 'seven.safetensors')
    r = cli(script('t2t-export'), '--checkpoint', ck, '--format', 'pt2')                 # no --model, no --img-size
    assert r.returncode == 0 and 'verified' in r.stdout, r.stderr
    assert torch.export.load(str(tmp_path / 'seven.pt2')).module()(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    torch.save({'state_dict': T.create_model('t2t_vit_7').state_dict()}, tmp_path / 'plain.pth')   # names no model
    for args, msg in [(('--checkpoint', tmp_path / 'plain.pth', '--format', 'pt2'), '--model is needed'),
                      (('--model', 't2t_vit_14', '--checkpoint', ck, '--format', 'pt2', '--output', tmp_path / 'other.pt2'),
                       'does not fit the model t2t_vit_14')]:
        r = cli(script('t2t-export'), *args)
        assert r.returncode == 2 and r.stderr.startswith('t2t-export: error:') and msg in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = cli(script('t2t-bench'), '--models', 'vit_tiny')
    assert r.returncode == 2 and r.stderr.startswith('t2t-bench: error:') and 'unknown model' in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
