import os

import pytest
import torch

# Two cores here and in CI: keep torch from oversubscribing when Dask workers run beside it.
torch.set_num_threads(int(os.environ.get("GHUM_PIPE_TEST_THREADS", "2")))


@pytest.fixture(scope="session")
def template():
    from ghum_pipe.template import load_template

    return load_template()
