#!/usr/bin/env bash
# Miri on the mapped-memory module and the word protocols (issue 20, item 7).
#
# Runs chosen unit tests of the library under Miri, by exact name, in four groups with their
# own MIRIFLAGS (docs/RELIABILITY.md, "Miri", says why each test is or is not here). Installs
# the nightly toolchain with miri and rust-src when this machine lacks it; if that install
# fails (no network to the toolchain server), says so and exits 0. Every other failure,
# including a test named here that no longer exists, exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

have_miri() {
    cargo +nightly miri --version >/dev/null 2>&1 &&
        rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'
}

if ! have_miri; then
    echo "+ rustup toolchain install nightly --profile minimal --component miri,rust-src"
    if ! rustup toolchain install nightly --profile minimal --component miri,rust-src; then
        echo "miri: the nightly toolchain with miri and rust-src could not be installed" \
            "(no network to the toolchain server?): Miri runs skipped"
        exit 0
    fi
    # An already installed nightly may still lack the components.
    if ! have_miri; then
        echo "+ rustup component add --toolchain nightly miri rust-src"
        if ! rustup component add --toolchain nightly miri rust-src; then
            echo "miri: the miri and rust-src components could not be installed: Miri runs skipped"
            exit 0
        fi
    fi
fi
cargo +nightly miri --version
echo "+ cargo +nightly miri setup"
cargo +nightly miri setup

# run FLAGS TEST...: the named tests (exact names) under MIRIFLAGS=FLAGS; fails unless every
# one of them ran and passed.
run() {
    local flags="$1"
    shift
    local log
    log="$(mktemp)"
    echo "+ MIRIFLAGS=\"$flags\" cargo +nightly miri test --lib -- --exact $*"
    local start=$SECONDS
    if ! MIRIFLAGS="$flags" cargo +nightly miri test --lib -- --exact "$@" 2>&1 | tee "$log"; then
        rm -f "$log"
        echo "miri: FAILED (see above)"
        exit 1
    fi
    local passed
    passed="$(sed -n 's/^test result: ok\. \([0-9]*\) passed.*/\1/p' "$log" | tail -n 1)"
    rm -f "$log"
    if [ "${passed:-0}" != "$#" ]; then
        echo "miri: ${passed:-0} tests passed, $# named: a test named in .ci/miri.sh was renamed or removed"
        exit 1
    fi
    echo "miri: $# tests passed in $((SECONDS - start)) s"
}

total_start=$SECONDS

# 1. Strict provenance, Stacked Borrows (the default), isolation on: the mapped-memory words
#    (an anonymous map, which Miri emulates), the window word protocols on plain atomics, the
#    exact rings, the idempotency state words and response codec, the file format codecs.
run "-Zmiri-strict-provenance" \
    storage::raw::tests::words_are_bounds_checked \
    storage::format::tests::header_round_trip_and_checks \
    storage::format::tests::segment_header_round_trip \
    storage::format::tests::segment_word_round_trip_and_check \
    storage::format::tests::two_windows_and_a_32_byte_key_fit_one_line \
    window::exact::tests::backwards_clock_uses_newest_time \
    window::exact::tests::five_per_minute_exactly \
    window::sliding::tests::a_clock_behind_the_head_counts_in_the_head \
    window::sliding::tests::counts_to_the_limit_and_a_refusal_writes_nothing \
    window::sliding::tests::damaged_words_are_not_consistent \
    window::sliding::tests::frozen_windows_take_nothing_and_expire_for_the_compactor \
    window::sliding::tests::lateness_table \
    window::sliding::tests::out_of_range_shapes_are_refused \
    window::sliding::tests::quota_comes_back_one_sub_window_at_a_time \
    window::sliding::tests::recovery_never_under_counts_a_half_done_rotation \
    window::sliding::tests::ring_counters_pack_across_word_boundaries \
    window::sliding::tests::take_back_from_the_head_and_from_the_ring \
    window::sliding::tests::words_per_window \
    idempotency::codec::tests::round_trip_and_garbage \
    idempotency::record::tests::layouts \
    idempotency::record::tests::state_words_round_trip

# 2. The same, with isolation off: the system clock reads the host's clock through
#    storage/sys.rs (clock_gettime, CLOCK_REALTIME_COARSE).
run "-Zmiri-strict-provenance -Zmiri-disable-isolation" \
    clock::tests::system_clock_is_wall_clock

# 3. Stacked Borrows, exposed provenance, leaks ignored: an in-memory store (anonymous maps,
#    the index, the header's words) without its compactor. crossbeam-epoch 0.9 casts integers
#    to pointers (refused under strict provenance) and keeps its thread registration and
#    retired tables until exit (reported as leaks). This test does not reach crossbeam-epoch's
#    Stacked Borrows error (below); if it ever does, move it to group 4.
run "-Zmiri-ignore-leaks" \
    engine::seen::tests::the_newest_time_word_bounds_every_time_from_above_and_expiry_from_below

# 4. Tree Borrows, exposed provenance, leaks ignored: the index's tables in raw.rs's EpochCell.
#    Under Stacked Borrows this test stops in crossbeam-epoch, not in tollgate: a pin's
#    collection walks the epoch's thread list (Global::try_advance, internal.rs:567), the error
#    reported as crossbeam-rs/crossbeam#545; crossbeam's own CI runs Miri under Tree Borrows.
run "-Zmiri-tree-borrows -Zmiri-ignore-leaks" \
    storage::index::tests::insert_find_remove_resize

echo "miri: all runs passed in $((SECONDS - total_start)) s (after the toolchain check and setup)"
