import warnings

import pytest
import torch

from extras import missing_extra

# One intra-op thread for the whole suite: the models here are tiny, so a second thread only adds
# synchronization (measured ~10x slower per step on a busy 2-core machine), and the CLI / worker subprocesses
# run with OMP_NUM_THREADS=1, so in-process results compare with theirs bit for bit.
torch.set_num_threads(1)
warnings.filterwarnings("ignore", message="According to Bo")


def pytest_collection_modifyitems(config, items):
    skip_gpu = None if torch.cuda.is_available() else pytest.mark.skip(reason="needs CUDA (run on the device machine)")
    for item in items:
        if skip_gpu is not None and "gpu" in item.keywords:
            item.add_marker(skip_gpu)
        for marker in item.iter_markers("extra"):  # pyproject.toml's optional extras (tests/extras.py)
            reason = missing_extra(marker.args[0])
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))
