#!/usr/bin/env bash
# Check that a ghum-pipe HTML report renders offline in a headless browser (Chromium).
#
#   scripts/check_report.sh W [OUT.png]
#
# Writes W/report/index.html if missing (ghum-pipe report), then screenshots it with headless
# Chromium (no network needed: the page has inline CSS/JS and relative images) into OUT.png
# (default W/report_screenshot.png), and fails if the screenshot is missing or blank.
# Installs Chromium with apt-get when it is not there and we are root (Debian/Ubuntu).
set -euo pipefail
WORK=${1:?usage: scripts/check_report.sh WORK_DIR [OUT.png]}
OUT=${2:-$WORK/report_screenshot.png}
PY=${PYTHON:-$(dirname "$0")/../.venv/bin/python}
[ -x "$PY" ] || PY=python3

if [ ! -f "$WORK/report/index.html" ]; then
  "$PY" -m ghum_pipe.cli report --work "$WORK"
fi
BROWSER=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [ -z "$BROWSER" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y -qq chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)
    BROWSER=$(command -v chromium)
  else
    echo "Chromium not found: sudo apt-get install -y chromium" >&2; exit 1
  fi
fi
URL="file://$(cd "$WORK/report" && pwd)/index.html"
# --allow-file-access-from-files: the page's images are sibling files (../scans/...).
"$BROWSER" --headless --no-sandbox --disable-gpu --hide-scrollbars --allow-file-access-from-files \
  --window-size=1400,2200 --screenshot="$OUT" "$URL" >/dev/null 2>&1
"$PY" - "$OUT" <<'PYEOF'
import sys
from PIL import Image
import numpy as np
img = np.asarray(Image.open(sys.argv[1]).convert("RGB"), dtype=float)
spread = img.reshape(-1, 3).std(0).mean()
print(f"{sys.argv[1]}: {img.shape[1]}x{img.shape[0]} px, pixel std {spread:.1f}")
sys.exit(0 if spread > 5 else "screenshot looks blank")
PYEOF
