#!/usr/bin/env bash
# Runs every test (unit, property, integration against the real PostgreSQL and RabbitMQ,
# and the binary as a child process). Starts the services first when they are not running.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
cargo test --locked --features failpoints "$@"
