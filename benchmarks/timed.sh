#!/bin/sh
# timed.sh FILE LABEL COMMAND...: run COMMAND; when it succeeds, append its wall seconds and LABEL to FILE.
# `make demo` uses it to print where the time went.
file=$1; label=$2; shift 2
start=$(date +%s)
"$@" || exit $?
printf '%5d s  %s\n' $(( $(date +%s) - start )) "$label" >> "$file"
