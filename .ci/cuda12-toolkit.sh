#!/usr/bin/env bash
# .ci/cuda12-toolkit.sh DEST: put a CUDA 12 compiler toolchain (12.4.1) in DEST, without root or
# any change to the system, for building ntkfast._cuda against CUDA 12 in CI.
#
# Source: Debian 13 (trixie, non-free), CUDA 12.4.1 as Debian ships it -- NVIDIA's own binaries:
#   nvidia-cuda-toolkit  nvcc, cicc, cudafe++, fatbinary, nvlink, ptxas, libdevice   (87 MB)
#   nvidia-cuda-dev      the CUDA headers and libcudart_static.a                      (934 MB)
#   libcudart12          libcudart.so.12 (CMake's FindCUDAToolkit wants it; not linked)
# fetched with `apt-get download` through a private apt configuration under DEST (the archive's
# signatures checked against Debian's keyring) and unpacked with dpkg-deb: nothing is installed.
# Only the headers and three static libraries are taken from the second (~30 s to decompress).
#
# Why not PyPI: no CUDA 12 package there ships the nvcc driver -- nvidia-cuda-nvcc-cu12, every
# release 12.0-12.9, holds only ptxas, libnvvm and headers -- and nvidia-cuda-runtime-cu12 has
# libcudart_static.a only from 12.9 on. Release wheels do not use this script: cibuildwheel
# installs NVIDIA's CUDA 12 packages in the manylinux image (pyproject.toml, docs/release.md).
#
# On success prints DEST/bin/nvcc on stdout; on failure exits 1 with the reason on stderr.
# Needs: an x86_64 host with apt-get, dpkg-deb and Debian's archive keyring.
set -euo pipefail
dest=${1:?usage: cuda12-toolkit.sh DEST}
# Debian's current revision of each (trixie has CUDA 12.4.1 for its lifetime; an exact pin would
# break when a stable update replaces the revision); checked below to be one CUDA 12 release.
packages=(nvidia-cuda-toolkit nvidia-cuda-dev libcudart12)

fail() { echo "cuda12-toolkit: $*" >&2; exit 1; }
[ "$(uname -m)" = x86_64 ] || fail "x86_64 only (this is $(uname -m))"
command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || fail "needs apt-get and dpkg-deb"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -r "$keyring" ] || fail "no Debian archive keyring at $keyring"

mkdir -p "$dest"
dest=$(cd "$dest" && pwd)
apt=$dest/.apt
mkdir -p "$apt"/lists/partial "$apt"/cache/archives/partial "$apt"/debs
# The Debian mirror this host's apt already uses (its first non-security source), or $DEBIAN_MIRROR.
apt_mirrors() {
  {
    grep -hE '^[[:space:]]*URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}'
    grep -hE '^[[:space:]]*deb[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list |
      sed -E 's/\[[^]]*\]//' | awk '{print $2}'
  } 2>/dev/null | awk '!/-security/ && !found {print; found = 1}'
}
mirror=${DEBIAN_MIRROR:-$(apt_mirrors || true)}
[ -n "$mirror" ] || fail "no Debian mirror in this host's apt sources (set DEBIAN_MIRROR)"
echo "deb [signed-by=$keyring] $mirror trixie non-free" > "$apt/sources.list"
apt_opts=(-q -o "Dir::Etc::SourceList=$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
          -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache"
          -o Dir::State::status=/dev/null -o APT::Sandbox::User="$(id -un)")
apt-get "${apt_opts[@]}" update >"$apt/log" 2>&1 ||
  fail "apt-get update ($mirror trixie non-free) failed: $(tail -n 3 "$apt/log")"
(cd "$apt/debs" && apt-get "${apt_opts[@]}" download "${packages[@]}") >>"$apt/log" 2>&1 ||
  fail "apt-get download ${packages[*]} failed: $(tail -n 3 "$apt/log")"
releases=$(for deb in "$apt"/debs/*.deb; do dpkg-deb -f "$deb" Version | sed 's/.*~//'; done | sort -u)
# one CUDA 12 release, e.g. 12.4.1-2 (the package versions read 12.4.131~12.4.1-2)
[[ $releases == 12.* && $releases != *$'\n'* ]] ||
  fail "expected the packages of one CUDA 12 release, got: $(echo "$releases" | tr '\n' ' ')"

# NVIDIA's toolkit layout, which nvcc's profile and CMake's FindCUDAToolkit expect.
root=$apt/root
dpkg-deb -x "$apt"/debs/nvidia-cuda-toolkit_*.deb "$root"
dpkg-deb -x "$apt"/debs/libcudart12_*.deb "$root"
dpkg-deb --fsys-tarfile "$apt"/debs/nvidia-cuda-dev_*.deb |
  tar -x -C "$root" ./usr/include ./usr/lib/x86_64-linux-gnu/libcudart_static.a \
    ./usr/lib/x86_64-linux-gnu/libculibos.a ./usr/lib/x86_64-linux-gnu/libcudadevrt.a
lib=$root/usr/lib/nvidia-cuda-toolkit
mkdir -p "$dest"/bin/crt "$dest"/nvvm/bin "$dest"/nvvm/libdevice "$dest"/lib64
cp "$lib/bin/nvcc" "$dest/bin/"
cp "$lib"/bin/crt/*.stub "$dest/bin/crt/"
cp "$lib/bin/cicc" "$dest/nvvm/bin/"
cp "$lib/libdevice/libdevice.10.bc" "$dest/nvvm/libdevice/"
for tool in cudafe++ fatbinary nvlink ptxas bin2c; do cp "$root/usr/bin/$tool" "$dest/bin/"; done
cp -r "$root/usr/include" "$dest/include"
cp "$root"/usr/lib/x86_64-linux-gnu/lib{cudart_static,culibos,cudadevrt}.a "$dest/lib64/"
# The shared runtime only so that FindCUDAToolkit is satisfied: ntkfast links the static one.
cp "$root"/usr/lib/x86_64-linux-gnu/libcudart.so.12.* "$dest/lib64/"
(cd "$dest/lib64" && ln -s libcudart.so.12.* libcudart.so.12 && ln -s libcudart.so.12 libcudart.so)
cat > "$dest/bin/nvcc.profile" <<'PROFILE'
TOP                = $(_HERE_)/..
NVVMIR_LIBRARY_DIR = $(TOP)/nvvm/libdevice
PATH              += $(TOP)/nvvm/bin:$(_HERE_):
INCLUDES          += "-I$(TOP)/include" $(_SPACE_)
LIBRARIES          =+ $(_SPACE_) "-L$(TOP)/lib64"
PROFILE
rm -rf "$apt"
"$dest/bin/nvcc" --version >/dev/null 2>&1 || fail "the assembled nvcc does not run"
echo "$dest/bin/nvcc"
