#!/usr/bin/env bash
# Runs greylist-filter's Redis backend tests against a real redis-server (installed
# with apt-get when missing and running as root). The tests start their own server on
# a loopback port with persistence off; GREYLIST_REQUIRE_REDIS=1 makes a missing
# binary a failure instead of a skip.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "redis-server not found; install it (Debian: apt-get install redis-server)" >&2
    exit 1
  fi
fi
redis-server --version

export GREYLIST_REQUIRE_REDIS=1
cargo test -p greylist-filter --locked --test store_contract --test redis
