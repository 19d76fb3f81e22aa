// BDL_HD marks small inline math usable from host C++ and CUDA device code alike.
#pragma once

#if defined(__CUDACC__)
#define BDL_HD __host__ __device__ __forceinline__
#else
#define BDL_HD inline
#endif
