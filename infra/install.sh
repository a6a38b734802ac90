#!/usr/bin/env bash
# The one install step of detrforge. `make venv` (and so CI, through `make test`) and the
# container image (infra/Dockerfile) both run this script, so what CI tests is what ships.
#
#   infra/install.sh VENV [EXTRAS]     e.g. `infra/install.sh .venv dev`, `infra/install.sh /opt/venv`
#
# Creates VENV with $PYTHON (default python3.11) unless it exists, pins pip, then installs this
# checkout editable with its pinned dependencies from pyproject.toml (plus the optional EXTRAS).
# Where torch and torchvision come from is pip's own configuration, not this script's: on the
# development machines a local wheel directory (pip's find-links / extra-index-url), in the image
# the PyTorch index of the chosen CPU or CUDA variant (PIP_EXTRA_INDEX_URL, set by the Dockerfile).
set -euo pipefail

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: $0 VENV [EXTRAS]" >&2
  exit 2
fi
venv=$1
extras=${2:-}
# pip itself is pinned: a new pip has changed resolution and build behaviour before.
pip_version=26.3

cd "$(dirname "$0")/.."
test -x "$venv/bin/python" || "${PYTHON:-python3.11}" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet "pip==$pip_version"
"$venv/bin/python" -m pip install --quiet -e ".${extras:+[$extras]}"
