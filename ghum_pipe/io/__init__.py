"""Scan and mesh I/O: the only place file units and axes are handled.

>>> scan = load_scan("subject.ply")          # Scan: verts (N, 3) metres, +Z up; scan.frame
>>> write_mesh(out, scan.frame.to_file(verts_m), faces)   # back in the file's units/axes
"""

from ghum_pipe.errors import ScanError
from ghum_pipe.io.frame import Frame
from ghum_pipe.io.scan import Scan, load_scan
from ghum_pipe.io.write import write_mesh

__all__ = ["Frame", "Scan", "ScanError", "load_scan", "write_mesh"]
