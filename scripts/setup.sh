#!/usr/bin/env bash
# Sets up a fresh machine for the test suite: the Debian packages the suites
# drive (nginx for HTTP range tests against a real server; Debian's chromium
# for the browser tests — no browser is ever downloaded; python3-jinja2 as a
# second Jinja implementation for the chat templates; curl), then the npm
# packages, which also build the kernels and dist/ (npm's prepare).
set -euo pipefail
cd "$(dirname "$0")/.."
export npm_config_update_notifier=false npm_config_fund=false npm_config_audit=false
SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo
apt_updated=
apt_install() {
  [ -n "$apt_updated" ] || { $SUDO apt-get update && apt_updated=1; }
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"
}
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  apt_install nginx
fi
if [ ! -x /usr/bin/chromium ]; then
  apt_install chromium
fi
if ! command -v curl >/dev/null 2>&1; then
  apt_install curl
fi
# Python's Jinja2: the chat-template tests render every template with it too.
if ! python3 -c 'import jinja2' >/dev/null 2>&1; then
  apt_install python3 python3-jinja2
fi
# `npm install` honours package-lock.json; `npm ci` refuses it here because the
# registry this machine reaches lacks other platforms' optional binaries
# (@deno/darwin-*, @msgpackr-extract/*-darwin-*), which npm ci insists on listing.
npm install --no-audit --no-fund
