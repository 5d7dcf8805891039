#!/usr/bin/env bash
# CPU time (user+system) that the MTA and the MDA spend per delivered message,
# inbound on port 25 with smtp-source. It moves less than a rate when other
# work shares the machine, but heavy contention (a parallel cargo build)
# still inflates it up to 2x: compare only runs made at a similar load
# average. Used to record what an optimisation bought (docs/BENCHMARKS.md,
# "CPU per message").
#   usage: tests/bench/cpu-per-message.sh [MESSAGES=2000] [SESSIONS=20] [SIZE=1024]
#   LOG_LEVEL=warn sets the roles' log filter (default info).
#   CORREO_BENCH=dir/correo-bench runs the roles next to that binary instead
#   (an A/B comparison of two builds).
# Needs release binaries (cargo build --release -p mta -p mda -p msa -p correo-dns
# -p correo-bench) and smtp-source (../shared/peers/postfix/setup.sh installs it).
set -euo pipefail
n=${1:-2000}; s=${2:-20}; size=${3:-1024}
root=$(cd "$(dirname "$0")/../.." && pwd)
out=$(mktemp)
"${CORREO_BENCH:-$root/target/release/correo-bench}" --serve 3600 --idle "${IDLE:-0}" --log-level "${LOG_LEVEL:-info}" > "$out" &
bench=$!
# correo-bench stops the roles it started on SIGTERM; killing them here too
# covers a harness that was killed outright.
trap 'kill $bench $(awk '"'"'/^pid /{print $3}'"'"' "$out") 2>/dev/null; rm -f "$out"' EXIT
for _ in $(seq 120); do grep -q '^pid msa' "$out" && break; sleep 0.5; done
smtp=$(awk '/^smtp /{print $2}' "$out"); new=$(awk '/^maildir /{print $2}' "$out")
mta=$(awk '/^pid mta /{print $3}' "$out"); mda=$(awk '/^pid mda /{print $3}' "$out")
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
aside=0
run() {
  # Set the delivered files aside instead of deleting them: mass deletes
  # slow the next run's file creations (docs/BENCHMARKS.md, run 4).
  aside=$((aside + 1))
  # (Before the first delivery there is no Maildir yet: nothing to move.)
  if [ -d "$new" ]; then mv "$new" "$new.aside.$$.$aside" && mkdir -m 700 "$new"; fi
  local m0 d0 t0; m0=$(ticks "$mta"); d0=$(ticks "$mda"); t0=$(date +%s.%N)
  smtp-source -l "$size" -m "$1" -s "$s" -f a@bench.test -t user@bench.test "$smtp"
  while [ "$(ls "$new" | wc -l)" -lt "$1" ]; do sleep 0.05; done
  local t1; t1=$(date +%s.%N)
  local m1 d1; m1=$(ticks "$mta"); d1=$(ticks "$mda")
  echo "$1 $m0 $m1 $d0 $d1 $t0 $t1"
}
run 200 >/dev/null   # warm-up
read -r cnt m0 m1 d0 d1 t0 t1 < <(run "$n")
awk -v n="$cnt" -v m="$((m1 - m0))" -v d="$((d1 - d0))" -v hz="$hz" -v t0="$t0" -v t1="$t1" 'BEGIN {
  printf "messages %d, %d sessions, %d bytes: %.0f/s wall; CPU per message: MTA %.0f us, MDA %.0f us, total %.0f us\n",
    n, '"$s"', '"$size"', n / (t1 - t0), 1e6 * m / hz / n, 1e6 * d / hz / n, 1e6 * (m + d) / hz / n }'
