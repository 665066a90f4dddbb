# Sourced by the project's scripts: one Python environment for everything.
# A venv (not the system Python) so a fresh machine needs nothing but
# python3 with venv; created once and refreshed when pyproject.toml changes.
SDEID_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SDEID_CACHE=${SDEID_CACHE:-$HOME/.cache/sdeid}
SDEID_VENV=${SDEID_VENV:-$SDEID_ROOT/.venv}
export SDEID_ROOT SDEID_CACHE

sdeid_python_env() {
    local stamp="$SDEID_VENV/.sdeid-installed"
    local want
    want=$(sha256sum "$SDEID_ROOT/pyproject.toml" | cut -d' ' -f1)
    if [ ! -x "$SDEID_VENV/bin/python" ]; then
        echo "setting up $SDEID_VENV" >&2
        python3 -m venv "$SDEID_VENV" >&2 || {
            # Debian's python3 needs python3-venv for that.
            "$SDEID_ROOT/scripts/setup-apt" python3-venv && python3 -m venv "$SDEID_VENV" >&2
        }
    fi
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        "$SDEID_VENV/bin/python" -m pip install -q --upgrade pip >&2
        "$SDEID_VENV/bin/python" -m pip install -q -e "$SDEID_ROOT[test]" >&2
        echo "$want" > "$stamp"
    fi
    export PATH="$SDEID_VENV/bin:$PATH"
}
