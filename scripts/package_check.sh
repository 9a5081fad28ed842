#!/usr/bin/env bash
# Packaging check (run by scripts/test.sh): build the sdist and the wheel with `python -m build`
# (the wheel from the sdist), `twine check` them, check that both carry LICENSE, then install the
# wheel -- not the source tree -- into a fresh virtual environment that has only the core
# dependencies (torch, numpy) and run `import deepalign` and the README's drop-in snippet there,
# from a folder outside the checkout.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
work="$(mktemp -d "${TMPDIR:-/tmp}/deepalign-package.XXXXXX")"
trap 'rm -rf "$work"' EXIT

python -m build --outdir "$work/dist" . > "$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
twine check --strict "$work"/dist/*
python - "$work/dist" <<'EOF'
import sys, tarfile, zipfile
from pathlib import Path

dist = Path(sys.argv[1])
wheel, = dist.glob("*.whl")
sdist, = dist.glob("*.tar.gz")
wheel_names = zipfile.ZipFile(wheel).namelist()
sdist_names = tarfile.open(sdist).getnames()
assert any(n.endswith(".dist-info/licenses/LICENSE") for n in wheel_names), wheel_names
assert f"{sdist.name[:-7]}/LICENSE" in sdist_names, sdist_names[:20]
print(f"LICENSE in {wheel.name} and {sdist.name}")
EOF

python -m venv "$work/venv"
quiet_pip() { "$work/venv/bin/python" -m pip install --quiet --no-compile "$@" > "$work/pip.log" 2>&1 \
    || { cat "$work/pip.log"; exit 1; }; }
quiet_pip "torch==2.13.0" numpy  # the core dependencies only (torch pinned as in env.sh)
quiet_pip "$work"/dist/*.whl
cd "$work"  # away from the checkout: nothing may come from the source tree
"$work/venv/bin/python" -c "import deepalign"
"$work/venv/bin/python" - "$OLDPWD/README.md" "$work/venv" <<'EOF'
import re
import sys
from pathlib import Path

import deepalign

venv = Path(sys.argv[2]).resolve()
assert venv in Path(deepalign.__file__).resolve().parents, deepalign.__file__
optional = {"transformers", "matplotlib", "tqdm", "lightning", "scipy", "sklearn"}
assert not optional & {m.split(".")[0] for m in sys.modules}, "optional module imported"
section = Path(sys.argv[1]).read_text().split("## Drop the loss into your model", 1)[1]
snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
exec(compile(snippet, "README.md: drop-in snippet", "exec"), {"__name__": "__main__"})
print(f"wheel deepalign {deepalign.__version__}: import and README drop-in snippet OK")
EOF

# The command from the wheel alone: the console script, python -m deepalign, and a table
# reproduced end to end on synthetic data (seconds), with its outputs written.
"$work/venv/bin/deepalign" --help > "$work/help.txt"
grep -q "reproduce" "$work/help.txt" || { cat "$work/help.txt"; exit 1; }
"$work/venv/bin/python" -m deepalign --help > /dev/null
"$work/venv/bin/python" -m deepalign reproduce --help > /dev/null
OMP_NUM_THREADS=1 "$work/venv/bin/deepalign" reproduce mosi --quick --quiet --out "$work/quick" \
    > "$work/quick.log" 2>&1 || { cat "$work/quick.log"; exit 1; }
for file in table.md results.json seeds.csv config.json seed1111/deepalign_V-A/run.json; do
    test -s "$work/quick/$file" || { echo "deepalign reproduce mosi --quick: no $file"; exit 1; }
done
if grep -rl "$work" "$work/quick" --include='*.json' --include='*.md' --include='*.csv'; then
    echo "a record holds the machine's path $work"; exit 1
fi
echo "wheel: deepalign --help, python -m deepalign and deepalign reproduce mosi --quick OK"
