import sys, pathlib
sys.path.insert(0, str(pathlib.Path(__file__).parent))


def pytest_configure(config):
    config.addinivalue_line('markers', 'gpu: needs a CUDA GPU; skipped where none is visible')
