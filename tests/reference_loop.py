"""The training loop as it was before issue 10 (git 8b6639a, nbs/17_train.ipynb), kept verbatim as the reference that
tests/test_train.py compares the sync-free loop with: same weights, same EMA, same skipped steps, same stop."""
import time
from contextlib import nullcontext
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from timm.utils import unwrap_model
from t2t_vit_lite.runtime import tqdm, autocast_for
from t2t_vit_lite.train import NonFiniteLoss, TrainState, Preemption


def old_backward_step(loss, optimizer, scaler, parameters, clip_grad:float=None, update:bool=True):
    "Backward (scaled by timm's NativeScaler for fp16) and, when `update`, the clipped optimizer step."
    if scaler is not None: return scaler(loss, optimizer, clip_grad=clip_grad, parameters=parameters, need_update=update)
    loss.backward()
    if update:
        if clip_grad: torch.nn.utils.clip_grad_norm_(parameters, clip_grad)
        optimizer.step()

def old_train_one_epoch(model, state:TrainState, loader, loss_fn, mixup, device, args, log=print, stop:Preemption=None, progress:bool=True) -> tuple:
    "Train epoch `state.epoch` from batch `state.batch` on; returns (metrics, stopped): stopped after a step when `stop` asks."
    model.train(); opt, accum = state.optimizer, args.accum_steps
    p = state.partial or {}
    sums = torch.tensor([p.get('loss_sum', 0.), p.get('images', 0), p.get('skipped', 0), p.get('nonfinite', 0)], dtype=torch.float64)
    bad_in_row, stopped, t0 = 0, False, time.perf_counter() - p.get('time', 0.)
    limit = args.max_steps_per_epoch * accum if args.max_steps_per_epoch else None
    bar = tqdm(loader, desc=f'epoch {state.epoch}', disable=not progress, leave=False, dynamic_ncols=True)
    opt.zero_grad(set_to_none=True)
    for i, (x, y, bad) in enumerate(bar, start=state.batch):
        if limit and i >= limit: break
        for path, why in bad: log(f'warning: skipped unreadable image {path} ({why})')
        sums[2] += len(bad)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if mixup is not None and len(x) % 2: x, y = x[:-1], y[:-1]          # mixup pairs images: even batch
        if mixup is not None and len(x): x, y = mixup(x, y)
        last_micro = (i + 1) % accum == 0
        with model.no_sync() if isinstance(model, DDP) and not last_micro else nullcontext():
            with autocast_for(device, args.amp):
                loss = loss_fn(model(x), y) if len(x) else torch.zeros((), device=device, requires_grad=True)
            finite = torch.tensor([float(torch.isfinite(loss).item())], device=device)
            if dist.is_initialized(): dist.all_reduce(finite, op=dist.ReduceOp.MIN)
            if finite.item() == 0:
                bad_in_row += 1; sums[3] += 1; opt.zero_grad(set_to_none=True)
                log(f'warning: non-finite loss at step {state.step} (epoch {state.epoch}, batch {i}), step skipped ({bad_in_row} in a row)')
                if bad_in_row >= args.max_nonfinite:
                    raise NonFiniteLoss(f'{bad_in_row} non-finite losses in a row (last at step {state.step}); lower --lr, add --clip-grad, or use --amp bf16/none')
                continue
            bad_in_row = 0
            old_backward_step(loss / accum, opt, state.scaler, model.parameters(), args.clip_grad, update=last_micro)
        sums[0] += loss.item() * len(x); sums[1] += len(x)
        if not last_micro: continue
        opt.zero_grad(set_to_none=True)
        state.step += 1; state.batch = i + 1
        if state.ema is not None: state.ema.update(unwrap_model(model), step=state.step)
        if progress: bar.set_postfix(loss=f'{loss.item():.3f}', lr=f'{opt.param_groups[0]["lr"]:.2e}')
        if stop is not None and stop.requested(device): stopped = True; break
    sums = sums.to(device)
    if dist.is_initialized(): dist.all_reduce(sums)
    dt = time.perf_counter() - t0
    loss_sum, n, skipped, n_bad = sums.tolist()
    return dict(train_loss=loss_sum / max(n, 1), images=int(n), skipped=int(skipped), nonfinite=int(n_bad), images_per_s=n / dt,
                epoch_time=dt, loss_sum=loss_sum), stopped
