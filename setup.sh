#!/bin/sh
# Set up this checkout on Debian 12 (as root): the Debian packages the pipeline runs, and a Python
# virtual environment in .venv with the pipeline and its test tools. Safe to run again: it installs
# only what is missing.
set -eu
cd "$(dirname "$0")"

# Erlang/OTP and rebar3 build the app; QEMU, OVMF, e2fsprogs, mtools, dosfstools, fdisk, cpio, xz,
# busybox, systemd-boot-efi and GRUB build and boot the images; binutils make ELF objects (the LING
# railing stand-in in the tests); openssh-server backs the remote-build tests; wrk drives the HTTP bench.
# grub-common brings the libraries of the pinned grub-mkimage that builds the Xen check's loader; lz4
# unpacks the cloud kernel for the PV disk (PV-GRUB cannot read LZ4). erlang-mochiweb, erlang-jiffy and
# elixir are what the apps under examples/ are made of (Debian-packaged libraries, a NIF, mix release).
PACKAGES="
  erlang-base erlang-dev erlang-inets erlang-mnesia erlang-eunit erlang-tools erlang-crypto
  erlang-syntax-tools erlang-parsetools erlang-runtime-tools rebar3
  erlang-mochiweb erlang-jiffy elixir
  python3 python3-venv python3-pip
  qemu-system-x86 qemu-utils ovmf e2fsprogs mtools dosfstools fdisk cpio xz-utils zstd gzip
  busybox-static binutils systemd-boot-efi grub-efi-amd64-bin grub-common lz4
  openssh-server openssh-client procps wrk curl git ca-certificates
"

missing=""
for p in $PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh: missing Debian packages:$missing (hint: run ./setup.sh as root)" >&2
    exit 1
  fi
  echo "setup.sh: installing$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# The beam image's kernel and busybox are fetched with apt-get download (never installed): that
# needs the package lists, which a fresh machine or a slimmed container may not have yet.
if ! ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
  apt-get update -qq
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
# checkov, which the tests run on cfn/, pins a boto3 older than the pipeline's: it gets a virtual
# environment of its own inside .venv.
CHECKOV_VERSION=3.3.30
if ! .venv/checkov/bin/checkov --version 2>/dev/null | grep -qx "$CHECKOV_VERSION"; then
  python3 -m venv .venv/checkov
  .venv/checkov/bin/python -m pip install -q "checkov==$CHECKOV_VERSION"
fi
echo "setup.sh: ready (.venv/bin/invoke --list shows the tasks)"
