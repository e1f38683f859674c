#!/usr/bin/env bash
# Creates .venv and installs the pinned requirements; re-running is cheap (a stamp file
# records what was installed). Usage: bash tools/setup.sh           # runtime only
#                                     bash tools/setup.sh dev       # + tests, torch (CPU)
#                                     bash tools/setup.sh gpu-plan  # + .venv-gpu-plan
# gpu-plan: a second venv that sees .venv's packages and adds JAX's CUDA plugin, for
# `.venv-gpu-plan/bin/python tools/benchmark.py --target=h100` (compiles for a GPU on a
# machine without one).
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  ""|dev|gpu-plan) ;;
  *) echo "setup: unknown mode '$1': use no argument (runtime), dev or gpu-plan" >&2; exit 2 ;;
esac
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "setup: $(python3 --version 2>&1) found; clip2protect_jax needs Python >= 3.11" >&2
  exit 2
fi
venv() {
  if [[ -e "$1" ]]; then
    "$1/bin/python" -m pip --version > /dev/null 2>&1 && return 0
    echo "setup: $1 has no working pip (made without Debian's python3-venv, or by another" \
      "tool): remove it (rm -rf $1) and rerun" >&2
    exit 1
  fi
  python3 -m venv "$1" || { rm -rf "$1"; echo "setup: python3 -m venv failed (on Debian:" \
    "apt install python3-venv)" >&2; exit 1; }
}
if [[ "${1:-}" == "gpu-plan" ]]; then
  bash tools/setup.sh
  venv .venv-gpu-plan
  site_of() { "$1" -c "import site; print(site.getsitepackages()[0])"; }
  site_of .venv/bin/python > "$(site_of .venv-gpu-plan/bin/python)/clip2protect-venv.pth"
  if ! .venv-gpu-plan/bin/python -m pip install --quiet --disable-pip-version-check \
      -r requirements-gpu-plan.txt > .venv-gpu-plan/pip.log 2>&1; then
    grep -v "is ignored: it is neither a file nor a directory" .venv-gpu-plan/pip.log \
      | tail -20 >&2
    echo "setup: pip install -r requirements-gpu-plan.txt failed" >&2
    exit 1
  fi
  exit 0
fi
req=requirements.txt
[[ "${1:-}" == "dev" ]] && req=requirements-dev.txt
venv .venv
stamp=".venv/.installed-$(cat requirements*.txt | sha256sum | cut -c1-16)-${req%.txt}"
if [[ ! -f "$stamp" ]]; then
  if ! .venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$req" \
      > .venv/pip.log 2>&1; then
    grep -v "is ignored: it is neither a file nor a directory" .venv/pip.log | tail -20 >&2
    echo "setup: pip install -r $req failed (full log: .venv/pip.log)" >&2
    exit 1
  fi
  if [[ "$req" == requirements-dev.txt ]] && ! .venv/bin/python -m pip install --quiet \
      --disable-pip-version-check --no-deps -r requirements-dev-nodeps.txt \
      >> .venv/pip.log 2>&1; then
    echo "setup: pip install --no-deps -r requirements-dev-nodeps.txt failed" >&2
    exit 1
  fi
  rm -f .venv/.installed-*
  touch "$stamp"
fi
# Example photos for the embedded default and the pipeline tests (sha256-checked, idempotent).
.venv/bin/python tools/fetch_assets.py
