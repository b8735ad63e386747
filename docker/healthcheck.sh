#!/bin/bash
# HEALTHCHECK of the flowscore image: exit 0 when GET /ready answers 200. The image has no curl;
# bash's /dev/tcp speaks the HTTP. The port comes from FLOWSCORE_BIND (default 8080).
bind=${FLOWSCORE_BIND:-0.0.0.0:8080}
port=${1:-${bind##*:}}
{ exec 3<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null || { echo "nothing listening on port $port" >&2; exit 1; }
printf 'GET /ready HTTP/1.1\r\nHost: localhost\r\nUser-Agent: flowscore-healthcheck\r\nConnection: close\r\n\r\n' >&3
IFS= read -r -t 5 status <&3 || exit 1
case "$status" in
  "HTTP/1.1 200"* | "HTTP/1.0 200"*) exit 0 ;;
  *) echo "not ready: ${status%$'\r'}" >&2; exit 1 ;;
esac
