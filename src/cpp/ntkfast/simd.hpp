// simd.hpp -- the CPU lane type for layer_math.hpp: a GCC/Clang vector of doubles whose width
// follows the instruction set this translation unit is compiled for (2 for SSE2, 4 for AVX2,
// 8 for AVX-512). Include it before layer_math.hpp so the vector overloads are visible to the
// templates there.
#pragma once

#include <cmath>

#ifndef NTKFAST_ISA_NAMESPACE
#define NTKFAST_ISA_NAMESPACE generic
#endif

namespace ntkfast {
inline namespace NTKFAST_ISA_NAMESPACE {

#if defined(__AVX512F__)
constexpr int kLanes = 8;
#elif defined(__AVX2__)
constexpr int kLanes = 4;
#else
constexpr int kLanes = 2;
#endif

typedef double vdouble __attribute__((vector_size(kLanes * sizeof(double))));

// Lane-wise loops over builtins: the compiler emits one vector square root (-fno-math-errno);
// exp has no vector form without -ffast-math's libmvec, so it stays a call per lane.
inline vdouble nt_sqrt(vdouble x) {
  vdouble r;
  for (int i = 0; i < kLanes; ++i) r[i] = __builtin_sqrt(x[i]);
  return r;
}

// With FMA hardware (AVX2, AVX-512) this is one vector FMA; the generic x86-64 variant calls the
// C library's (exact, slower) fma per lane.
inline vdouble nt_fma(vdouble a, vdouble b, vdouble c) {
  vdouble r;
  for (int i = 0; i < kLanes; ++i) r[i] = __builtin_fma(a[i], b[i], c[i]);
  return r;
}

#if defined(__FMA__)
inline vdouble nt_mad(vdouble a, vdouble b, vdouble c) { return nt_fma(a, b, c); }
#else
inline vdouble nt_mad(vdouble a, vdouble b, vdouble c) { return a * b + c; }
#endif

inline vdouble nt_exp(vdouble x) {
  vdouble r;
  for (int i = 0; i < kLanes; ++i) r[i] = ::exp(x[i]);
  return r;
}

}  // namespace NTKFAST_ISA_NAMESPACE
}  // namespace ntkfast
