#!/bin/sh
# slower_cpu.sh FACTOR COMMAND...: run COMMAND (and every process it starts) with this machine's
# CPUs throttled FACTOR times, to measure what a slower machine of the same core count would take.
#
# Why: `make demo` has a time goal on the slowest 2-core machines our users meet, and we can only
# measure on the one we have. A CFS quota of (cores / FACTOR) CPUs over the cgroup gives work that
# keeps every core busy (extraction, two students side by side) FACTOR times less CPU per second.
# A single-threaded phase is slowed less (it can take up to cores / FACTOR of one core), so
# report such phases separately. Needs root and the cgroup cpu controller (v1 or v2).
set -eu
factor=$1; shift
cores=$(nproc)
period=100000
quota=$(awk -v c="$cores" -v f="$factor" -v p="$period" 'BEGIN { printf "%d", c * p / f }')
name="featcache-slower-$$"
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then     # cgroup v2
  group=/sys/fs/cgroup/$name
  mkdir "$group"
  echo "$quota $period" > "$group/cpu.max"
else                                                   # cgroup v1
  group=/sys/fs/cgroup/cpu/$name
  mkdir "$group"
  echo "$period" > "$group/cpu.cfs_period_us"
  echo "$quota" > "$group/cpu.cfs_quota_us"
fi
trap 'rmdir "$group" 2>/dev/null || true' EXIT
echo "slower_cpu: $cores cores throttled ${factor}x (quota ${quota} us per ${period} us)" >&2
# The shell joins the group first, so COMMAND and all its children inherit it.
sh -c 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"' slower "$group" "$@"
