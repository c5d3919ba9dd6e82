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
    # A venv whose pip is missing (python3-venv absent when it was made) is rebuilt, not reused.
    if [ ! -x "$python" ] || ! "$python" -m pip --version >/dev/null 2>&1; then
        rm -rf "$venv"
        if ! python3 -m venv "$venv"; then
            echo "dev.sh: 'python3 -m venv' failed; on Debian/Ubuntu install python3-venv" >&2
            exit 1
        fi
    fi
    local stamp="$venv/.fastdrop-installed"
    local want
    want="$("$python" -c 'import hashlib, sys; print(hashlib.sha256(b"".join(open(f, "rb").read() for f in sys.argv[1:])).hexdigest())' pyproject.toml dev.sh)"
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
