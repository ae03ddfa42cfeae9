// tile_kernel.cpp -- the engine's tile kernel alone (src/cpp/ntkfast/cpu_kernels.cpp, one
// instruction set), timed by benchmarks/layer_steps.py on one full 384 x 384 tile whose tables
// and buffers sit in L2: the per-entry-layer cost without the rest of the engine (GEMM, tile
// copies, the wasted lanes of the diagonal tiles' ragged rows), comparable with step_floor.cpp.
//
//   g++ <the library's flags for one ISA> -DNTKFAST_ISA_NAMESPACE=avx2 -Isrc/cpp -Isrc/common
//       -c src/cpp/ntkfast/cpu_kernels.cpp -o k.o && g++ -O2 -Isrc/cpp -Isrc/common
//       benchmarks/tile_kernel.cpp k.o -o tile_kernel && ./tile_kernel
// prints "<activation> <float64|float32> <ns per entry-layer>" lines: (T(12) - T(2)) / (10 · 384²)
// for MLP(depth, act, W_std=1.5, b_std=0.05), NNGP + NTK, T the thread's CPU time, best of 40.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <random>
#include <vector>

#include "ntkfast/cpu_kernels.hpp"

using namespace ntkfast;

namespace {

// The program ntkfast.MLP(depth, act, W_std=1.5, b_std=0.05) lowers to ('ntk' parameterization).
std::vector<LayerOp> mlp(int depth, const char* act) {
  std::vector<LayerOp> ops;
  const auto dense = [&]() {
    LayerOp op{};
    op.kind = kDense;
    op.p[0] = 2.25;
    op.p[1] = 0.0025;
    op.p[4] = 1.0;
    ops.push_back(op);
  };
  for (int l = 0; l < depth; ++l) {
    dense();
    LayerOp op{};
    if (!std::strcmp(act, "relu")) {
      op.kind = kABRelu;
      op.p[0] = 1.0 / (2 * M_PI);
      op.p[1] = 0.5;
    } else if (!std::strcmp(act, "erf")) {
      op.kind = kErf;
      op.p[0] = op.p[1] = 1.0;
    } else {
      op.kind = kGelu;
    }
    ops.push_back(op);
  }
  dense();
  return ops;
}

double thread_seconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

// Best time of one tile (n x n, all entries) of the program; d = 8 standard-normal points.
template <class T>
double tile_seconds(const char* act, int depth, int n) {
  const int d = 8;
  std::mt19937_64 gen(1);
  std::normal_distribution<double> normal;
  std::vector<double> x(size_t(n) * d);
  for (double& v : x) v = normal(gen);
  const std::vector<LayerOp> ops = mlp(depth, act);
  const ProgramView prog{ops.data(), int32_t(ops.size()), nullptr};
  const int64_t stride = (n + kRowPad - 1) / kRowPad * kRowPad + kRowPad;
  const size_t size = (ops.size() + 1) * size_t(stride);
  std::vector<double> q(size, 1.0), sq(size, 1.0), diag(static_cast<size_t>(stride), 0.0);
  std::vector<int32_t> rescale(size, 0);
  for (int i = 0; i < n; ++i) {
    double s = 0;
    for (int k = 0; k < d; ++k) s += x[size_t(i) * d + k] * x[size_t(i) * d + k];
    q[size_t(i)] = s / d;
    sq[size_t(i)] = std::sqrt(q[size_t(i)]);
  }
  for (int64_t i0 = 0; i0 < n; i0 += kRowPad)
    kCpuKernelsGeneric.row_pass(prog, kRowPad,
                                RowTables{q.data() + i0, sq.data() + i0, stride, rescale.data() + i0},
                                diag.data() + i0);
  std::vector<T> gram(size_t(n) * n), nngp(size_t(n) * n), ntk(size_t(n) * n);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) {
      double s = 0;
      for (int k = 0; k < d; ++k) s += x[size_t(i) * d + k] * x[size_t(j) * d + k];
      gram[size_t(i) * n + j] = T(s);
    }
  const RowTables rows{q.data(), sq.data(), stride, nullptr};
  const TileArgs<T> args{prog, n, n, gram.data(), n, 1.0 / d, 1e-14, rows, rows,
                         nngp.data(), n, ntk.data(), n, false};
  double best = 1e30;
  for (int trial = 0; trial < 40; ++trial) {
    const double start = thread_seconds();
    if constexpr (sizeof(T) == 8)
      kCpuKernelsGeneric.tile_f64(args);
    else
      kCpuKernelsGeneric.tile_f32(args);
    best = std::min(best, thread_seconds() - start);
  }
  return best;
}

}  // namespace

int main() {
  const int n = 384;  // the engine's default tile
  for (const char* act : {"relu", "erf", "gelu"}) {
    const double f64 = tile_seconds<double>(act, 12, n) - tile_seconds<double>(act, 2, n);
    const double f32 = tile_seconds<float>(act, 12, n) - tile_seconds<float>(act, 2, n);
    std::printf("%s float64 %.3f\n", act, f64 / (10.0 * n * n) * 1e9);
    std::printf("%s float32 %.3f\n", act, f32 / (10.0 * n * n) * 1e9);
  }
  return 0;
}
