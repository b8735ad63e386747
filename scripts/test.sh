#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what it needs, then format, lints, the
# Rust tests (unit, exactness, store, training, CLI, Python-loader agreement, replicas and the
# S3 store), the Python loader's own self-check, the Kubernetes manifests' schema check, the API
# fuzzer, the Open Inference Protocol conformance check with tritonclient, the dashboard in a
# real browser, and the Docker end-to-end checks (one service, then the scaled-out stack).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --python
cargo fmt --all -- --check
cargo clippy --release --all-targets -- -D warnings
# An S3-compatible server (moto) for the remote-store tests.
scripts/setup-s3-server.sh
cargo test --release
.venv/bin/python python/test_flowscore_torch.py
# The Kubernetes manifests: rendered and validated against Kubernetes' schemas, offline.
scripts/validate-k8s.sh
# The HTTP API fuzzed from its own OpenAPI document (schemathesis, every check).
scripts/fuzz.sh
# The Open Inference Protocol with a real client (tritonclient[http]).
scripts/oip-conformance.sh
# The dashboard in headless Chromium (Debian's), driven by selenium: every panel, a training job
# followed to its end, the score form against /score, the token kept out of storage and logs.
scripts/setup-browser.sh
# cargo test built target/release/flowscore from these sources (a plain `cargo build` would relink
# it with other dependency features, 2 minutes for nothing).
FLOWSCORE_BIN=target/release/flowscore scripts/browser-test.sh
# The Docker image and compose stack end to end (docker/e2e.sh), where a Docker daemon answers.
if docker info >/dev/null 2>&1; then docker/e2e.sh; else echo "docker not available: skipping docker e2e"; fi
# The scaled-out stack (docker/compose.scale.yaml: a trainer, 3 scorers, HAProxy, Prometheus)
# under load, on the image e2e.sh just built.
if docker info >/dev/null 2>&1; then E2E_SKIP_BUILD=1 docker/scale-e2e.sh; else echo "docker not available: skipping the scale-out e2e"; fi
