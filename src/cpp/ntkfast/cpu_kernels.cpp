// cpu_kernels.cpp -- the tile epilogue and the per-row recursion on the CPU, compiled once per
// instruction set (NTKFAST_ISA_NAMESPACE = generic | avx2 | avx512, see CMakeLists.txt).
//
// Math: layer_math.hpp (and row_step.hpp for the per-row recursion), applied to vdouble lanes
// (simd.hpp). Everything is computed in double, also for float32 storage: the float32 result is
// rounded once, at the end.
// Layout: a tile row is processed in chunks of kChunk entries; each op runs over the whole chunk
// before the next op starts, so the lanes of a chunk are independent work for the out-of-order
// core (one entry alone is a ~100-cycle dependency chain per layer) and the chunk stays in L1.
// Invariants: the GEMM result is read once and the outputs are written once per entry; the
// per-row tables are read as whole vectors past the last row (they are padded, cpu_kernels.hpp).
// Only the C library and this directory's headers are used here: no standard-library templates,
// whose out-of-line copies the linker could share with code compiled for another ISA.
#include <cstring>

#include "simd.hpp"
#include "ntkfast/layer_math.hpp"
#include "ntkfast/row_step.hpp"
#include "cpu_kernels.hpp"

#ifndef NTKFAST_KERNEL_TABLE
#define NTKFAST_KERNEL_TABLE kCpuKernelsGeneric
#define NTKFAST_ISA_LABEL "generic"
#endif

namespace ntkfast {
inline namespace NTKFAST_ISA_NAMESPACE {
namespace {

constexpr int kChunk = 64;
static_assert(kChunk % kLanes == 0, "a chunk is whole vectors");
constexpr int kVecs = kChunk / kLanes;
static_assert(kChunk <= kRowPad, "row tables are padded by at least one chunk");

inline vdouble load(const double* p) {
  vdouble v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store(double* p, vdouble v) { std::memcpy(p, &v, sizeof v); }

// Entries of a chunk with a rescaled row (row_step.hpp) are recomputed by apply_op_rescaled from
// the op's input (c_in, t_in, saved before the vector pass): rare, so scalar, and the vector pass
// stays as fast as it was.
template <bool WithNtk>
void rescue_rescaled(const LayerOp& op, const double* pool, const RowTables& rows1, int64_t i,
                     const RowTables& rows2, int64_t j0, int k, const double* c_in,
                     const double* t_in, double* c, double* t) {
  const int64_t o1 = k * rows1.stride + i;
  const int32_t e1 = rows1.rescale ? rows1.rescale[o1] : 0;
  for (int j = 0; j < kChunk; ++j) {
    const int64_t o2 = k * rows2.stride + j0 + j;
    const int32_t e2 = rows2.rescale ? rows2.rescale[o2] : 0;
    if (e1 == 0 && e2 == 0) continue;
    const PairStats<double> ps{rows1.q[o1], rows2.q[o2], rows1.sq[o1], rows2.sq[o2]};
    double cj = c_in[j], tj = WithNtk ? t_in[j] : 0.0;
    apply_op_rescaled<WithNtk>(op, pool, ps, e1, e2, cj, tj);
    c[j] = cj;
    if (WithNtk) t[j] = tj;
  }
}

// Runs the whole program on one chunk: row i of rows1 against entries [j0, j0 + kChunk) of rows2.
template <bool WithNtk>
void run_program_chunk(ProgramView prog, const RowTables& rows1, int64_t i, const RowTables& rows2,
                       int64_t j0, double* c, double* t) {
  const bool any_rescaled = rows1.rescale || rows2.rescale;
  for (int k = 0; k < prog.n_ops; ++k) {
    const LayerOp& op = prog.ops[k];
    alignas(64) double c_in[kChunk], t_in[kChunk];
    const bool rescue = any_rescaled && homogeneous_degree(op) >= 0;
    if (rescue) {
      std::memcpy(c_in, c, sizeof c_in);
      if (WithNtk) std::memcpy(t_in, t, sizeof t_in);
    }
    const vdouble q1 = splat<vdouble>(rows1.q[k * rows1.stride + i]);
    const vdouble sq1 = splat<vdouble>(rows1.sq[k * rows1.stride + i]);
    const double* q2 = rows2.q + k * rows2.stride + j0;
    const double* sq2 = rows2.sq + k * rows2.stride + j0;
// The op switch is outside the lane loop; CALL uses ps, cv, tv.
#define NTKFAST_CHUNK_LOOP(CALL)                                                   \
  for (int v = 0; v < kVecs; ++v) {                                                \
    const PairStats<vdouble> ps{q1, load(q2 + v * kLanes), sq1, load(sq2 + v * kLanes)}; \
    (void)ps;                                                                      \
    vdouble cv = load(c + v * kLanes);                                             \
    vdouble tv = WithNtk ? load(t + v * kLanes) : vdouble{};                       \
    CALL;                                                                          \
    store(c + v * kLanes, cv);                                                     \
    if (WithNtk) store(t + v * kLanes, tv);                                        \
  }                                                                                \
  break;
    switch (static_cast<OpKind>(op.kind)) {  // no default: a forgotten op does not compile
      case kDense: NTKFAST_CHUNK_LOOP(op_dense<WithNtk>(op, cv, tv))
      case kIdentity: break;
      case kABRelu: {
        alignas(64) double r[kChunk], w[kChunk], base[kChunk], sign[kChunk];
        for (int v = 0; v < kVecs; ++v) {
          const PairStats<vdouble> ps{q1, load(q2 + v * kLanes), sq1, load(sq2 + v * kLanes)};
          store(r + v * kLanes, abrelu_sine(ps, load(c + v * kLanes)));
        }
        for (int v = 0; v < kVecs; ++v) {
          const AngleParts<vdouble> parts = angle_parts(load(r + v * kLanes), load(c + v * kLanes));
          store(w + v * kLanes, parts.w);
          store(base + v * kLanes, parts.base);
          store(sign + v * kLanes, parts.sign);
        }
        NTKFAST_CHUNK_LOOP(abrelu_update<WithNtk>(
            op, load(r + v * kLanes),
            angle_from_parts(AngleParts<vdouble>{load(w + v * kLanes), load(base + v * kLanes),
                                                 load(sign + v * kLanes)}),
            cv, tv))
      }
      case kErf: NTKFAST_CHUNK_LOOP(op_erf<WithNtk>(op, ps, cv, tv))
      case kGelu: NTKFAST_CHUNK_LOOP(op_gelu<WithNtk>(ps, cv, tv))
      case kSin: NTKFAST_CHUNK_LOOP(op_sin<WithNtk>(op, ps, cv, tv))
      case kRbf: NTKFAST_CHUNK_LOOP(op_rbf<WithNtk>(op, ps, cv, tv))
      case kExp: NTKFAST_CHUNK_LOOP(op_exp<WithNtk>(op, ps, cv, tv))
      case kExpNormalized: NTKFAST_CHUNK_LOOP(op_exp_normalized<WithNtk>(op, ps, cv, tv))
      case kGaussian: NTKFAST_CHUNK_LOOP(op_gaussian<WithNtk>(op, ps, cv, tv))
      case kGabor: NTKFAST_CHUNK_LOOP(op_gabor<WithNtk>(ps, cv, tv))
      case kSign: NTKFAST_CHUNK_LOOP(op_sign<WithNtk>(ps, cv, tv))
      case kRectifiedMonomial: NTKFAST_CHUNK_LOOP(op_rectified_monomial<WithNtk>(op, ps, cv, tv))
      case kPolynomial: NTKFAST_CHUNK_LOOP(op_polynomial<WithNtk>(op, prog.pool, ps, cv, tv))
      case kHermite: NTKFAST_CHUNK_LOOP(op_hermite<WithNtk>(op, cv, tv))
    }
#undef NTKFAST_CHUNK_LOOP
    if (rescue) rescue_rescaled<WithNtk>(op, prog.pool, rows1, i, rows2, j0, k, c_in, t_in, c, t);
  }
}

template <bool WithNtk>
bool row_pass_impl(ProgramView prog, int64_t n, RowTables tab, double* ntk_diag) {
  bool any_rescaled = false;
  for (int64_t i0 = 0; i0 < n; i0 += kLanes) {
    vdouble t{};
    for (int k = 0; k < prog.n_ops; ++k) {
      const LayerOp& op = prog.ops[k];
      const vdouble q = load(tab.q + k * tab.stride + i0), sq = load(tab.sq + k * tab.stride + i0);
      vdouble q_next, sq_next;
      const vdouble t_in = t;
      row_step<WithNtk>(op, prog.pool, q, sq, t, q_next, sq_next);
      if (homogeneous_degree(op) >= 0) {
        // Lanes whose variance is out of range: again, exactly, at a rescaled variance.
        for (int l = 0; l < kLanes; ++l) {
          const int32_t e = rescale_exponent(q[l]);
          if (e == 0) continue;
          any_rescaled = true;
          tab.rescale[k * tab.stride + i0 + l] = e;
          double tl = t_in[l], ql, sql;
          row_step_rescaled<WithNtk>(op, prog.pool, q[l], sq[l], e, tl, ql, sql);
          q_next[l] = ql;
          sq_next[l] = sql;
          t[l] = tl;
        }
      }
      store(tab.q + (k + 1) * tab.stride + i0, q_next);
      store(tab.sq + (k + 1) * tab.stride + i0, sq_next);
    }
    if (WithNtk) store(ntk_diag + i0, t);
  }
  return any_rescaled;
}

bool row_pass(ProgramView prog, int64_t n, RowTables tab, double* ntk_diag) {
  if (ntk_diag) return row_pass_impl<true>(prog, n, tab, ntk_diag);
  return row_pass_impl<false>(prog, n, tab, nullptr);
}

template <class T, bool WithNtk>
void tile_impl(const TileArgs<T>& a) {
  alignas(64) double c[kChunk];
  alignas(64) double t[kChunk];
  for (int64_t i = 0; i < a.rows; ++i) {
    const int64_t j_begin = a.strictly_upper ? i + 1 : 0;
    const vdouble q1 = splat<vdouble>(a.rows1.q[i]);
    const vdouble sq1 = splat<vdouble>(a.rows1.sq[i]);
    for (int64_t j0 = j_begin; j0 < a.cols; j0 += kChunk) {
      const int64_t m = a.cols - j0 < kChunk ? a.cols - j0 : kChunk;
      const T* g = a.gram + i * a.ld_gram + j0;
      if (a.scale_exp1) {  // rows GEMMed as x·2^-k (engine.cpp): undo it exactly
        const int e1 = a.scale_exp1[i];
        const int32_t* e2 = a.scale_exp2 + j0;
        for (int j = 0; j < kChunk; ++j)
          c[j] = j < m ? __builtin_ldexp(double(g[j]), e1 + e2[j]) * a.inv_d : 0.0;
      } else {
        for (int j = 0; j < kChunk; ++j) c[j] = j < m ? double(g[j]) * a.inv_d : 0.0;
      }
      for (int v = 0; v < kVecs; ++v) {
        const vdouble s = pair_scale(q1, load(a.rows2.q + j0 + v * kLanes), sq1,
                                     load(a.rows2.sq + j0 + v * kLanes));
        store(c + v * kLanes, snap_input_correlation(load(c + v * kLanes), s, a.snap_tol));
      }
      if (WithNtk)
        for (int j = 0; j < kChunk; ++j) t[j] = 0.0;
      run_program_chunk<WithNtk>(a.prog, a.rows1, i, a.rows2, j0, c, t);
      if (a.nngp) {
        T* out = a.nngp + i * a.ld_nngp + j0;
        for (int64_t j = 0; j < m; ++j) out[j] = T(c[j]);
      }
      if (WithNtk) {
        T* out = a.ntk + i * a.ld_ntk + j0;
        for (int64_t j = 0; j < m; ++j) out[j] = T(t[j]);
      }
    }
  }
}

template <class T>
void tile(const TileArgs<T>& a) {
  if (a.ntk)
    tile_impl<T, true>(a);
  else
    tile_impl<T, false>(a);
}

}  // namespace
}  // namespace NTKFAST_ISA_NAMESPACE

extern const CpuKernels NTKFAST_KERNEL_TABLE = {NTKFAST_ISA_LABEL, kLanes, &row_pass, &tile<double>,
                                                &tile<float>};

}  // namespace ntkfast
