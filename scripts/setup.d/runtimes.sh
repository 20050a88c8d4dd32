# shellcheck shell=bash
# The third-party runtimes the runtime-accuracy tests put between a caller and a
# backend (integration/tests/runtimes.rs), sourced by scripts/setup.sh:
# nginx-light (an event-loop reverse proxy), golang-go (a Go net/http middle tier,
# built at test time) and nodejs (a Node.js http middle tier), all from Debian.
apt_install nginx-light golang-go
command -v node >/dev/null 2>&1 || apt_install nodejs
# Debian's package starts a system nginx on port 80; the tests run their own.
if pgrep -x nginx >/dev/null 2>&1 && [ -f /run/nginx.pid ]; then
  nginx -s stop 2>/dev/null || true
fi
