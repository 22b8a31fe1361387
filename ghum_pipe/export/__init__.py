"""Registrations as rigged, textured avatars (glTF 2.0, OBJ) and texture baking.

Pure cores: ``rig.py`` (registration parameters -> :class:`Avatar` arrays in glTF's frame),
``gltf.py`` (Avatar <-> .glb). Shells: ``scan.py`` (one registration's files), ``cli/export_command.py``
(``ghum-pipe export``). ``blender_check.py`` opens a .glb in Blender (``make blender-check``).
"""

__all__ = ["Avatar", "build_avatar", "skin_mesh"]


def __getattr__(name):
    """The core's names on first use: importing the package (``ghum-pipe --help`` lists the
    export command) must not import numpy and torch."""
    if name in __all__:
        from ghum_pipe.export import rig

        return getattr(rig, name)
    raise AttributeError(f"module 'ghum_pipe.export' has no attribute {name!r}")
