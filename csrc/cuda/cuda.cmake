# Optional CUDA twin of the native core: the module backdoorlab._core_cuda.
#
# Included from the top-level CMakeLists.txt. The cache option BACKDOORLAB_CUDA picks the policy:
#   ON   build it; a missing CUDA compiler is a configure error (so a GPU wheel cannot silently
#        come out CPU-only),
#   AUTO build it when a CUDA compiler is found (the default; CI compiles it on every run so the
#        sources cannot rot even though CI has no GPU),
#   OFF  build no CUDA at all.
# The module links only the CUDA runtime, statically, so an installed wheel needs a driver but no
# toolkit. The CPU module _core never links anything from CUDA.

string(TOUPPER "${BACKDOORLAB_CUDA}" _bl_cuda_mode)
if(NOT _bl_cuda_mode MATCHES "^(ON|OFF|AUTO)$")
  message(FATAL_ERROR "BACKDOORLAB_CUDA must be ON, OFF or AUTO, got '${BACKDOORLAB_CUDA}'")
endif()

if(_bl_cuda_mode STREQUAL "OFF")
  message(STATUS "backdoorlab: CUDA core disabled (BACKDOORLAB_CUDA=OFF)")
  return()
endif()

include(CheckLanguage)
check_language(CUDA)
if(NOT CMAKE_CUDA_COMPILER)
  if(_bl_cuda_mode STREQUAL "ON")
    message(FATAL_ERROR
      "backdoorlab: BACKDOORLAB_CUDA=ON but no CUDA compiler was found. Put nvcc on PATH or set "
      "CMAKE_CUDA_COMPILER / CUDACXX, or build with BACKDOORLAB_CUDA=AUTO or OFF.")
  endif()
  message(STATUS "backdoorlab: no CUDA compiler found, building the CPU core only")
  return()
endif()

# Architectures must be fixed before enable_language(CUDA), else CMake probes a default that
# newer toolkits may not support. "80;90" embeds SASS + PTX for Ampere (sm_80; sm_86/89 run the
# sm_80 code) and Hopper (sm_90); newer GPUs JIT the compute_90 PTX. Two entries keep the CI
# compile short; override with -DCMAKE_CUDA_ARCHITECTURES=... for a specific card.
if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES OR CMAKE_CUDA_ARCHITECTURES STREQUAL "")
  set(CMAKE_CUDA_ARCHITECTURES "80;90" CACHE STRING "CUDA architectures for backdoorlab._core_cuda")
endif()
enable_language(CUDA)
set(CMAKE_CUDA_STANDARD 17)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)
find_package(CUDAToolkit REQUIRED)

file(GLOB BACKDOORLAB_CUDA_SOURCES CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/csrc/cuda/*.cu)
add_library(backdoorlab_cuda STATIC ${BACKDOORLAB_CUDA_SOURCES})
target_include_directories(backdoorlab_cuda PUBLIC ${CMAKE_CURRENT_SOURCE_DIR}/csrc)
# No --use_fast_math: it flushes denormals and turns NaN checks and tanh into approximations.
target_compile_options(backdoorlab_cuda PRIVATE
  $<$<COMPILE_LANGUAGE:CUDA>:-O3 --expt-relaxed-constexpr -Xcompiler=-Wall>)
set_target_properties(backdoorlab_cuda PROPERTIES
  CUDA_RUNTIME_LIBRARY Static
  CUDA_SEPARABLE_COMPILATION OFF
  POSITION_INDEPENDENT_CODE ON)

# The binding is plain C++ (compiled by the host compiler): it sees only csrc/cuda/api.hpp.
python_add_library(_core_cuda MODULE ${CMAKE_CURRENT_SOURCE_DIR}/csrc/bindings_cuda.cpp WITH_SOABI)
target_link_libraries(_core_cuda PRIVATE backdoorlab_cuda pybind11::headers CUDA::cudart_static)
set_target_properties(_core_cuda PROPERTIES CUDA_RUNTIME_LIBRARY Static)
string(REPLACE ";" "," _bl_cuda_archs_csv "${CMAKE_CUDA_ARCHITECTURES}")
target_compile_definitions(_core_cuda PRIVATE
  BACKDOORLAB_VERSION="${SKBUILD_PROJECT_VERSION}"
  BACKDOORLAB_CUDA_ARCHS="${_bl_cuda_archs_csv}"
  BACKDOORLAB_CUDA_COMPILER_VERSION="${CMAKE_CUDA_COMPILER_VERSION}")
install(TARGETS _core_cuda LIBRARY DESTINATION backdoorlab)
message(STATUS "backdoorlab: building _core_cuda for CUDA architectures ${CMAKE_CUDA_ARCHITECTURES} "
               "(nvcc ${CMAKE_CUDA_COMPILER_VERSION})")
