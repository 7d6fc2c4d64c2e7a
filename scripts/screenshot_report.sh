#!/usr/bin/env bash
# Render a `llmsim plan --report` and take full-page screenshots of its HTML in headless
# Chromium, to look at the page as a reader does (not run in CI: it needs a browser).
#
#   bash scripts/screenshot_report.sh [OUT_DIR] [-- llmsim plan flags...]
#   bash scripts/screenshot_report.sh out/shots -- --model llama-2-70b --hardware dgx-h100-8x --gpus 8
#
# Writes OUT_DIR/report/ (the report), OUT_DIR/report.png (the whole page, 1200 px wide) and
# OUT_DIR/report-top.png (its first TOP px, 256 colours: the kind committed as docs/report.png).
# Needs Chromium (Debian: `apt-get install -y chromium`) and the planner (`pip install .`, or
# run from a checkout: PYTHONPATH is set to the repository root). CHROMIUM=/path overrides
# the browser; WIDTH=px the window width.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-screenshots}"
shift || true
[[ "${1:-}" == "--" ]] && shift
CHROMIUM="${CHROMIUM:-$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)}"
WIDTH="${WIDTH:-1200}"
TOP="${TOP:-1400}"
if [[ -z "$CHROMIUM" ]]; then
    echo "screenshot_report.sh: no Chromium found (apt-get install -y chromium, or set CHROMIUM=)" >&2
    exit 2
fi

mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
rm -rf "$OUT/report"
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" python -m llmsim plan --report "$OUT/report" "$@" >/dev/null

# The page's height, for a full-page shot: Chromium's --screenshot takes the window only, so
# the window is made as tall as the document (measured by a first headless run that dumps the
# DOM after layout, with a script that writes the height into the title).
PROFILE="$(mktemp -d)"
trap 'rm -rf "$PROFILE"' EXIT
FLAGS=(--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking
       --disable-component-update --disable-sync --hide-scrollbars --user-data-dir="$PROFILE")
PROBE="$PROFILE/probe.html"
{
    sed 's#</body></html>$##' "$OUT/report/report.html"
    echo '<script>document.title="H="+document.documentElement.scrollHeight;</script></body></html>'
} > "$PROBE"
HEIGHT="$("$CHROMIUM" "${FLAGS[@]}" --window-size="$WIDTH,1000" --virtual-time-budget=3000 --dump-dom \
          "file://$PROBE" 2>/dev/null | sed -n 's#.*<title>H=\([0-9]*\)</title>.*#\1#p' | head -1)"
HEIGHT="${HEIGHT:-4000}"
"$CHROMIUM" "${FLAGS[@]}" --window-size="$WIDTH,$((HEIGHT + 40))" --virtual-time-budget=3000 \
    --screenshot="$OUT/report.png" "file://$OUT/report/report.html" 2>/dev/null
# The top of the page, small: Pillow comes with matplotlib, which the planner needs.
python - "$OUT/report.png" "$OUT/report-top.png" "$TOP" <<'PY'
import sys
from PIL import Image
page = Image.open(sys.argv[1]).convert("RGB")
top = page.crop((0, 0, page.width, min(page.height, int(sys.argv[3]))))
top.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(sys.argv[2], optimize=True)
PY
echo "$OUT/report.png (${WIDTH}x$((HEIGHT + 40))) and $OUT/report-top.png of $OUT/report/report.html"
