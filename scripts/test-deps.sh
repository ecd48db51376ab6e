#!/usr/bin/env bash
# System packages the test suite needs that a fresh machine may lack. The tests
# start their own throwaway Dovecot, Postfix and NSD (tests/peers/) from these
# packages' binaries; they never install anything themselves, because parallel
# test workers doing that at the same moment would fight over apt's lock. Where
# the packages cannot be installed, the tests that need them are skipped with
# the reason. PostgreSQL is used where it answers on 127.0.0.1:5432 (the tests
# say so when it does not).
set -euo pipefail
need=()
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
PATH="$PATH:/usr/sbin:/sbin"
command -v dovecot >/dev/null 2>&1 || need+=(dovecot-imapd)
command -v postfix >/dev/null 2>&1 || need+=(postfix)
command -v nsd >/dev/null 2>&1 || need+=(nsd)  # the test DNS server (tests/peers/dns.py)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing test dependencies: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1 || {
      apt-get update -qq >/dev/null
      apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    }
  else
    echo "warning: missing ${need[*]} (not root or no apt-get); the tests that need them are skipped" >&2
  fi
fi
# Start the machine's PostgreSQL if it is installed but stopped.
if command -v pg_ctlcluster >/dev/null 2>&1 && ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  ver=$(ls /etc/postgresql 2>/dev/null | head -n1)
  [ -n "$ver" ] && pg_ctlcluster --skip-systemctl-redirect "$ver" main start 2>/dev/null || true
fi
exit 0
