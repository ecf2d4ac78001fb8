"""Shared fixtures for the training tests: a tiny image folder and the command lines of tiny runs."""
import os, shutil, subprocess, sys, json, pathlib
import torch

TINY_MODEL = ['--model', 't2t_vit_t_14', '--img-size', '16', '--lr-base-batch', '8', '--model-kwargs',
              json.dumps(dict(embed_dim=32, depth=1, num_heads=2, mlp_ratio=1., token_dim=8, schedule=[[3, 2, 1], [3, 2, 1], [3, 1, 1]]))]
ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')


def tiny_folder(root, per_class=8, n_val=2, classes=4):
    "A small ImageNet-style folder cut from the digits demo set."
    from t2t_vit_lite.data import digits_folder
    src = digits_folder(pathlib.Path(root).parent / 'digits_src')
    for c in range(classes):
        for split, n in (('train', per_class), ('val', n_val)):
            d = pathlib.Path(root) / split / str(c); d.mkdir(parents=True, exist_ok=True)
            for f in sorted((src / split / str(c)).iterdir())[:n]: shutil.copy(f, d / f.name)
    return pathlib.Path(root)


def train_cmd(data, out, *extra, torchrun=None):
    base = [sys.executable, '-m', 't2t_vit_lite.train'] if torchrun is None else \
        [sys.executable, '-m', 'torch.distributed.run', *torchrun, '-m', 't2t_vit_lite.train']
    return base + ['--data', str(data), '--output', str(out), '--workers', '0', '--no-progress', *TINY_MODEL, *map(str, extra)]


def run(cmd, timeout=300, env=None, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env or ENV, **kw)


def script(name):
    "The path of console script `name` (t2t-train, t2t-eval, ...) installed beside this Python."
    exe = shutil.which(name, path=str(pathlib.Path(sys.executable).parent)) or shutil.which(name)
    assert exe, f'{name} is not installed'
    return exe


def run_group(cmd, timeout, log_path, on_poll=None):
    """Run `cmd` in its own process group, output to `log_path`; call `on_poll(proc)` every 50 ms. On timeout the
    whole group is killed (orphaned torchrun workers included). Returns the exit code, or None on timeout."""
    import os, signal, time
    with open(log_path, 'w') as log:
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=ENV, start_new_session=True)
        deadline = time.time() + timeout
        while p.poll() is None and time.time() < deadline:
            if on_poll: on_poll(p)
            time.sleep(0.05)
        rc = p.poll()
        try: os.killpg(p.pid, signal.SIGKILL)       # leave nothing behind
        except ProcessLookupError: pass
        p.wait()
        return rc


def terminate_after_first_epoch(cmd, out, timeout=240):
    """Start a training `cmd`, send it SIGTERM once `out` holds the first epoch's checkpoint, and wait for it.
    Returns the finished Popen (its stderr still readable)."""
    import signal, time
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV, text=True)
    deadline = time.time() + timeout
    while time.time() < deadline and not (pathlib.Path(out) / 'checkpoint-0.pth.tar').exists() and p.poll() is None: time.sleep(0.02)
    p.send_signal(signal.SIGTERM); p.wait(timeout=120)
    return p


def weights(path, key='state_dict'):
    from t2t_vit_lite.checkpoints import read_checkpoint
    return read_checkpoint(path)[key]
