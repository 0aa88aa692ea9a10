#!/usr/bin/env bash
# Proof that the production build carries no stand-ins: builds the binary the Dockerfile builds
# (no default features, so no `demo`), then checks its CLI and its bytes. Called by CI.
#   1. `--help` lists neither `demo` nor `sim`, and both are unknown commands (exit 2)
#   2. none of the stand-ins' fixed secrets and fake-auth paths is in the binary
# A debug build is enough: what gets linked is decided by features and cfg, which are the same
# in debug and release, and debug reuses the dependencies CI has just compiled for the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=target/debug/contact-sync
# Constants only crates/contact-sync-sim holds: the 3Dolphins stand-in's password, the OMI and
# EngageLab stand-ins' keys, a path only the 3Dolphins stand-in serves, its refusal message.
STAND_IN_STRINGS=(
    "demo-password"
    "omi-api-key"
    "el-secret"
    "/graph/contacts/contactById"
    "invalid or expired token"
)
failed=0
fail() { echo "FAIL: $*" >&2; failed=1; }

cargo build --quiet --locked --no-default-features --bin contact-sync

help=$("$BIN" --help)
for command in demo sim; do
    if grep -qE "^  $command( |$)" <<<"$help"; then
        fail "\`contact-sync --help\` lists \`$command\`"
    fi
    # `--help` so that a binary which does have the command prints its help instead of
    # serving stand-ins until killed.
    status=0
    "$BIN" "$command" --help >/dev/null 2>&1 || status=$?
    [ "$status" -eq 2 ] || fail "\`contact-sync $command --help\` exited $status, not 2 (usage error)"
done

# `strings` (binutils) when present; otherwise grep reads the binary itself (-a), which finds
# the same constants, so CI needs nothing extra.
if command -v strings >/dev/null 2>&1; then
    text() { strings -a "$BIN"; }
else
    text() { cat "$BIN"; }
fi
# The search must be able to fail: a string the daemon does hold is found.
[ "$(text | grep -a -c -F -- "dead-letters")" -gt 0 ] || fail "the search finds nothing in $BIN"
for s in "${STAND_IN_STRINGS[@]}"; do
    n=$(text | grep -a -c -F -- "$s" || true)
    [ "$n" -eq 0 ] || fail "$BIN holds the stand-ins' \"$s\" ($n times)"
done

if [ "$failed" -ne 0 ]; then
    echo "the production build links stand-in code (see FAIL lines above)" >&2
    exit 1
fi
echo "production build: no demo, no sim, none of ${#STAND_IN_STRINGS[@]} stand-in strings"
