#!/usr/bin/env bash
# Set up a fresh machine: the real offline data (Debian packages) and the Python package.
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")"

# Fashion-MNIST, the emoji font and names, the Tux Paint stamps (DATA.md); cairo for CairoSVG.
packages="dataset-fashion-mnist fonts-noto-color-emoji unicode-data tuxpaint-stamps-default libcairo2"
if ! dpkg -s $packages >/dev/null 2>&1; then
    sudo_="" && [ "$(id -u)" -ne 0 ] && sudo_="sudo"
    $sudo_ apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq $packages >/dev/null
fi

# torch/torchvision pinned in pyproject.toml to releases that install offline here.
python3 -m pip install -q -e ".[test]"
