#!/usr/bin/env bash
# One-time set-up on a fresh machine: system tools (GDAL's validators), a virtualenv, segflow and its
# development tools. Safe to re-run: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

if [ ! -f /usr/lib/python3/dist-packages/osgeo_utils/samples/validate_cloud_optimized_geotiff.py ] \
   || ! command -v gdalinfo >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing GDAL command-line tools and validators (gdal-bin, python3-gdal)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gdal-bin python3-gdal >/dev/null
  else
    echo "setup: warning: gdal-bin and python3-gdal are missing; install them for the COG validator tests" >&2
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# torch first, pinned: the CPU build of exactly this version is what the project is made for.
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
"$VENV/bin/python" -m pip install -q -e ".[dev]"
touch "$VENV/.segflow-installed"
