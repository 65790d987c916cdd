#!/usr/bin/env bash
# Installs the pinned Home Assistant Core of tests/home_assistant.rs into
# .venv-ha (cached: a second run only checks it) and pre-installs the
# requirements of every integration the test loads, so that Home Assistant
# starts with --skip-pip and needs no network.
#
# Prints the venv's python on its last line; .ci/run exports it as
# E2M_HA_PYTHON.
set -euo pipefail
cd "$(dirname "$0")/../.."

HA_VERSION=2025.4.4
# E2M_HA_VENV: another venv folder (to measure a cold install beside the cache).
VENV=${E2M_HA_VENV:-.venv-ha}

# Home Assistant 2025.4 needs Python 3.13; Debian's python3 may be older,
# pyenv's is the one CI has.
find_python() {
    local p
    for p in "${E2M_HA_BASE_PYTHON:-}" /root/.pyenv/versions/3.13*/bin/python3 "$(command -v python3.13 || true)"; do
        if [ -n "$p" ] && [ -x "$p" ] && "$p" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))'; then
            echo "$p"
            return 0
        fi
    done
    echo "no Python 3.13 found (install it with pyenv, or set E2M_HA_BASE_PYTHON)" >&2
    return 1
}

marker="$VENV/.e2m-installed"
want="homeassistant==$HA_VERSION $(sha256sum tests/ha/requirements.py | cut -c1-16)"
if [ -x "$VENV/bin/python" ] && [ "$(cat "$marker" 2>/dev/null)" = "$want" ]; then
    echo "Home Assistant $HA_VERSION already in $VENV" >&2
    echo "$(cd "$VENV" && pwd)/bin/python"
    exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
    "$(find_python)" -m venv "$VENV" >&2
fi
# Only the python path goes to stdout (.ci/run captures it).
# Three tries: a connection reset by PyPI once failed a CI run here.
pip() {
    local n
    for n in 1 2 3; do
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check --retries 10 "$@" >&2 && return 0
        [ "$n" = 3 ] && return 1
        echo "pip install failed (try $n of 3), again in $((n * 10)) s" >&2
        sleep $((n * 10))
    done
}
pip "homeassistant==$HA_VERSION"
# The integrations' own requirements, from their manifests (pinned there).
reqs_text="$("$VENV/bin/python" tests/ha/requirements.py)"
mapfile -t reqs <<<"$reqs_text"
pip "${reqs[@]}"
"$VENV/bin/python" -c 'import homeassistant.const as c; print("Home Assistant", c.__version__)' >&2
echo "$want" >"$marker"
echo "$(cd "$VENV" && pwd)/bin/python"
