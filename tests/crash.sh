#!/usr/bin/env bash
# Run the SIGKILL crash test with any number of kills (default 1000), in release mode.
#   tests/crash.sh 1000
set -euo pipefail
cd "$(dirname "$0")/.."
TOLLGATE_CRASH_KILLS="${1:-1000}" cargo test --release --test crash -- --nocapture
