import json
import operator
import os

import pytest
import torch

# Two cores here and in CI: keep torch from oversubscribing when Dask workers run beside it.
torch.set_num_threads(int(os.environ.get("GHUM_PIPE_TEST_THREADS", "2")))

_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


@pytest.fixture(scope="session")
def template():
    from ghum_pipe.template import load_template

    return load_template()


@pytest.fixture
def measured(request, record_property):
    """``measured(name, value, op, bound)``: assert ``value op bound`` and record the value.

    Numeric assertions whose value depends on floating point (registrations, trained models) go
    through this, so that ``scripts/numeric_spread.py`` can run the suite under other thread
    counts, BLAS kernels and hash seeds and print how far each value moves against its bound.
    The value is recorded (junit property, and a JSON line in ``$GHUM_PIPE_MEASURE_LOG`` when
    set) before the check, so a failing run still reports it.
    """
    log = os.environ.get("GHUM_PIPE_MEASURE_LOG")

    def check(name: str, value, op: str, bound: float) -> None:
        value = float(value)
        record_property(name, value)
        if log:
            with open(log, "a") as f:
                f.write(json.dumps({"test": request.node.nodeid, "name": name, "value": value, "op": op,
                                    "bound": float(bound)}) + "\n")
        assert _OPS[op](value, bound), f"{name} = {value:.6g}, expected {op} {bound}"

    return check
