// cublas_runtime.hpp -- the few cuBLAS entry points the CUDA engine calls, resolved at run time.
//
// The module links no cuBLAS (CI has neither its headers nor its libraries, and the handle must
// belong to the library CuPy loaded anyway): the function types are declared here from cuBLAS's
// stable C ABI (cublas_api.h: enums are ints, handles and streams opaque pointers), and resolved
// from the libcublas already mapped into the process (the one CuPy's handle belongs to), or, if none
// is, from libcublas.so.<CUDA major of this build>.
#pragma once

#include <string>

namespace ntkfast {
namespace cuda {

struct CublasApi {
  using Handle = void*;  // cublasHandle_t
  using Stream = void*;  // cudaStream_t
  // cublasStatus_t (0 = CUBLAS_STATUS_SUCCESS) f(...); enums as int.
  using GetStreamFn = int (*)(Handle, Stream*);          // cublasGetStream_v2
  using SetStreamFn = int (*)(Handle, Stream);           // cublasSetStream_v2
  using GetModeFn = int (*)(Handle, int*);               // cublasGetMathMode, cublasGetPointerMode_v2
  using SetModeFn = int (*)(Handle, int);                // cublasSetMathMode, cublasSetPointerMode_v2
  using SgemmFn = int (*)(Handle, int, int, int, int, int, const float*, const float*, int,
                          const float*, int, const float*, float*, int);  // cublasSgemm_v2
  using DgemmFn = int (*)(Handle, int, int, int, int, int, const double*, const double*, int,
                          const double*, int, const double*, double*, int);  // cublasDgemm_v2

  // cublas_api.h values.
  static constexpr int kOpN = 0, kOpT = 1;             // cublasOperation_t
  static constexpr int kDefaultMath = 0;               // CUBLAS_DEFAULT_MATH: no TF32, no emulation
  static constexpr int kPointerModeHost = 0;           // CUBLAS_POINTER_MODE_HOST

  GetStreamFn get_stream = nullptr;
  SetStreamFn set_stream = nullptr;
  GetModeFn get_math_mode = nullptr;
  SetModeFn set_math_mode = nullptr;
  GetModeFn get_pointer_mode = nullptr;
  SetModeFn set_pointer_mode = nullptr;
  SgemmFn sgemm = nullptr;
  DgemmFn dgemm = nullptr;
  std::string library;  // the file it was resolved from
};

// Resolved once per process; throws std::runtime_error naming the library and dlerror() if
// cuBLAS cannot be found or lacks a symbol.
const CublasApi& cublas_api();

// The soname tried when no libcublas is loaded yet ("libcublas.so.13" for a CUDA 13 build).
std::string cublas_soname();

}  // namespace cuda
}  // namespace ntkfast
