#!/usr/bin/env bash
# One entry point for people and CI: sets up .venv on first use (or when pyproject.toml changes),
# then runs a command in it.
#   ./dev.sh bench [options]   the main job: the quick throughput table (fastdrop bench)
#   ./dev.sh test  [pytest options]   the whole test suite
#   ./dev.sh train|validate [options]  the other fastdrop commands
set -euo pipefail
cd "$(dirname "$0")"
venv="${FASTDROP_VENV:-.venv}"
python="$venv/bin/python"

setup() {
    if [ ! -x "$python" ]; then
        python3 -m venv "$venv"
    fi
    local stamp="$venv/.fastdrop-installed"
    local want
    want="$(cat pyproject.toml dev.sh | sha256sum | cut -d' ' -f1)"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        "$python" -m pip install --quiet --upgrade pip
        # torch is pinned here, not in the library: 2.13.0 is the CPU build this project tests with.
        "$python" -m pip install --quiet -e ".[test,plots,downloads,progress]" "torch==2.13.0"
        echo "$want" > "$stamp"
    fi
}

command="${1:-help}"
shift || true
case "$command" in
    bench|train|validate)
        setup
        exec "$venv/bin/fastdrop" "$command" "$@"
        ;;
    test)
        setup
        exec "$python" -m pytest "$@"
        ;;
    setup)
        setup
        ;;
    *)
        sed -n '2,7p' "$0"
        exit 2
        ;;
esac
