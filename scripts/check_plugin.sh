#!/usr/bin/env bash
# Fresh-profile check of the packaged plugin (issue 18's bar), as a new user would meet it:
#   the zip from scripts/package.py installed into a clean QGIS profile, then qgis_process enable, list, help
#   and run; asserts: LICENSE in the zip, no raw HTML in `help hsscl:coregister`, no log line repeated more
#   than 3 times in a hsscl:coregister run, every path in report.json's outputs exists after the run, and a
#   failing run states its error once as "ERROR:" (qgis_process 3.22 itself echoes a QgsProcessingException
#   twice more through its message log on stderr: QgsProcessingAlgorithm::run() logs it, and the base
#   QgsProcessingFeedback::reportError() logs it again; so at most 3 lines in all).
# Usage: bash scripts/check_plugin.sh [WORKDIR]   (make check-plugin). Data: $HSSCL_DATA or /work/shared/data.
# qgis_process runs the system Python: the engine's packages come from .venv (PYTHONPATH), as a user's
# would come from the plugin's own package folder or their site-packages.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
QP="${QGIS_PROCESS:-/usr/bin/qgis_process.bin}"
WORK="${1:-$(mktemp -d /tmp/hsscl_check.XXXXXX)}"
DATA="${HSSCL_DATA:-/work/shared/data}"
REF="$DATA/gefolki_EvalGeFolki/S1S2/S2_patch11.tif"
TGT="$DATA/gefolki_EvalGeFolki/S1S2/S1_patch11.tif"
fail() { echo "check-plugin: FAIL: $*" >&2; exit 1; }
ok() { echo "check-plugin: ok: $*"; }

[ -x "$QP" ] || fail "$QP not found (Debian/Ubuntu: package qgis; the qgis_process wrapper may reject options)"
[ -f "$REF" ] && [ -f "$TGT" ] || fail "data not found under $DATA (set HSSCL_DATA)"
rm -rf "$WORK/profile" "$WORK/out" "$WORK/out_fail"
mkdir -p "$WORK/profile/profiles/default/python/plugins" "$WORK/out" "$WORK/out_fail"

"$PY" "$ROOT/scripts/package.py" -o "$WORK/hsscl.zip"
unzip -Z1 "$WORK/hsscl.zip" > "$WORK/zip.list"
grep -qx "hsscl/LICENSE" "$WORK/zip.list" || fail "no LICENSE in the zip"
ok "LICENSE in the zip"
(cd "$WORK/profile/profiles/default/python/plugins" && unzip -q "$WORK/hsscl.zip")

SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
export QGIS_CUSTOM_CONFIG_PATH="$WORK/profile" HOME="$WORK/profile" QT_QPA_PLATFORM=offscreen
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"

"$QP" plugins enable hsscl > "$WORK/enable.log" 2>&1 || fail "plugins enable: $(tail -5 "$WORK/enable.log")"
ok "plugins enable hsscl"
"$QP" list > "$WORK/list.log" 2>&1 || fail "list"
for alg in hsscl:coregister hsscl:match hsscl:apply; do
    grep -q "$alg" "$WORK/list.log" || fail "$alg not listed"
done
ok "list shows the three algorithms"
"$QP" help hsscl:coregister > "$WORK/help.log" 2>&1 || fail "help"
if grep -nE '<(/?(b|i|p|br|a|ul|li|h[1-6]|code|em|strong)\b[^>]*)>' "$WORK/help.log"; then
    fail "raw HTML in qgis_process help hsscl:coregister"
fi
ok "help hsscl:coregister has no raw HTML"

"$QP" run hsscl:coregister -- REFERENCE="$REF" TARGET="$TGT" DEVICE=1 \
    OUTPUT="$WORK/out/S1_coregistered.tif" TIEPOINTS="$WORK/out/S1_tiepoints.gpkg" \
    MATCHES="$WORK/out/S1_matches.gpkg" REPORT="$WORK/out/S1_report.html" > "$WORK/run.log" 2>&1 \
    || fail "run hsscl:coregister: $(tail -20 "$WORK/run.log")"
ok "run hsscl:coregister"

# a target elsewhere on Earth (no overlap): the engine's error, and how often it is printed
FAR="$(ls "$DATA"/bigearthnet_example/BigEarthNet-S2-Example/*_87_48/*_B04.tif | head -1)"
"$QP" run hsscl:coregister -- REFERENCE="$REF" TARGET="$FAR" DEVICE=1 \
    OUTPUT="$WORK/out_fail/x.tif" TIEPOINTS="$WORK/out_fail/x.gpkg" > "$WORK/run_fail.log" 2>&1 && \
    fail "a run with rasters that do not overlap succeeded"

"$PY" - "$WORK" <<'EOF'
import collections, html.parser, json, os, re, sys
work = sys.argv[1]
failures = []
lines = [ln.strip().lstrip(".") for ln in open(os.path.join(work, "run.log"), encoding="utf-8", errors="replace")]
# qgis_process's progress dots ("0...10...") and the separator lines are not log messages
lines = [ln for ln in lines if ln and not re.fullmatch(r"[-.0-9 ]*(- done\.)?", ln)]
counts = collections.Counter(lines)
worst = counts.most_common(3)
print("check-plugin: most repeated log lines:", worst)
if worst and worst[0][1] > 3:
    failures.append(f"log line repeated {worst[0][1]} times: {worst[0][0]!r}")
else:
    print("check-plugin: ok: no log line repeated more than 3 times")
report = json.load(open(os.path.join(work, "out", "S1_report.json"), encoding="utf-8"))
outputs = report.get("outputs") or {}
missing = {k: v for k, v in outputs.items() if not os.path.exists(v)}
if not outputs or missing:
    failures.append(f"report.json outputs missing after the run: {missing or 'no outputs listed'}")
else:
    print(f"check-plugin: ok: all {len(outputs)} paths in report.json's outputs exist")
text = open(os.path.join(work, "out", "S1_report.html"), encoding="utf-8").read()
files = re.findall(r"<li>[^:<]+: <code>([^<]+)</code></li>", text)
gone = [f for f in files if not os.path.exists(html.unescape(f))]
if not files or gone:
    failures.append(f"the HTML report names files that do not exist: {gone or 'none listed'}")
else:
    print(f"check-plugin: ok: all {len(files)} files named in the HTML report exist")
fail_log = open(os.path.join(work, "run_fail.log"), encoding="utf-8", errors="replace").read()
msg = "do not overlap"
n = fail_log.count(msg)
n_error = sum(1 for ln in fail_log.splitlines() if ln.startswith("ERROR:") and msg in ln)
print(f"check-plugin: failing run states its error {n} time(s), {n_error} as ERROR:")
if n_error != 1 or n > 3:
    failures.append(f"the error of a failing run is printed {n} times:\n{fail_log[-2000:]}")
else:
    print("check-plugin: ok: error of a failing run reported once (plus QGIS's own message-log echoes)")
for failure in failures:
    print(f"check-plugin: FAIL: {failure}", file=sys.stderr)
sys.exit(1 if failures else 0)
EOF
echo "check-plugin: all checks passed ($WORK)"
