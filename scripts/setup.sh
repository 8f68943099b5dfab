#!/usr/bin/env bash
# One-time set-up on a fresh machine: system tools (GDAL's validators), a virtualenv, segflow and its
# development tools. Safe to re-run: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

# System tools the tests use against real programs: GDAL's tools and COG validator, the Orthanc PACS with
# its DICOMweb plugin, dicom3tools' DICOM validator (dciodvfy), PostgreSQL 15 with PostGIS (a test server).
need=()
[ -f /usr/lib/python3/dist-packages/osgeo_utils/samples/validate_cloud_optimized_geotiff.py ] || need+=(python3-gdal)
command -v gdalinfo >/dev/null 2>&1 || need+=(gdal-bin)
command -v Orthanc >/dev/null 2>&1 || need+=(orthanc)
[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
command -v dciodvfy >/dev/null 2>&1 || need+=(dicom3tools)
[ -f /usr/share/postgresql/15/extension/postgis.control ] || need+=(postgresql-15-postgis-3)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing ${need[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "setup: warning: ${need[*]} missing; the tests that need them are skipped" >&2
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
