// series_fallback.cpp -- the CPU engine's entry point to the Series fallback, 2-D quadrature
// (src/common/ntkfast/series_fallback.hpp, shared with the CUDA engine): compiled once, at the
// baseline ISA; cpu_kernels.cpp calls it per such entry.
#include "ntkfast/series_fallback.hpp"

namespace ntkfast {

void series_pair_fallback(const double* record, double a, double b, double rho, double* nngp,
                          double* dot) {
  static const FallbackRules rules = make_fallback_rules();  // thread-safe initialisation (C++11)
  series_pair_fallback_with(rules, record, a, b, rho, nngp, dot);
}

}  // namespace ntkfast
