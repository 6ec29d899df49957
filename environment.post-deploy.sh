#!/usr/bin/env bash
# Snakemake runs this in each environment it builds from environment.yml (--sdm conda): the project itself,
# from the checkout beside this file, on top of the pinned packages.
set -euo pipefail
python -m pip install --no-deps -e "$(cd "$(dirname "$0")" && pwd)"
