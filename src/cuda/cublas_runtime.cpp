// cublas_runtime.cpp -- resolving cuBLAS at run time (see cublas_runtime.hpp).
#include "cublas_runtime.hpp"

#include <dlfcn.h>
#include <link.h>

#include <cstring>
#include <mutex>
#include <stdexcept>
#include <vector>

#ifndef NTKFAST_CUDA_MAJOR
#define NTKFAST_CUDA_MAJOR "13"
#endif

namespace ntkfast {
namespace cuda {
namespace {

// Paths of the libcublas.so* objects mapped into the process (not libcublasLt).
int collect_cublas(struct dl_phdr_info* info, size_t, void* data) {
  const char* name = info->dlpi_name;
  if (!name || !*name) return 0;
  const char* base = std::strrchr(name, '/');
  base = base ? base + 1 : name;
  if (std::strncmp(base, "libcublas.so", 12) == 0)
    static_cast<std::vector<std::string>*>(data)->push_back(name);
  return 0;
}

template <class F>
F resolve(void* lib, const char* symbol, const std::string& where) {
  dlerror();
  void* p = dlsym(lib, symbol);
  if (!p) {
    const char* err = dlerror();
    throw std::runtime_error(std::string("cuBLAS (") + where + ") lacks " + symbol + ": " +
                             (err ? err : "not found"));
  }
  return reinterpret_cast<F>(p);
}

CublasApi load() {
  // The library CuPy loaded (its handle is only valid there); by soname, as the dynamic loader
  // matches an already-loaded object's DT_SONAME; then a plain load.
  std::vector<std::string> loaded;
  dl_iterate_phdr(collect_cublas, &loaded);
  const std::string soname = cublas_soname();
  void* lib = nullptr;
  std::string where;
  for (const std::string& path : loaded) {
    lib = dlopen(path.c_str(), RTLD_NOW | RTLD_NOLOAD);
    if (lib) {
      where = path;
      break;
    }
  }
  if (!lib) {
    lib = dlopen(soname.c_str(), RTLD_NOW | RTLD_NOLOAD);
    if (!lib) lib = dlopen(soname.c_str(), RTLD_NOW | RTLD_LOCAL);
    where = soname;
  }
  if (!lib) {
    const char* err = dlerror();
    throw std::runtime_error(
        "the CUDA engine needs cuBLAS for its GEMMs but could not load " + soname + " (" +
        (err ? err : "not found") + "); it uses the cuBLAS that CuPy loads: check that "
        "`cupy.cuda.device.get_cublas_handle()` works (pip install 'ntkfast[cuda]')");
  }
  CublasApi api;
  api.library = where;
  api.get_stream = resolve<CublasApi::GetStreamFn>(lib, "cublasGetStream_v2", where);
  api.set_stream = resolve<CublasApi::SetStreamFn>(lib, "cublasSetStream_v2", where);
  api.get_math_mode = resolve<CublasApi::GetModeFn>(lib, "cublasGetMathMode", where);
  api.set_math_mode = resolve<CublasApi::SetModeFn>(lib, "cublasSetMathMode", where);
  api.get_pointer_mode = resolve<CublasApi::GetModeFn>(lib, "cublasGetPointerMode_v2", where);
  api.set_pointer_mode = resolve<CublasApi::SetModeFn>(lib, "cublasSetPointerMode_v2", where);
  api.sgemm = resolve<CublasApi::SgemmFn>(lib, "cublasSgemm_v2", where);
  api.dgemm = resolve<CublasApi::DgemmFn>(lib, "cublasDgemm_v2", where);
  return api;  // the library stays loaded (never dlclose'd)
}

}  // namespace

std::string cublas_soname() { return std::string("libcublas.so.") + NTKFAST_CUDA_MAJOR; }

const CublasApi& cublas_api() {
  static std::mutex mutex;
  static CublasApi api;
  static bool loaded = false;
  std::lock_guard<std::mutex> lock(mutex);
  if (!loaded) {  // a failure is retried on the next call (CuPy may load cuBLAS meanwhile)
    api = load();
    loaded = true;
  }
  return api;
}

}  // namespace cuda
}  // namespace ntkfast
