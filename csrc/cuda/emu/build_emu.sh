#!/usr/bin/env bash
# Builds backdoorlab._core_cuda from the CUDA sources compiled as plain C++ against the CPU
# emulator (cuda_emu.hpp), so the kernels and their tests can run where no GPU exists:
#
#   csrc/cuda/emu/build_emu.sh /tmp/bl-emu
#   BACKDOORLAB_CUDA_MODULE=$(ls /tmp/bl-emu/_core_cuda*.so) python -m pytest tests/test_cuda.py
#
# The emulator runs blocks one at a time and threads as coroutines: slow, but every barrier and
# shuffle is a real rendezvous (see cuda_emu.hpp for what it does and does not check).
set -euo pipefail
out=${1:?usage: build_emu.sh OUTDIR}
root=$(cd "$(dirname "$0")/../../.." && pwd)
mkdir -p "$out"
suffix=$(python -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
flags=(-std=c++20 -O2 -g -fPIC -DBL_CUDA_EMULATION -I"$root/csrc" -Wall -Wno-unused-function -Wno-unknown-pragmas)
objs=()
for src in "$root"/csrc/cuda/*.cu; do
  obj="$out/$(basename "$src" .cu).o"
  g++ "${flags[@]}" -x c++ -c "$src" -o "$obj"
  objs+=("$obj")
done
g++ "${flags[@]}" $(python -m pybind11 --includes) \
  -DBACKDOORLAB_VERSION='"emulated"' -DBACKDOORLAB_CUDA_ARCHS='"0"' \
  -DBACKDOORLAB_CUDA_COMPILER_VERSION='"bl_emu"' \
  -c "$root/csrc/bindings_cuda.cpp" -o "$out/bindings_cuda.o"
g++ -shared "${objs[@]}" "$out/bindings_cuda.o" -o "$out/_core_cuda$suffix"
echo "$out/_core_cuda$suffix"
