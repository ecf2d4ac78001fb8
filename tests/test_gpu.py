"""The CUDA path: bf16 and fp16 training steps, resume, torchrun with NCCL. Each test skips without a GPU (CI has none);
run them on a GPU machine with `python -m pytest tests/test_gpu.py -v`."""
import pytest
import torch
from helpers import tiny_folder, train_cmd, run, weights, terminate_after_first_epoch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU (none visible)')]
STEPS = ['--epochs', 1, '--max-steps-per-epoch', 6, '-b', 8, '--no-aug', '--no-ema', '--drop-path', 0, '--warmup-epochs', 0, '--lr', 1e-3]


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return tiny_folder(tmp_path_factory.mktemp('data') / 'tiny')


def _steps(name, amp, n=6, batch=32, seed=0):
    "Losses of `n` AdamW steps of the real 224-px model `name` on CUDA under `amp` (same init, same batches), and the final model."
    import t2t_vit_lite as T
    torch.manual_seed(seed); m = T.create_model(name, drop_rate=0., drop_path_rate=0.).cuda().train()
    opt, g = torch.optim.AdamW(m.parameters(), lr=1e-4, fused=True), torch.Generator(device='cuda').manual_seed(seed)
    scaler, losses = torch.amp.GradScaler('cuda', enabled=amp == torch.float16), []
    for _ in range(n):
        x = torch.randn(batch, 3, 224, 224, device='cuda', generator=g); y = torch.randint(0, 1000, (batch,), device='cuda', generator=g)
        with torch.autocast('cuda', dtype=amp or torch.float32, enabled=amp is not None):
            loss = torch.nn.functional.cross_entropy(m(x), y)
        scaler.scale(loss).backward(); scaler.step(opt); scaler.update(); opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return torch.tensor(losses), m, scaler


@pytest.mark.parametrize('name', ['t2t_vit_7', 't2t_vit_t_14'])
def test_bf16_steps_track_fp32(name):
    "Six training steps in bf16 autocast follow the fp32 steps: losses within 1%, and the weight updates point the same way."
    import t2t_vit_lite as T
    torch.manual_seed(0); w0 = {k: v.cuda() for k, v in T.create_model(name, drop_rate=0., drop_path_rate=0.).state_dict().items()}
    l32, m32, _ = _steps(name, None); l16, m16, _ = _steps(name, torch.bfloat16)
    torch.testing.assert_close(l16, l32, rtol=1e-2, atol=0)
    d32 = torch.cat([(v - w0[k]).flatten() for k, v in m32.state_dict().items() if v.is_floating_point()])
    d16 = torch.cat([(v - w0[k]).flatten() for k, v in m16.state_dict().items() if v.is_floating_point()])
    assert torch.nn.functional.cosine_similarity(d16, d32, dim=0) > 0.9


def test_fp16_with_grad_scaler_keeps_the_performer_finite():
    "fp16 autocast + GradScaler on the Performer T2T (the official code's NaN case): every loss finite, the scale not collapsing."
    losses, m, scaler = _steps('t2t_vit_7', torch.float16, n=12)
    assert torch.isfinite(losses).all(), losses
    assert scaler.get_scale() >= 2.0 ** 10, scaler.get_scale()          # no run of overflowing steps halved it to nothing
    assert all(torch.isfinite(p).all() for p in m.parameters())
    # why the layer switches autocast off: on 3136 tokens the FAVOR+ sums overflow in fp16 (the H100 gave NaN everywhere),
    # while the float32 island the layer uses stays finite
    from t2t_vit_lite.performer import performer_attention, performer_attention_fp32
    q, k, v = (torch.randn(2, 3136, 64, device='cuda', dtype=torch.float16) for _ in range(3))
    w = torch.randn(32, 64, device='cuda') * 2
    with torch.autocast('cuda', dtype=torch.float16):
        naive, safe = performer_attention(q, k, v, w), performer_attention_fp32(q, k, v, w)
    assert not torch.isfinite(naive).all()
    assert safe.dtype == torch.float16 and torch.isfinite(safe).all()


def test_cli_bf16_and_fp32_runs_agree_on_cuda(data, tmp_path):
    "t2t-train --device cuda --amp bf16 trains the tiny model to the weights the fp32 run reaches, within bf16 tolerance."
    for amp in ('none', 'bf16'):
        r = run(train_cmd(data, tmp_path / amp, *STEPS, '--device', 'cuda', '--amp', amp))
        assert r.returncode == 0, r.stderr[-2000:]
        assert f'on cuda, amp={amp}' in (tmp_path / amp / 'log.txt').read_text()
    a, b = weights(tmp_path / 'none' / 'last.pth.tar'), weights(tmp_path / 'bf16' / 'last.pth.tar')
    num = sum(((a[k] - b[k]).float().norm() ** 2 for k in a if a[k].is_floating_point())) ** 0.5
    den = sum((a[k].float().norm() ** 2 for k in a if a[k].is_floating_point())) ** 0.5
    assert num / den < 1e-2, float(num / den)


def _run_to_end(data, out, args):
    r = run(train_cmd(data, out, *args))
    assert r.returncode == 0, r.stderr[-2000:]
    return weights(out / 'last.pth.tar')


def test_resume_on_cuda_ends_where_the_uninterrupted_run_ends(data, tmp_path):
    """SIGTERM after the first epoch's checkpoint, then --resume auto, on CUDA: the final weights differ from an
    uninterrupted run's no more than two uninterrupted runs differ from each other (zero when the kernels are deterministic)."""
    args = ['--epochs', 3, '-b', 4, '--warmup-epochs', 1, '--resume', 'auto', '--device', 'cuda', '--amp', 'bf16']
    ref, ref2 = _run_to_end(data, tmp_path / 'ref', args), _run_to_end(data, tmp_path / 'ref2', args)
    out = tmp_path / 'term'
    p = terminate_after_first_epoch(train_cmd(data, out, *args), out)
    assert p.returncode == 75, p.stderr.read()[-2000:]
    resumed = _run_to_end(data, out, args)
    noise = max((ref[k].float() - ref2[k].float()).abs().max().item() for k in ref)
    diff = max((ref[k].float() - resumed[k].float()).abs().max().item() for k in ref)
    print(f'run-to-run max |diff| {noise:.3g}, resumed vs uninterrupted {diff:.3g}')
    assert diff <= noise, (diff, noise)


def test_torchrun_one_process_uses_nccl(data, tmp_path):
    "torchrun --nproc_per_node=1 on a GPU: the process group is NCCL and the run trains to the end."
    r = run(train_cmd(data, tmp_path / 'run', *STEPS, '--device', 'cuda', torchrun=['--nproc_per_node=1', '--master_port=29581']))
    assert r.returncode == 0, r.stderr[-2000:]
    log = (tmp_path / 'run' / 'log.txt').read_text()
    assert 'nccl' in log and 'epoch   0/1' in log, log[-1500:]
