#!/usr/bin/env bash
# Installs the system packages the local stack needs, if missing: a Java 17+ runtime, Maven,
# the Postgres server, runuser, kcat, psql, and Chromium + chromedriver for the dashboard's browser tests.
# As root it runs apt-get; as another user it runs `sudo apt-get` when sudo works without a password
# prompt (sudo -n), otherwise it prints the `sudo apt-get install` line to run and stops.
set -euo pipefail

missing=()
java_ok() {
  command -v java >/dev/null 2>&1 || return 1
  local v
  v=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)
  [ -n "$v" ] && [ "$v" -ge 17 ]
}
java_ok || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v runuser >/dev/null 2>&1 || missing+=(util-linux)
command -v kcat >/dev/null 2>&1 || missing+=(kcat)
command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
# The dashboard's browser tests: Debian's Chromium and its WebDriver (selenium drives them).
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)

[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=sudo
  else
    echo "finpulse needs these Debian packages: ${missing[*]}" >&2
    echo "install them with: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
else
  SUDO=
fi
echo "installing system packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# openjdk-17 may be gone from newer Debian releases: fall back to the default JRE (17+).
if ! $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"; then
  alt=("${missing[@]/openjdk-17-jre-headless/default-jre-headless}")
  $SUDO apt-get install -y -qq --no-install-recommends "${alt[@]}"
fi
