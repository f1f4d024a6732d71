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
APT_LISTS=${SETUP_APT_LISTS:-/var/lib/apt/lists}
PROC=${SETUP_PROC:-/proc}
APT_WAIT=${SETUP_APT_WAIT:-600}  # seconds to wait for another apt or dpkg to finish

# Whether apt has package lists: apt keeps them plain (*_Packages) or compressed (*_Packages.lz4,
# .gz, .xz, .zst, ... when Acquire::GzipIndexes is set, as slim images do).
have_package_lists() {
  for f in "$APT_LISTS"/*_Packages "$APT_LISTS"/*_Packages.*; do
    case "$f" in
      *.diff_Index) ;;
      *) [ -e "$f" ] && return 0 ;;
    esac
  done
  return 1
}

# The pid and name of a running apt, apt-get, dpkg or unattended-upgrade ("" when there is none): they
# hold apt's locks, and a second apt-get would fail on them.
apt_holder() {
  for comm in "$PROC"/[0-9]*/comm; do
    [ -r "$comm" ] || continue
    name=$(cat "$comm" 2>/dev/null) || continue
    case "$name" in
      apt | apt-get | aptitude | dpkg | unattended-upgr* | packagekitd)
        pid=${comm%/comm}
        echo "${pid##*/} $name"
        return 0
        ;;
    esac
  done
  echo ""
}

# Wait (with a message) until no other apt or dpkg runs, at most APT_WAIT seconds.
wait_for_apt() {
  waited=0
  holder=$(apt_holder)
  while [ -n "$holder" ]; do
    if [ "$waited" -eq 0 ]; then
      echo "setup.sh: waiting for another package manager to finish (pid ${holder%% *}: ${holder#* })" >&2
    fi
    if [ "$waited" -ge "$APT_WAIT" ]; then
      echo "setup.sh: ${holder#* } (pid ${holder%% *}) still holds apt's lock after ${APT_WAIT}s" \
        "(hint: let it finish, or stop it, then run ./setup.sh again)" >&2
      return 1
    fi
    sleep 2
    waited=$((waited + 2))
    holder=$(apt_holder)
  done
}

# apt-get, after waiting for any other apt; its own lock timeout covers one that starts in between.
apt_get() {
  wait_for_apt
  apt-get -o DPkg::Lock::Timeout="$APT_WAIT" "$@"
}

main() {
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
    apt_get update -qq
    # shellcheck disable=SC2086
    apt_get install -y -qq --no-install-recommends $missing >/dev/null
  fi

  # The beam image's kernel and busybox are fetched with apt-get download (never installed): that
  # needs the package lists, which a fresh machine or a slimmed container may not have yet.
  if ! have_package_lists && [ "$(id -u)" -eq 0 ]; then
    apt_get update -qq
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
}

# SETUP_FUNCTIONS_ONLY=1: define the functions and stop (the tests call them one by one).
[ -n "${SETUP_FUNCTIONS_ONLY:-}" ] || main "$@"
