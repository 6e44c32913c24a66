#!/usr/bin/env bash
# Runs every test of every crate of the workspace (unit, property, integration against the real
# PostgreSQL and RabbitMQ, and the binary as a child process), with the service's fail points,
# then each fuzz target for a fixed number of runs from its committed corpus (scripts/fuzz.sh).
# Starts the services first when they are not running.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
cargo test --locked --workspace --features cdr-service/failpoints "$@"
scripts/fuzz.sh
