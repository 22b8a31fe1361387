"""Print what makes numbers differ between machines: the CPU, the BLAS kernels and the thread counts.

CI prints this before the tests (``.ci/run``), so that a numeric failure on another machine can be
read against the kernel it ran on. Usage: ``python scripts/machine_info.py``.
"""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    import numpy  # noqa: F401 - loads numpy's OpenBLAS so threadpoolctl sees it
    import scipy.linalg  # noqa: F401 - and scipy's
    import torch
    from threadpoolctl import threadpool_info

    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}")
    env = {k: os.environ.get(k, "(unset)") for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS",
                                                    "MKL_NUM_THREADS", "MKL_CBWR", "PYTHONHASHSEED",
                                                    "GHUM_PIPE_TEST_THREADS")}
    print("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()))
    for lib in threadpool_info():
        arch = lib.get("architecture") or "-"
        print(f"thread pool: {lib['internal_api']} {lib.get('version') or ''} kernel={arch} "
              f"threads={lib['num_threads']} ({os.path.basename(lib['filepath'])})")
    mkl = torch.backends.mkl.is_available()
    print(f"torch {torch.__version__}: {torch.get_num_threads()} threads, MKL {'yes' if mkl else 'no'}, "
          f"CUDA {'yes' if torch.cuda.is_available() else 'no'}")


if __name__ == "__main__":
    main()
