// cuda_check.cuh -- every CUDA runtime call of the engine goes through NTKFAST_CUDA_CHECK, every
// kernel launch is followed by NTKFAST_CUDA_CHECK_LAUNCH: a failure throws (never aborts) a
// CudaError whose message names the call, the CUDA error and file:line; an allocation failure
// throws CudaOutOfMemory (MemoryError in Python).
#pragma once

#include <cuda_runtime.h>

#include <cstring>
#include <string>

#include "cuda_engine.hpp"

namespace ntkfast {
namespace cuda {
namespace detail {

// "src/cuda/x.cu" rather than the build machine's absolute path.
inline const char* short_path(const char* file) {
  const char* p = std::strstr(file, "src/cuda/");
  return p ? p : file;
}

inline std::string describe(cudaError_t err) {
  return std::string(cudaGetErrorName(err)) + " (" + cudaGetErrorString(err) + ")";
}

inline void check(cudaError_t err, const char* what, const char* file, int line) {
  if (err == cudaSuccess) return;
  // A non-sticky error is also recorded as the runtime's "last error": clear it so that the next
  // launch check reports that launch, not this call.
  (void)cudaGetLastError();
  const std::string message = std::string("CUDA error at ") + short_path(file) + ":" +
                              std::to_string(line) + ": " + what + ": " + describe(err);
  if (err == cudaErrorMemoryAllocation) throw CudaOutOfMemory(message, int(err));
  throw CudaError(message, int(err));
}

}  // namespace detail
}  // namespace cuda
}  // namespace ntkfast

#define NTKFAST_CUDA_CHECK(call) ::ntkfast::cuda::detail::check((call), #call, __FILE__, __LINE__)
// After a <<<...>>> launch: launch-configuration errors are reported by cudaGetLastError().
#define NTKFAST_CUDA_CHECK_LAUNCH(kernel_name) \
  ::ntkfast::cuda::detail::check(cudaGetLastError(), "launch of " kernel_name, __FILE__, __LINE__)
