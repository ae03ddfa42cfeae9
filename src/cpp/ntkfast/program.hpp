// program.hpp -- the layer program that the Python API lowers a network spec into.
//
// A network is a flat list of ops applied to (c, t) per entry (see layer_math.hpp). Plain data,
// shared by the CPU engine, the CUDA kernels and the binding; no behaviour here.
#pragma once

#include <cstdint>

namespace ntkfast {

enum OpKind : int32_t {
  kDense = 0,
  kIdentity = 1,
  kABRelu = 2,        // p0 = (a-b)²/(2π), p1 = (a²+b²)/2
  kErf = 3,           // p0 = a², p1 = b², p2 = c²  (a·erf(b·x) + c)
  kGelu = 4,
  kSin = 5,           // p0 = a²/2, p1 = b², p2 = cos(2c)  (a·sin(b·x + c))
  kRbf = 6,           // p0 = γ
  kExp = 7,           // p0 = a², p1 = b²  (a·exp(b·x))
  kExpNormalized = 8, // p0 = γ, p1 = shift, degree = do_clip
  kGaussian = 9,      // p0 = a², p1 = b  (a·exp(b·x²))
  kGabor = 10,        // exp(-x²)·sin(x)
  kSign = 11,
  kRectifiedMonomial = 12,  // degree n: max(0, x)^n
  kPolynomial = 13,   // degree n; pool[offset]: NNGP table, pool[p0]: NTK table (layer_math.hpp)
  kHermite = 14,      // degree n: neural-tangents' normalised He_n (assumes unit variance)
  kNumOpKinds = 15
};

// Dense: p0 = W², p1 = b², p2 = α (NTK weight of c_old: n_in for 'standard', 0 for 'ntk'),
//        p3 = β (+1 for a bias under 'standard'), p4 = γ (1 for 'ntk': t gets c_new).
struct LayerOp {
  int32_t kind;
  int32_t degree;
  int32_t offset;  // into the pool
  int32_t reserved;
  double p[6];
};

// Highest degree accepted for Monomial, Polynomial, RectifiedMonomial and Hermite.
constexpr int kMaxDegree = 24;

// A borrowed view of a program: ops, and the pool their tables live in.
struct ProgramView {
  const LayerOp* ops;
  int32_t n_ops;
  const double* pool;
};

}  // namespace ntkfast
