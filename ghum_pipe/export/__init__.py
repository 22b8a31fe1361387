"""Registrations as rigged, textured avatars (glTF 2.0, OBJ) and texture baking.

Pure cores: ``rig.py`` (registration parameters -> :class:`Avatar` arrays in glTF's frame),
``gltf.py`` (Avatar <-> .glb). Shells: ``scan.py`` (one registration's files), ``command.py``
(``ghum-pipe export``). ``blender_check.py`` opens a .glb in Blender (``make blender-check``).
"""

from ghum_pipe.export.rig import Avatar, build_avatar, skin_mesh

__all__ = ["Avatar", "build_avatar", "skin_mesh"]
