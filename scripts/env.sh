# Sourced by the other scripts: creates ./.venv on first use and installs deepalign into it.
# torch is pinned here (2.13.0, the CPU wheel on the project's machines); the package itself
# only asks for a range (pyproject.toml), so users keep the torch build they already have.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${DEEPALIGN_VENV:-$root/.venv}"
python="${PYTHON:-python3}"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
stamp="$venv/.deepalign-installed"
want="$(cat "$root/pyproject.toml" "$root/scripts/env.sh" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet "torch==2.13.0"
    "$venv/bin/python" -m pip install --quiet -e "$root[all]"
    echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
cd "$root"
