#!/usr/bin/env bash
# Installs what the notebook tests need, only where it is missing: Debian's Jupyter
# (nbconvert + nbclient + ipykernel) and the Deno kernel for the pinned deno binary.
# Usage: scripts/setup_jupyter.sh PATH_TO_DENO
set -euo pipefail
deno=$(realpath "$1")

if ! command -v jupyter-nbconvert >/dev/null 2>&1; then
  echo "setup: installing Debian's Jupyter (jupyter-nbconvert python3-nbclient python3-ipykernel)"
  sudo_=""
  if [ "$(id -u)" != 0 ]; then sudo_=sudo; fi
  $sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends \
    jupyter-nbconvert python3-nbclient python3-jupyter-client python3-ipykernel >/dev/null
fi

# The kernelspec records the deno binary's absolute path: reinstall when it points elsewhere.
spec="${JUPYTER_DATA_DIR:-$HOME/.local/share/jupyter}/kernels/deno/kernel.json"
if ! grep -qF "\"$deno\"" "$spec" 2>/dev/null; then
  echo "setup: installing the Deno Jupyter kernel for $deno"
  "$deno" jupyter --install --force >/dev/null 2>&1
fi
