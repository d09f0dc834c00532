#!/usr/bin/env bash
# Run the power-loss simulation with any number of cuts per durability (default 1000), in release mode.
#   tests/power_loss.sh 1000
set -euo pipefail
cd "$(dirname "$0")/.."
TOLLGATE_POWER_CUTS="${1:-1000}" cargo test --release --test power_loss -- --nocapture --test-threads=1
