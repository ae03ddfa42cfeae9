// program.hpp -- the layer program that the Python API lowers a network spec into.
//
// A network is a flat list of ops applied to (c, t) per entry (see layer_math.hpp). Plain data,
// shared by the CPU engine, the CUDA kernels and the bindings; no behaviour here.
#pragma once

#include <cstdint>

namespace ntkfast {

// The op kinds, (name, code) in code order. One list, so the enum, the names the bindings export
// (ntkfast._core.OP_KINDS) and the count cannot drift apart. Parameters:
//   Dense              p0 = W², p1 = b², p2 = α (NTK weight of c_old: n_in for 'standard', 0 for
//                      'ntk'), p3 = β (+1 for a bias under 'standard'), p4 = γ (1 for 'ntk': t
//                      gets c_new)
//   ABRelu             p0 = (a-b)²/(2π), p1 = (a²+b²)/2, p2 = a·b (exact_pair.hpp near ρ = -1)
//   Erf                p0 = a², p1 = b², p2 = c²  (a·erf(b·x) + c)
//   Sin                p0 = a²/2, p1 = b², p2 = cos(2c)  (a·sin(b·x + c))
//   Rbf                p0 = γ
//   Exp                p0 = a², p1 = b²  (a·exp(b·x))
//   ExpNormalized      p0 = γ, p1 = shift, degree = do_clip
//   Gaussian           p0 = a², p1 = b  (a·exp(b·x²))
//   Gabor              exp(-x²)·sin(x)
//   RectifiedMonomial  degree n: max(0, x)^n
//   Polynomial         degree n; pool[offset]: NNGP table, pool[p0]: NTK table (layer_math.hpp)
//   Hermite            degree n: neural-tangents' normalised He_n (assumes unit variance)
//   Series             degree K: a Hermite series of K + 1 terms (Mehler's formula) whose per-row
//                      coefficients come with the call, not the program (SeriesTables, engine.hpp);
//                      p0 = its first row in the series tables, p1 = its tail profile
//   Callback           dual kernels the caller evaluates (a user's Python functions): the engine
//                      runs the program in segments between them (engine.hpp DualKernelFn);
//                      p0 = its index among the program's callbacks
#define NTKFAST_OP_KINDS(X)                                                                      \
  X(Dense, 0) X(Identity, 1) X(ABRelu, 2) X(Erf, 3) X(Gelu, 4) X(Sin, 5) X(Rbf, 6) X(Exp, 7)     \
  X(ExpNormalized, 8) X(Gaussian, 9) X(Gabor, 10) X(Sign, 11) X(RectifiedMonomial, 12)           \
  X(Polynomial, 13) X(Hermite, 14) X(Series, 15) X(Callback, 16)

// No count enumerator and no `default:` in the switches over it: with -Werror=switch (and the
// pragma in layer_math.hpp) a switch that forgets an op does not compile.
enum OpKind : int32_t {
#define NTKFAST_OP_ENUMERATOR(name, code) k##name = code,
  NTKFAST_OP_KINDS(NTKFAST_OP_ENUMERATOR)
#undef NTKFAST_OP_ENUMERATOR
};

#define NTKFAST_OP_COUNT(name, code) +1
constexpr int kNumOpKinds = 0 NTKFAST_OP_KINDS(NTKFAST_OP_COUNT);
#undef NTKFAST_OP_COUNT
constexpr bool op_codes_in_list_order() {
#define NTKFAST_OP_CODE(name, code) code,
  constexpr int codes[] = {NTKFAST_OP_KINDS(NTKFAST_OP_CODE)};
#undef NTKFAST_OP_CODE
  for (int k = 0; k < kNumOpKinds; ++k)
    if (codes[k] != k) return false;
  return true;
}
static_assert(op_codes_in_list_order(), "op codes are 0 .. kNumOpKinds - 1, in list order");

struct LayerOp {
  int32_t kind;    // an OpKind, validated before any engine sees it
  int32_t degree;
  int32_t offset;  // into the pool
  int32_t reserved;
  double p[6];
};

// Highest degree accepted for Monomial, Polynomial, RectifiedMonomial and Hermite.
constexpr int kMaxDegree = 24;
// Highest degree of a Series op.
constexpr int kMaxSeriesDegree = 1024;
// Rows of the series tables per Series op of degree K: E[φ²], E[φ'²], then A_0..A_K, B_0..B_K.
constexpr int64_t series_table_rows(int degree) { return 2 * int64_t(degree) + 4; }

// A borrowed view of a program: ops, and the pool their tables live in.
struct ProgramView {
  const LayerOp* ops;
  int32_t n_ops;
  const double* pool;
};

}  // namespace ntkfast
