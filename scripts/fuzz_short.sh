#!/usr/bin/env bash
# Run every fuzz target for a short time (default 60 s each) so that regressions show:
# the output parser and the checkpoint loader. Installs the nightly toolchain and
# cargo-fuzz when missing. Longer runs: FUZZ_SECONDS=600 scripts/fuzz_short.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-60}"
# Faster to build and run than AddressSanitizer; the crate has no unsafe code on these
# paths that ASan would judge (use SANITIZER=address for the full check).
sanitizer="${SANITIZER:-none}"
# FUZZ_PROFILE=dev (what CI uses) builds without optimisation: much faster to build,
# slower to run.
profile=""
[ "${FUZZ_PROFILE:-release}" = dev ] && profile="--dev"

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

scripts/fuzz_seeds.sh >/dev/null
cd fuzz
cargo +nightly fuzz build $profile --sanitizer "$sanitizer"
cargo +nightly fuzz run $profile --sanitizer "$sanitizer" parse_output -- \
  -dict=parse_output.dict -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 2>&1 | tail -15
cargo +nightly fuzz run $profile --sanitizer "$sanitizer" load_checkpoint corpus/load_checkpoint -- \
  -max_total_time="$seconds" -max_len=240000 -rss_limit_mb=2048 -timeout=30 -print_final_stats=1 2>&1 | tail -15
