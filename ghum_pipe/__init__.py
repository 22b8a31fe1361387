"""ghum-pipe: scan registration and dataset building for 3D human body models.

Stages: ``landmarks`` (render, detect, triangulate), ``register`` (fit the rigged template),
``model`` (train GHUM/GHUML), scheduled by ``pipelines`` on Dask. Inside the package every
geometry is in metres with +Z up; ``io`` converts at the file boundary.
"""

__version__ = "0.1.0"
