"""3D landmarks on raw scans: render from virtual cameras, detect with MediaPipe, triangulate.

Modules (pure cores; ``stage`` is the thin per-scan shell the Dask runner calls):

- ``render``: ``Camera`` (pinhole, OpenCV convention), ``MeshRenderer`` / ``render_mesh`` ->
  ``RenderResult`` (rgb, z-depth, triangle ids, barycentrics) on open3d ray casting.
- ``renderers``: ``make_renderer(..., renderer="open3d"|"pytorch3d")``; ``render_p3d``: the
  opt-in PyTorch3D rasteriser (CUDA).
- ``cameras``: the two-height body ring and the head / hand close-ups.
- ``detect``: ``PoseDetector``, ``FaceDetector``, ``HandDetector`` -> ``Detection2D``.
- ``triangulate``: DLT, RANSAC over views, left/right swap resolution, surface consensus.
- ``find``: ``find_landmarks(verts, faces, colors, config)`` -> ``FoundLandmarks`` (no files).
- ``template_landmarks``: ``load_template_landmarks(template)`` -> ``TemplateLandmarks``.
- ``evaluate``: errors against ground truth, like with like (bench/landmarks.py).
- ``stage``: ``LandmarkConfig``, ``run_landmarks(scan_path, scan_dir, config)`` -> metrics,
  writes landmarks.json and views/contact_sheet.png.
"""
