// Included last by every csrc/cpu/simd/*.cpp with hot loops, after all other headers: selects
// the instruction set of the code that follows (the level's names: level_names.hpp).
//
// Why a pragma and not -march per file: with -march, the standard-library templates these files
// instantiate (std::vector growth, std::fill, ...) could be emitted with AVX-512 instructions as
// weak symbols, and the linker may keep that copy for the baseline code too — a crash on older
// CPUs. Templates declared before the pragma keep the baseline target (checked with nm/objdump),
// and only the functions defined below it get the level's.
#pragma once

#include "cpu/simd/level_names.hpp"

// Levels 1 and 2 are built with GCC only (CMakeLists.txt); other compilers get level 3, generic.
#if BDL_LEVEL == 1
#pragma GCC target("arch=x86-64-v3")
#elif BDL_LEVEL == 2
// prefer-vector-width=512: GCC's generic tuning would otherwise vectorise loops 256 bits wide
#pragma GCC target("arch=x86-64-v4,prefer-vector-width=512")
#endif
