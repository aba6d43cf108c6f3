#!/usr/bin/env bash
# Faults, tried as a user would (issue 22; docs/batch.md "Faults"). From the project root, as root (for the
# 1.5 MB tmpfs), after scripts/setup.sh:   bash scripts/check_faults.sh [WORKDIR]     (or: make check-faults)
#
#  1. disk full: the sample pair with --overwrite into a 1.5 MB tmpfs that holds a previous run
#  2. two runs started together into one fresh folder
#  3. six SIGKILLs of --overwrite runs (five spread over the run, one as the first output file appears)
#  4. a batch into a folder holding a user's own coregistered.tif and .notes.tmp-mine.txt
#  5. SIGTERM to a 3-pair --scheduler sync batch after its first pair, then the rerun
#  6. a real Dask scheduler with two separate workers, the scheduler killed after the first pair of eight;
#     then the scheduler started again with no worker
# Prints one PASS/FAIL line per check and a closing count; exit status 1 if any check failed.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY="$ROOT/.venv/bin/python"
DASK="$ROOT/.venv/bin/dask"
W=${1:-$(mktemp -d /tmp/hsscl-faults.XXXXXX)}
mkdir -p "$W"
REF="$ROOT/resources/sample/s2_reference.tif"
TGT="$ROOT/resources/sample/s1_target_misregistered.tif"
export QT_QPA_PLATFORM=offscreen PYTHONUNBUFFERED=1
HS=("$PY" -m hsscl.engine.cli)
FAILS=0
PASSES=0
STARTED_PIDS=()

pass() { echo "PASS  $*"; PASSES=$((PASSES + 1)); }
fail() { echo "FAIL  $*"; FAILS=$((FAILS + 1)); }
check() { local what=$1; shift; if "$@"; then pass "$what"; else fail "$what"; fi; }
cleanup() {
  for p in "${STARTED_PIDS[@]}"; do kill -KILL -- "-$p" 2>/dev/null || kill -KILL "$p" 2>/dev/null; done
  mountpoint -q "$W/disk" 2>/dev/null && umount -l "$W/disk"
}
trap cleanup EXIT

# verify FOLDER: its report.json lists every output with size and sha256 and they all match (prints why not)
verify() { "$PY" - "$1" <<'EOF'
import sys
from hsscl.engine.io.outputset import verify
from hsscl.engine.pipeline import OUTPUT_NAMES
rec, problems = verify(sys.argv[1], required=tuple(OUTPUT_NAMES.values()))
if problems:
    print("   ", sys.argv[1], "does not verify:", "; ".join(problems))
sys.exit(1 if problems else 0)
EOF
}
# no temporary: no .hsscl-partial folder and no '*.tmp-*' file under FOLDER
no_temporary() { [ -z "$(find "$1" \( -name .hsscl-partial -o -name '*.tmp-*' \) -print -quit 2>/dev/null)" ]; }
sums() { (cd "$1" && find . -type f ! -path './.hsscl-partial/*' -print0 | sort -z | xargs -0 sha256sum); }
now() { date +%s.%N; }
elapsed() { "$PY" -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$2"; }

echo "== work folder: $W"

# ---------------------------------------------------------------------------------------------- 1. disk full
echo "== 1. disk full (1.5 MB tmpfs holding a previous run)"
mkdir -p "$W/disk"
if mount -t tmpfs -o size=1500k tmpfs "$W/disk" 2>/dev/null; then
  if ! "${HS[@]}" coregister "$REF" "$TGT" -o "$W/disk/out" -q >"$W/disk1.out" 2>"$W/disk1.err"; then
    echo "   (the previous run does not fit on the tmpfs itself: made elsewhere and copied)"
    rm -rf "$W/disk/out"
    "${HS[@]}" coregister "$REF" "$TGT" -o "$W/prev" -q >/dev/null 2>&1 && cp -a "$W/prev" "$W/disk/out"
  fi
  before=$(sums "$W/disk/out")
  df -k "$W/disk" | tail -1 | awk '{print "   tmpfs: " $2 " kB, " $3 " kB used, " $4 " kB free"}'
  "${HS[@]}" coregister "$REF" "$TGT" -o "$W/disk/out" -q --overwrite >"$W/disk2.out" 2>"$W/disk2.err"
  rc=$?
  echo "   exit $rc; stderr: $(tail -1 "$W/disk2.err")"
  check "disk full: non-zero exit" [ "$rc" -ne 0 ]
  check "disk full: message says 'full'" grep -q "full" "$W/disk2.err"
  check "disk full: no traceback" bash -c "! grep -q Traceback '$W/disk2.err' '$W/disk2.out'"
  check "disk full: previous set intact (byte-identical, verifies)" bash -c "[ \"\$1\" = \"\$2\" ]" _ "$before" "$(sums "$W/disk/out")"
  check "disk full: previous set verifies" verify "$W/disk/out"
  check "disk full: no temporary left" no_temporary "$W/disk"
  umount -l "$W/disk"
else
  fail "disk full: cannot mount a tmpfs here (run as root); tests/engine/test_faults.py uses a fault-injecting wrapper instead"
fi

# ---------------------------------------------------------------------------------------------- 2. race
echo "== 2. two runs started together into one fresh folder"
t0=$(now)
"${HS[@]}" coregister "$REF" "$TGT" -o "$W/race" -q >"$W/race1.out" 2>"$W/race1.err" & p1=$!
"${HS[@]}" coregister "$REF" "$TGT" -o "$W/race" -q >"$W/race2.out" 2>"$W/race2.err" & p2=$!
wait $p1; r1=$?
wait $p2; r2=$?
RUN_S=$(elapsed "$t0" "$(now)")
echo "   exits: $r1 and $r2 (${RUN_S} s)"
for i in 1 2; do [ "$(eval echo \$r$i)" -ne 0 ] && echo "   loser's last line: $(tail -1 "$W/race$i.err")"; done
check "race: exactly one run succeeds" bash -c "[ \$(( ($r1 == 0) + ($r2 == 0) )) -eq 1 ]"
loser=$([ "$r1" -ne 0 ] && echo 1 || echo 2)
check "race: the other's last line says another run holds the folder" \
  bash -c "tail -1 '$W/race$loser.err' | grep -q 'another run (pid [0-9]*, started [0-9:]*) is writing into'"
check "race: the folder verifies" verify "$W/race"

# ---------------------------------------------------------------------------------------------- 3. kills
echo "== 3. six SIGKILLs of --overwrite runs"
# the length of one run, measured here (the matching may change speed): a full --overwrite run
t0=$(now)
"${HS[@]}" coregister "$REF" "$TGT" -o "$W/kill" -q >/dev/null 2>&1
T=$(elapsed "$t0" "$(now)")
echo "   one run: ${T} s"
k=0
for frac in 0.1 0.3 0.5 0.7 0.9 first-output; do
  k=$((k + 1))
  setsid "${HS[@]}" coregister "$REF" "$TGT" -o "$W/kill" -q --overwrite >"$W/kill$k.out" 2>"$W/kill$k.err" &
  pid=$!
  STARTED_PIDS+=("$pid")
  if [ "$frac" = first-output ]; then
    # as soon as the run's first output file appears (in its own folder .hsscl-partial/<run id>/)
    "$PY" - "$W/kill" "$pid" <<'EOF'
import os, signal, sys, time
folder, pid = sys.argv[1], int(sys.argv[2])
part = os.path.join(folder, ".hsscl-partial")
deadline = time.time() + 600
while time.time() < deadline:
    try:
        runs = [os.path.join(part, d) for d in os.listdir(part) if d != "lock"]
        if any(os.listdir(r) for r in runs if os.path.isdir(r)):
            break
    except OSError:
        pass
    time.sleep(0.002)
os.kill(pid, signal.SIGKILL)
print(f"   kill 6: SIGKILL as the first output file appeared ({sorted(f for r in runs for f in os.listdir(r))})")
EOF
  else
    delay=$("$PY" -c "import sys; print(f'{float(sys.argv[1]) * float(sys.argv[2]):.2f}')" "$T" "$frac")
    sleep "$delay"
    kill -KILL "$pid" 2>/dev/null && echo "   kill $k: SIGKILL after ${delay} s (${frac} of a run)" \
      || echo "   kill $k: the run had already ended before ${delay} s"
  fi
  { wait "$pid"; } 2>/dev/null
  check "kill $k ($frac): the folder verifies against report.json" verify "$W/kill"
  left=$(find "$W/kill/.hsscl-partial" -mindepth 1 -maxdepth 1 -type d 2>/dev/null | wc -l)
  check "kill $k ($frac): at most the killed run's own folder is left ($left)" [ "$left" -le 1 ]
done
"${HS[@]}" coregister "$REF" "$TGT" -o "$W/kill" -q --overwrite >"$W/kill-next.out" 2>"$W/kill-next.err"
check "kills: the next run succeeds" [ $? -eq 0 ]
check "kills: the next run leaves no temporary file" no_temporary "$W/kill"
check "kills: the folder verifies after the next run" verify "$W/kill"

# ---------------------------------------------------------------------------------------------- 4. user's files
echo "== 4. a batch into a folder holding a user's own files"
mkdir -p "$W/users/mine"
printf 'my own raster, not a GeoTIFF\n' >"$W/users/mine/coregistered.tif"
printf 'my notes\n' >"$W/users/mine/.notes.tmp-mine.txt"
printf 'my notes at the top\n' >"$W/users/.notes.tmp-mine.txt"
before=$(sums "$W/users")
printf 'id,reference,target\nmine,%s,%s\nother,%s,%s\n' "$REF" "$TGT" "$REF" "$TGT" >"$W/users.csv"
"${HS[@]}" batch "$W/users.csv" -o "$W/users" --scheduler sync >"$W/users.out" 2>"$W/users.err"
rc=$?
grep -E '^\[|failed' "$W/users.out" | sed 's/^/   /'
check "user's files: batch exit 1 (that row failed, the other went on)" [ "$rc" -eq 1 ]
check "user's files: the row says the folder holds files this batch did not write" \
  grep -q "already holds files this batch did not write (.notes.tmp-mine.txt, coregistered.tif); move them or use --overwrite" "$W/users/summary.csv"
check "user's files: byte-identical" bash -c "[ \"\$1\" = \"\$2\" ]" _ "$before" "$(sums "$W/users" | grep -v -e summary.csv -e './other/')"
check "user's files: the other row verifies" verify "$W/users/other"

# ---------------------------------------------------------------------------------------------- 5. SIGTERM
echo "== 5. SIGTERM to a 3-pair --scheduler sync batch after its first pair"
printf 'id,reference,target\np1,%s,%s\np2,%s,%s\np3,%s,%s\n' "$REF" "$TGT" "$REF" "$TGT" "$REF" "$TGT" >"$W/three.csv"
"${HS[@]}" batch "$W/three.csv" -o "$W/term" --scheduler sync >"$W/term.out" 2>"$W/term.err" &
pid=$!
for _ in $(seq 1 6000); do [ -f "$W/term/p1/report.json" ] && break; sleep 0.1; done
sleep 1
kill -TERM "$pid"
wait "$pid"
rc=$?
echo "   exit $rc; $(grep -c . "$W/term/summary.csv" 2>/dev/null) summary lines"
cut -d, -f2,5 "$W/term/summary.csv" 2>/dev/null | sed 's/^/   /'
check "SIGTERM: summary.csv written" [ -f "$W/term/summary.csv" ]
check "SIGTERM: the first pair ok, the others cancelled" bash -c \
  "cut -d, -f2,5 '$W/term/summary.csv' | tr '\n' ' ' | grep -q 'p1,ok p2,cancelled p3,cancelled'"
"${HS[@]}" batch "$W/three.csv" -o "$W/term" --scheduler sync >"$W/term2.out" 2>"$W/term2.err"
rc=$?
cut -d, -f2,5 "$W/term/summary.csv" | sed 's/^/   rerun: /'
check "SIGTERM: the rerun completes all three (exit 0)" [ "$rc" -eq 0 ]
ok=0; for p in p1 p2 p3; do verify "$W/term/$p" || ok=1; done
check "SIGTERM: all three verify" [ "$ok" -eq 0 ]
check "SIGTERM: no temporary left" no_temporary "$W/term"

# ---------------------------------------------------------------------------------------------- 6. Dask
echo "== 6. a real Dask scheduler with two separate workers; the scheduler killed after the first pair of eight"
PORT=$("$PY" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
ADDR="tcp://127.0.0.1:$PORT"
printf 'id,reference,target\n' >"$W/eight.csv"
for i in 1 2 3 4 5 6 7 8; do printf 'd%s,%s,%s\n' "$i" "$REF" "$TGT" >>"$W/eight.csv"; done
setsid "$DASK" scheduler --host 127.0.0.1 --port "$PORT" --no-dashboard >"$W/scheduler.log" 2>&1 &
SCHED=$!; STARTED_PIDS+=("$SCHED")
sleep 3
WORKERS=()
for i in 1 2; do
  setsid "$DASK" worker "$ADDR" --nthreads 1 --nworkers 1 --no-dashboard --memory-limit 0 >"$W/worker$i.log" 2>&1 &
  WORKERS+=($!); STARTED_PIDS+=("$!")
done
"${HS[@]}" batch "$W/eight.csv" -o "$W/dask" --scheduler "$ADDR" >"$W/dask.out" 2>"$W/dask.err" &
BATCH=$!
for _ in $(seq 1 6000); do ls "$W"/dask/d*/report.json >/dev/null 2>&1 && break; sleep 0.2; done
kill -KILL -- "-$SCHED"
t_kill=$(now)
{ wait "$SCHED"; } 2>/dev/null
echo "   scheduler $ADDR killed after the first pair ($(ls "$W"/dask/d*/report.json 2>/dev/null | wc -l) report.json)"
for _ in $(seq 1 1500); do kill -0 "$BATCH" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$BATCH" 2>/dev/null; then kill -KILL "$BATCH"; fi
wait "$BATCH"
rc=$?
took=$(elapsed "$t_kill" "$(now)")
echo "   batch exit $rc, ${took} s after the kill; last line: $(tail -1 "$W/dask.out")"
cut -d, -f2,5 "$W/dask/summary.csv" 2>/dev/null | tr '\n' ' ' | sed 's/^/   /'; echo
check "lost scheduler: non-zero exit" [ "$rc" -ne 0 ]
check "lost scheduler: ended within two minutes of the kill" "$PY" -c "import sys; sys.exit(float(sys.argv[1]) > 120)" "$took"
check "lost scheduler: the last line names the scheduler" bash -c "tail -1 '$W/dask.out' | grep -qF '$ADDR'"
check "lost scheduler: summary.csv has 9 lines" [ "$(wc -l <"$W/dask/summary.csv" 2>/dev/null)" -eq 9 ]
check "lost scheduler: no row advises on memory" bash -c "! grep -qi memory '$W/dask/summary.csv'"
for w in "${WORKERS[@]}"; do kill -KILL -- "-$w" 2>/dev/null; { wait "$w"; } 2>/dev/null; done
sleep 1
echo "== 6b. the scheduler started again, with no worker"
setsid "$DASK" scheduler --host 127.0.0.1 --port "$PORT" --no-dashboard >"$W/scheduler2.log" 2>&1 &
SCHED2=$!; STARTED_PIDS+=("$SCHED2")
sleep 3
t0=$(now)
"${HS[@]}" batch "$W/eight.csv" -o "$W/dask" --scheduler "$ADDR" --wait-workers 40 >"$W/dask2.out" 2>"$W/dask2.err" &
BATCH=$!
seen=""
for _ in $(seq 1 300); do
  if grep -q "waiting for workers on $ADDR" "$W/dask2.out" 2>/dev/null; then seen=$(elapsed "$t0" "$(now)"); break; fi
  sleep 0.1
done
echo "   'waiting for workers' after ${seen:-never} s: $(grep -m1 'waiting for workers' "$W/dask2.out")"
check "no workers: a line saying that it waits for workers within 30 s" [ -n "$seen" ]
wait "$BATCH"
rc=$?
echo "   exit $rc after $(elapsed "$t0" "$(now)") s; last line: $(tail -1 "$W/dask2.out")"
check "no workers: gives up after --wait-workers with a clear message" bash -c \
  "[ $rc -ne 0 ] && tail -1 '$W/dask2.out' | grep -q 'no Dask worker connected'"
kill -KILL -- "-$SCHED2" 2>/dev/null
{ wait "$SCHED2"; } 2>/dev/null

echo "== $PASSES passed, $FAILS failed (logs in $W)"
[ "$FAILS" -eq 0 ]
