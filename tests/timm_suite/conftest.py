# Ours, copied beside timm's test file by run.sh: importing the package registers the T2T-ViT variants in timm.
import t2t_vit_lite  # noqa: F401


def pytest_configure(config):
    # timm's suite marks its tests with its own markers (declared in timm's pyproject.toml, not shipped with the file)
    for m in ('base', 'forward', 'cfg', 'cfg_nonstd', 'torchscript', 'features', 'fxforward', 'fxbackward', 'backward',
              'timeout(seconds): pytest-timeout limit (ignored without the plugin)'):
        config.addinivalue_line('markers', m)
