# Shared by the Docker end-to-end checks (docker/e2e.sh, docker/scale-e2e.sh): logging, timing,
# JSON access, free ports, the compose command and the build's CA certificates. Sourced after
# `cd` to the repository root, with E2E_NAME set to the script's name for its log lines.

say() { printf '%s: %s\n' "$E2E_NAME" "$*"; }
fail() {
  printf '%s: FAIL: %s\n' "$E2E_NAME" "$*" >&2
  exit 1
}
now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$2"; }
# jq-less JSON access: `json EXPR < body` evaluates EXPR with `d` bound to the parsed body.
json() { python3 -c "import json, sys; d = json.load(sys.stdin); print($1)"; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# docker compose (v2 plugin) where there is one, else Debian's docker-compose (v1).
if docker compose version >/dev/null 2>&1; then
  compose_cmd=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  compose_cmd=(docker-compose)
else
  say "installing Debian's docker-compose"
  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker-compose >/dev/null
  compose_cmd=(docker-compose)
fi

# Behind a TLS-intercepting proxy the image's builder must trust what the host trusts (see
# docker/ca-certificates/README.md).
trust_host_ca() {
  if ! ls docker/ca-certificates/*.crt >/dev/null 2>&1 && ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
    cp /usr/local/share/ca-certificates/*.crt docker/ca-certificates/
    say "copied the host's local CA certificates into docker/ca-certificates/ for the build"
  fi
}
