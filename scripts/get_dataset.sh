#!/usr/bin/env bash
# Make sure Fashion-MNIST is on this machine (make setup runs this). The daemons, the demo and the tests
# look for it in $SWARMNODE_DATA, then /usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist).
# There is no download: this machine class reaches only package registries, so Debian's package is the way.
set -euo pipefail

FILES="train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte"

has_all() {  # a directory holding the four IDX files (gzipped or not)
  local dir="$1" f
  [ -n "$dir" ] && [ -d "$dir" ] || return 1
  for f in $FILES; do
    [ -e "$dir/$f.gz" ] || [ -e "$dir/$f" ] || [ -e "$dir/FashionMNIST/raw/$f" ] || return 1
  done
}

for dir in "${SWARMNODE_DATA:-}" /usr/share/datasets/fashion-mnist; do
  if has_all "$dir"; then
    echo "Fashion-MNIST: $dir"
    exit 0
  fi
done

if command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ]; then
    SUDO=""
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    SUDO="none"
  fi
  if [ "$SUDO" != "none" ]; then
    echo "Fashion-MNIST not found: installing Debian's dataset-fashion-mnist (about 30 s)"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq dataset-fashion-mnist
    if has_all /usr/share/datasets/fashion-mnist; then
      echo "Fashion-MNIST: /usr/share/datasets/fashion-mnist"
      exit 0
    fi
    echo "error: dataset-fashion-mnist installed, but /usr/share/datasets/fashion-mnist lacks the IDX files" >&2
    exit 1
  fi
fi

cat >&2 <<'MSG'
error: Fashion-MNIST is not on this machine, and this user cannot install packages.
  On Debian or Ubuntu, as root:   apt-get install dataset-fashion-mnist
  Or put the four IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz,
  t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) in a directory and
  export SWARMNODE_DATA=/that/directory
then run make again.
MSG
exit 1
