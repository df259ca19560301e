#!/usr/bin/env bash
# What the tests need from the operating system, installed when missing (Debian):
#   faketime    clocks that disagree between hosts (tests/chaos/test_faults.py)
#   postgresql  the shared store central's contract and failover tests run on
#   chromium    the real browser the operator page is tested in (driven by playwright, never downloaded)
# Java 17 and Maven (for Kafka) are checked by `evcharge kafka` itself, with a clear line.
set -euo pipefail
missing=()
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || [ -n "$(ls /usr/lib/*/faketime/libfaketime.so.1 2>/dev/null)" ] || missing+=(faketime)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "evcharge's tests need these system packages: ${missing[*]} (Debian: apt-get install ${missing[*]})" >&2
    exit 1
fi
echo "installing ${missing[*]} (Debian packages the tests need)..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
