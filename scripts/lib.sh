# shellcheck shell=bash
# Shared setup steps of scripts/run and scripts/test. Each step is idempotent and quick when
# there is nothing to do.

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    as_root apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

# ensure_debian_packages run|test: what scripts/run needs (python3-venv; Node.js and npm for the
# pinned codex CLI the app role runs; bubblewrap for its sandbox) and, for test, also PostgreSQL, Redis, HAProxy (the e2e
# tests' load balancer) and Chromium (the browser tests, driven by Playwright).
ensure_debian_packages() {
  local mode=${1:?run or test}
  local missing=()
  python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
  command -v node >/dev/null && command -v npm >/dev/null || missing+=(nodejs npm)
  # codex app-server sandboxes anything it would run locally with bubblewrap (and warns in the
  # TUI without it); the gateway runs nothing locally, this is the second line of defence.
  command -v bwrap >/dev/null || missing+=(bubblewrap)
  if [ "$mode" = test ]; then
    command -v pg_ctlcluster >/dev/null || missing+=(postgresql)
    command -v psql >/dev/null || missing+=(postgresql-client)
    command -v redis-server >/dev/null || missing+=(redis-server)
    command -v haproxy >/dev/null || missing+=(haproxy)
    [ -x /usr/bin/chromium ] || missing+=(chromium)
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing Debian packages: ${missing[*]}"
    apt_install "${missing[@]}"
  fi
}

ensure_postgres() {
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    echo "== starting PostgreSQL"
    as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n 1)" main start
    for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
  fi
  if ! psql -h 127.0.0.1 -U postgres -d postgres -tAc "select 1" >/dev/null 2>&1; then
    echo "PostgreSQL at 127.0.0.1:5432 does not accept user postgres without a password;" \
      "set DATABASE_URL to a database the tests may use" >&2
    [ -n "${DATABASE_URL:-}" ] || exit 1
  fi
}

ensure_redis() {
  if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    echo "== starting Redis"
    as_root mkdir -p /var/lib/redis /var/log/redis
    as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log
    for _ in $(seq 1 30); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.5; done
  fi
}

# ensure_venv requirements.txt|requirements-dev.txt: installs the pinned requirements into
# .venv, again only when a requirement file changes. The dev set includes the runtime set, so
# once it is installed scripts/run installs nothing.
ensure_venv() {
  local requirements=$1
  local hash
  hash=$(cat requirements*.txt | sha256sum | cut -c1-16)
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
  fi
  if [ -f ".venv/.installed-$hash-$requirements" ] || [ -f ".venv/.installed-$hash-requirements-dev.txt" ]; then
    return
  fi
  echo "== installing Python packages ($requirements)"
  .venv/bin/pip install -q --disable-pip-version-check -r "$requirements"
  rm -f .venv/.installed-*
  touch ".venv/.installed-$hash-$requirements"
}

# ensure_node_modules prod|all: the npm packages of package-lock.json, again only when
# package.json or the lock changes. prod (scripts/run) is the pinned @openai/codex the app role
# runs (npm ci --omit=dev); all (scripts/test) adds the devDependencies: an older codex for the
# compatibility tests and helm for the chart tests. An "all" install also serves scripts/run.
ensure_node_modules() {
  local mode=$1
  local hash
  hash=$(cat package.json package-lock.json | sha256sum | cut -c1-16)
  if [ -f "node_modules/.installed-$hash-$mode" ] || [ -f "node_modules/.installed-$hash-all" ]; then
    return
  fi
  echo "== installing the pinned codex CLI (npm ci, $mode)"
  local omit=()
  [ "$mode" = all ] || omit=(--omit=dev)
  npm ci --no-audit --no-fund --loglevel=error "${omit[@]}"
  touch "node_modules/.installed-$hash-$mode"
}
