// cpu_kernels.cpp -- the tile epilogue and the per-row recursion on the CPU, compiled once per
// instruction set (NTKFAST_ISA_NAMESPACE = generic | avx2 | avx512, see CMakeLists.txt).
//
// Math: layer_math.hpp (and row_step.hpp for the per-row recursion), applied to simd.hpp's lanes
// (vdouble; Pack<G> of G vdoubles in the tile). Everything is computed in double, also for float32
// storage: the float32 result is rounded once, at the end.
// Layout: a tile row is processed in chunks of kChunk entries held in L1 (c, t); the ops run one
// after the other over the whole chunk, so the chunk's lanes are independent work for the
// out-of-order core (one entry alone is a ~100-cycle dependency chain per layer). A Dense op is
// applied as the next op's first pass loads the chunk; the arc-cosine family (ReLU & co., the
// hottest loop of the library) runs as three short passes, the other ops as one, over Packs.
// Invariants: the GEMM result is read once and the outputs are written once per entry; the
// per-row tables are read as whole vectors past the last row (they are padded, cpu_kernels.hpp);
// a Gram entry goes through exactly the operations of row_step.hpp's per-row recursion, in the
// same order, so a duplicate row equals the diagonal to the last bit. Entries whose input |ρ| is
// near 1 (a mask test per chunk, in the snap's pass) take their values from the input rows
// instead (exact_pair.hpp): rare, scalar, out of line, so a chunk without them costs one branch.
// Only the C library and this directory's headers are used here: no standard-library templates,
// whose out-of-line copies the linker could share with code compiled for another ISA.
#include <cstring>

#include "simd.hpp"
#include "ntkfast/exact_pair.hpp"
#include "ntkfast/layer_math.hpp"
#include "ntkfast/row_step.hpp"
#include "ntkfast/series_math.hpp"
#include "ntkfast/series_fallback.hpp"
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
static_assert(kChunk <= kRowPad, "row tables are padded by at least one chunk");
// Vectors per Pack (simd.hpp): 4 for the one-pass ops, 2 for the three passes of the arc-cosine
// family, whose chains are short already (best of 1, 2, 4 on Zen 4, AVX-512 and AVX2 kernels).
constexpr int kPackOnePass = 4;
constexpr int kPackPasses = 2;
static_assert(kChunk % (kPackOnePass * kLanes) == 0 && kChunk % (kPackPasses * kLanes) == 0,
              "a chunk is whole Packs");

inline vdouble load(const double* p) {
  vdouble v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store(double* p, vdouble v) { std::memcpy(p, &v, sizeof v); }
// Part by part: a memcpy of the whole Pack makes GCC copy it through the stack.
template <int G>
inline Pack<G> load_pack(const double* p) {
  Pack<G> v;
  for (int g = 0; g < G; ++g) v.v[g] = load(p + g * kLanes);
  return v;
}
template <int G>
inline void store_pack(double* p, const Pack<G>& v) {
  for (int g = 0; g < G; ++g) store(p + g * kLanes, v.v[g]);
}

// Entries of a chunk with a rescaled row (row_step.hpp) are recomputed by apply_op_rescaled from
// the op's input (c_in, t_in, saved before the vector pass): rare, so scalar, and the vector pass
// stays as fast as it was.
template <bool WithNtk>
void rescue_rescaled(const LayerOp& op, const double* pool, const RowTables& rows1, int64_t i,
                     const RowTables& rows2, int64_t j0, int k, int m, const double* c_in,
                     const double* t_in, double* c, double* t) {
  const int64_t o1 = k * rows1.stride + i;
  const int32_t e1 = rows1.rescale ? rows1.rescale[o1] : 0;
  for (int j = 0; j < m; ++j) {
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

// Runs the whole program on one chunk: row i of rows1 against entries [j0, j0 + m) of rows2
// (m <= kChunk; the passes cover whole Packs up to m, so a row's short last chunk, e.g. in the
// ragged rows of a diagonal tile, costs what it holds and not a full chunk). Full: m == kChunk, a
// trip count the compiler knows, so it unrolls the passes (~15 % faster on AVX2 than a loop to m).
// A Dense op followed by another op is not a pass of its own: it is applied as the next op's
// first pass loads the chunk (the same operations in the same order, so the same bits as
// row_step's diagonal).
// A Series op on a chunk (program.hpp): series_math.hpp's per-entry math, with the terms chosen
// per chunk, at its largest |ρ| (the CUDA engine chooses them per entry), and the Horner sums
// of series_sum run on Packs of lanes.
template <bool WithNtk>
void series_chunk(const LayerOp& op, const RowTables& rows1, int64_t i, const RowTables& rows2,
                  int64_t j0, int k, int m, SeriesTails* tails, double* c, double* t) {
  constexpr int G = kPackOnePass;
  const int64_t row0 = int64_t(op.p[0]), degree = op.degree;
  const int64_t s1 = rows1.stride, s2 = rows2.stride;
  const double* a1 = rows1.series + (row0 + 2) * s1 + i;
  const double* b1 = a1 + (degree + 1) * s1;
  const double* a2 = rows2.series + (row0 + 2) * s2 + j0;
  const double* b2 = a2 + (degree + 1) * s2;
  const double m0 = rows1.series[row0 * s1 + i], m1 = rows1.series[(row0 + 1) * s1 + i];
  const double q1 = rows1.q[k * s1 + i], sq1 = rows1.sq[k * s1 + i];
  const double* q2 = rows2.q + k * s2 + j0;
  const double* sq2 = rows2.sq + k * s2 + j0;
  // rho_terms: the |ρ| that decides an entry's terms, 0 for a duplicate (it takes the exact
  // diagonal below: its ρ = 1 must not set the chunk's terms nor send it to the fallback).
  alignas(64) double rho[kChunk], rho_terms[kChunk];
  double rho_max = 0.0;
  for (int j = 0; j < m; ++j) {
    rho[j] = series_correlation(c[j], sq1 * sq2[j]);
    const bool duplicate = series_duplicate(c[j], q1, q2[j]);
    rho_terms[j] = duplicate ? 0.0 : __builtin_fabs(rho[j]);
    rho_max = rho_terms[j] > rho_max ? rho_terms[j] : rho_max;
  }
  for (int j = m; j < kChunk; ++j) rho[j] = 0.0;
  const double* profile = tails->profiles + int64_t(op.p[1]) * tails->profile_len;
  double bound;
  const int64_t n = series_terms(rho_max, profile, degree, bound);
  // Entries the degree + 1 terms leave above fallback_above: by 2-D quadrature instead (their t
  // kept, the vector pass's values overwritten below), where the op has a fallback record.
  const double* fallback =
      tails->fallbacks ? tails->fallbacks + int64_t(op.p[1]) * tails->fallback_len : nullptr;
  int fallback_count = 0;
  int fallback_at[kChunk];
  double fallback_t[kChunk];
  if (bound > tails->fallback_above && fallback && fallback[0] >= 0.0) {
    bound = 0.0;
    for (int j = 0; j < m; ++j) {
      const double own = series_own_bound(rho_terms[j], n, profile);
      if (own > tails->fallback_above) {
        fallback_at[fallback_count] = j;
        fallback_t[fallback_count++] = WithNtk ? t[j] : 0.0;
      } else if (own > bound) {
        bound = own;
      }
    }
  }
  if (bound > tails->max_bound) tails->max_bound = bound;
  // Row i's coefficients, contiguous: in the table they are a row stride apart (the same L1 set).
  alignas(64) double a1_row[kMaxSeriesDegree + 1];
  for (int64_t q = 0; q <= n; ++q) a1_row[q] = a1[q * s1];
  const int m_packs = (m + G * kLanes - 1) / (G * kLanes) * (G * kLanes);
  for (int p = 0; p < m_packs; p += G * kLanes) {
    const Pack<G> r = load_pack<G>(rho + p);
    const Pack<G> scale = sq1 * load_pack<G>(sq2 + p);
    Pack<G> e = splat<Pack<G>>(a1_row[n]) * load_pack<G>(a2 + n * s2 + p);
    Pack<G> de = splat<Pack<G>>(0.0);
    for (int64_t q = n - 1; q >= 0; --q) {
      if (WithNtk) de = nt_mad(de, r, e);
      e = nt_mad(e, r, splat<Pack<G>>(a1_row[q]) * load_pack<G>(a2 + q * s2 + p));
    }
    Pack<G> ed = de / scale;
    if (WithNtk) {
      bool small = false;
      for (int g = 0; g < G; ++g)
        for (int l = 0; l < kLanes; ++l) small = small || !(scale.v[g][l] >= kSeriesMinScale);
      if (small) {  // rare: the B series itself
        Pack<G> direct = splat<Pack<G>>(b1[(n - 1) * s1]) * load_pack<G>(b2 + (n - 1) * s2 + p);
        for (int64_t q = n - 2; q >= 0; --q)
          direct = nt_mad(direct, r, splat<Pack<G>>(b1[q * s1]) * load_pack<G>(b2 + q * s2 + p));
        ed = nt_select(scale >= kSeriesMinScale, ed, direct);
      }
    }
    const Pack<G> cv = load_pack<G>(c + p);
    const PackMask<G> duplicate = (cv == q1) & (load_pack<G>(q2 + p) == q1);
    store_pack(c + p, nt_select(duplicate, splat<Pack<G>>(m0), e));
    if (WithNtk)
      store_pack(t + p, load_pack<G>(t + p) * nt_select(duplicate, splat<Pack<G>>(m1), ed));
  }
  tails->fallback_pairs += fallback_count;
  for (int f = 0; f < fallback_count; ++f) {
    if (tails->interrupt && tails->interrupt(tails->interrupt_context)) throw TileStopped{};
    const int j = fallback_at[f];
    double value, dot;
    series_pair_fallback(fallback, sq1, sq2[j], rho[j], &value, &dot);
    c[j] = value;
    if (WithNtk) t[j] = fallback_t[f] * dot;
  }
}

template <bool WithNtk, bool Full>
void run_program_chunk(ProgramView prog, const RowTables& rows1, int64_t i, const RowTables& rows2,
                       int64_t j0, int m_given, SeriesTails* tails, double* c, double* t) {
  const int m = Full ? kChunk : m_given;
  const bool any_rescaled = rows1.rescale || rows2.rescale;
  const LayerOp* dense = nullptr;  // a Dense op still to be applied to c and t
  for (int k = 0; k < prog.n_ops; ++k) {
    const LayerOp& op = prog.ops[k];
    // The rescue needs the op's input in memory, so a Dense op before a rescued op runs alone.
    if (op.kind == kDense && !dense && k + 1 < prog.n_ops && !any_rescaled) {
      dense = &op;
      continue;
    }
    alignas(64) double c_in[kChunk], t_in[kChunk];
    const bool rescue = any_rescaled && homogeneous_degree(op) >= 0;
    if (rescue) {
      std::memcpy(c_in, c, sizeof c_in);
      if (WithNtk) std::memcpy(t_in, t, sizeof t_in);
    }
    const double q1 = rows1.q[k * rows1.stride + i], sq1 = rows1.sq[k * rows1.stride + i];
    const double* q2 = rows2.q + k * rows2.stride + j0;
    const double* sq2 = rows2.sq + k * rows2.stride + j0;
// One pass over the chunk, G vectors at a time: loads (c, t), applies DENSE (may be null), runs
// CALL on ps, cv, tv, stores (c, t). The op switch is outside the loop.
#define NTKFAST_CHUNK_LOOP(G, DENSE, CALL)                                                   \
  for (int p = 0; p < m; p += G * kLanes) {                                                \
    const PairStats<Pack<G>> ps{splat<Pack<G>>(q1), load_pack<G>(q2 + p),                  \
                                splat<Pack<G>>(sq1), load_pack<G>(sq2 + p)};               \
    (void)ps;                                                                              \
    Pack<G> cv = load_pack<G>(c + p);                                                      \
    Pack<G> tv = WithNtk ? load_pack<G>(t + p) : Pack<G>{};                                \
    if (DENSE) op_dense<WithNtk>(*DENSE, cv, tv);                                          \
    CALL;                                                                                  \
    store_pack(c + p, cv);                                                                 \
    if (WithNtk) store_pack(t + p, tv);                                                    \
  }
#define NTKFAST_ONE_PASS(CALL) NTKFAST_CHUNK_LOOP(kPackOnePass, dense, CALL) break;
    switch (static_cast<OpKind>(op.kind)) {  // no default: a forgotten op does not compile
      case kDense: NTKFAST_ONE_PASS(op_dense<WithNtk>(op, cv, tv))
      case kIdentity:  // a pass only to apply a pending Dense
        if (dense) {
          NTKFAST_CHUNK_LOOP(kPackOnePass, dense, (void)0)
        }
        break;
      case kABRelu: {
        // Three passes (r; θ's reduction; θ and the update): each a short dependency chain, so
        // the out-of-order core overlaps many lanes of the chunk.
        constexpr int G = kPackPasses;
        alignas(64) double r[kChunk], w[kChunk], base[kChunk];
        NTKFAST_CHUNK_LOOP(G, dense, store_pack(r + p, abrelu_sine(ps, cv)))
        const LayerOp* none = nullptr;
        for (int p = 0; p < m; p += G * kLanes) {
          const Pack<G> s = splat<Pack<G>>(sq1) * load_pack<G>(sq2 + p);
          const AngleParts<Pack<G>> parts =
              arccos_angle_parts(load_pack<G>(r + p), load_pack<G>(c + p), s);
          store_pack(w + p, parts.w);
          store_pack(base + p, parts.base);
        }
        NTKFAST_CHUNK_LOOP(G, none, abrelu_update<WithNtk>(
            op, load_pack<G>(r + p),
            arccos_angle_from_parts(
                AngleParts<Pack<G>>{load_pack<G>(w + p), load_pack<G>(base + p)}),
            cv, tv))
        break;
      }
      case kErf: NTKFAST_ONE_PASS(op_erf<WithNtk>(op, ps, cv, tv))
      case kGelu: NTKFAST_ONE_PASS(op_gelu<WithNtk>(ps, cv, tv))
      case kSin: NTKFAST_ONE_PASS(op_sin<WithNtk>(op, ps, cv, tv))
      case kRbf: NTKFAST_ONE_PASS(op_rbf<WithNtk>(op, ps, cv, tv))
      case kExp: NTKFAST_ONE_PASS(op_exp<WithNtk>(op, ps, cv, tv))
      case kExpNormalized: NTKFAST_ONE_PASS(op_exp_normalized<WithNtk>(op, ps, cv, tv))
      case kGaussian: NTKFAST_ONE_PASS(op_gaussian<WithNtk>(op, ps, cv, tv))
      case kGabor: NTKFAST_ONE_PASS(op_gabor<WithNtk>(ps, cv, tv))
      case kSign: NTKFAST_ONE_PASS(op_sign<WithNtk>(ps, cv, tv))
      case kRectifiedMonomial: NTKFAST_ONE_PASS(op_rectified_monomial<WithNtk>(op, ps, cv, tv))
      case kPolynomial: NTKFAST_ONE_PASS(op_polynomial<WithNtk>(op, prog.pool, ps, cv, tv))
      case kHermite: NTKFAST_ONE_PASS(op_hermite<WithNtk>(op, cv, tv))
      case kSeries:
        if (dense) {
          NTKFAST_CHUNK_LOOP(kPackOnePass, dense, (void)0)
        }
        series_chunk<WithNtk>(op, rows1, i, rows2, j0, k, m, tails, c, t);
        break;
      case kCallback:  // never inside a segment (engine.cpp splits the program at callbacks)
        for (int j = 0; j < m; ++j) c[j] = t[j] = __builtin_nan("");
        break;
    }
#undef NTKFAST_ONE_PASS
#undef NTKFAST_CHUNK_LOOP
    dense = nullptr;
    if (rescue)
      rescue_rescaled<WithNtk>(op, prog.pool, rows1, i, rows2, j0, k, m, c_in, t_in, c, t);
  }
}

template <bool WithNtk>
bool row_pass_impl(ProgramView prog, int64_t n, RowTables tab, double* ntk_diag) {
  bool any_rescaled = false;
  for (int64_t i0 = 0; i0 < n; i0 += kLanes) {
    vdouble t = WithNtk ? load(ntk_diag + i0) : vdouble{};
    for (int k = 0; k < prog.n_ops; ++k) {
      const LayerOp& op = prog.ops[k];
      const vdouble q = load(tab.q + k * tab.stride + i0), sq = load(tab.sq + k * tab.stride + i0);
      vdouble q_next, sq_next;
      const vdouble t_in = t;
      if (op.kind == kSeries) {  // the row's own E[φ²], E[φ'²] from its table (series_chunk)
        const double* m = tab.series + int64_t(op.p[0]) * tab.stride + i0;
        series_row_step<WithNtk>(load(m), load(m + tab.stride), t, q_next, sq_next);
        store(tab.q + (k + 1) * tab.stride + i0, q_next);
        store(tab.sq + (k + 1) * tab.stride + i0, sq_next);
        continue;
      }
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

// The near-parallel entries of a chunk, from the input rows (exact_pair.hpp), before the vector
// passes run (c: the snapped input Gram): their (c, t) go to c_exact, t_exact, and the result has
// bit j set where entry j is to be replaced. Out of line and only called for a chunk with such an
// entry, so the common path pays one mask test per chunk.
template <bool WithNtk, class T>
__attribute__((noinline)) uint64_t exact_pairs(const TileArgs<T>& a, int64_t i, int64_t j0, int m,
                                               const double* c, double* c_exact, double* t_exact) {
  static_assert(kChunk <= 64, "one bit per entry");
  const RowTables &r1 = a.rows1, &r2 = a.rows2;
  vmask near[kChunk / kLanes];
  const vdouble q1 = splat<vdouble>(r1.q[i]), sq1 = splat<vdouble>(r1.sq[i]);
  for (int p = 0; p < kChunk; p += kLanes)
    near[p / kLanes] = near_parallel(load(c + p), pair_scale(q1, load(r2.q + j0 + p), sq1,
                                                             load(r2.sq + j0 + p)));
  uint64_t bits = 0;
  for (int j = 0; j < m; ++j) {
    if (!near[j / kLanes][j % kLanes]) continue;
    const int64_t jj = j0 + j;
    if (exact_pair_entry<WithNtk>(a.prog, a.x1 + i * a.n_features, a.x2 + jj * a.n_features,
                                  a.n_features, a.inv_d, r1.q + i, r1.sq + i,
                                  r1.rescale ? r1.rescale + i : nullptr, r1.stride, r2.q + jj,
                                  r2.sq + jj, r2.rescale ? r2.rescale + jj : nullptr, r2.stride,
                                  c_exact[j], t_exact[j]))
      bits |= uint64_t(1) << j;
  }
  return bits;
}

// A chunk's (c, t) entering the program: c the input Gram of row i against columns j0.., undone
// from the GEMM's scaling, divided by d and snapped; t = 0. Entries whose input |ρ| is near 1 are
// recomputed from the input rows where the tile has them (bit j of `exact`: c_exact, t_exact).
template <bool WithNtk, class T>
inline void input_chunk(const TileArgs<T>& a, int64_t i, int64_t j0, int m, vdouble q1,
                        vdouble sq1, double* c, double* t, uint64_t& exact, double* c_exact,
                        double* t_exact) {
  const T* g = a.gram + i * a.ld_gram + j0;
  if (a.scale_exp1) {  // rows GEMMed as x·2^-k (engine.cpp): undo it exactly
    const int e1 = a.scale_exp1[i];
    const int32_t* e2 = a.scale_exp2 + j0;
    for (int j = 0; j < kChunk; ++j)
      c[j] = j < m ? __builtin_ldexp(double(g[j]), e1 + e2[j]) * a.inv_d : 0.0;
  } else {
    for (int j = 0; j < kChunk; ++j) c[j] = j < m ? double(g[j]) * a.inv_d : 0.0;
  }
  vmask near{};  // any entry whose input |ρ| is near 1 (exact_pair.hpp): rare
  for (int p = 0; p < kChunk; p += kLanes) {
    const vdouble s = pair_scale(q1, load(a.rows2.q + j0 + p), sq1, load(a.rows2.sq + j0 + p));
    const vdouble cs = snap_input_correlation(load(c + p), s, a.snap_tol);
    near |= near_parallel(cs, s);
    store(c + p, cs);
  }
  bool any_near = false;
  for (int l = 0; l < kLanes; ++l) any_near |= near[l] != 0;
  if (any_near && a.x1) exact = exact_pairs<WithNtk>(a, i, j0, m, c, c_exact, t_exact);
  if (WithNtk)
    for (int j = 0; j < kChunk; ++j) t[j] = 0.0;
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
      uint64_t exact = 0;
      alignas(64) double c_exact[kChunk], t_exact[kChunk];
      if (a.c_in) {  // a later segment: the state an earlier one left
        const double* cs = a.c_in + i * a.ld_state + j0;
        const double* ts = WithNtk ? a.t_in + i * a.ld_state + j0 : nullptr;
        for (int j = 0; j < kChunk; ++j) c[j] = j < m ? cs[j] : 0.0;
        if (WithNtk)
          for (int j = 0; j < kChunk; ++j) t[j] = j < m ? ts[j] : 0.0;
      } else {
        input_chunk<WithNtk>(a, i, j0, int(m), q1, sq1, c, t, exact, c_exact, t_exact);
      }
      if (m == kChunk)
        run_program_chunk<WithNtk, true>(a.prog, a.rows1, i, a.rows2, j0, kChunk, a.series_tails,
                                         c, t);
      else
        run_program_chunk<WithNtk, false>(a.prog, a.rows1, i, a.rows2, j0, int(m),
                                          a.series_tails, c, t);
      if (exact)
        for (int j = 0; j < m; ++j)
          if (exact >> j & 1) {
            c[j] = c_exact[j];
            if (WithNtk) t[j] = t_exact[j];
          }
      if (a.c_out) {
        std::memcpy(a.c_out + i * a.ld_state + j0, c, size_t(m) * sizeof(double));
        if (WithNtk) std::memcpy(a.t_out + i * a.ld_state + j0, t, size_t(m) * sizeof(double));
        continue;
      }
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
  if (a.ntk || a.t_out)
    tile_impl<T, true>(a);
  else
    tile_impl<T, false>(a);
}

}  // namespace
}  // namespace NTKFAST_ISA_NAMESPACE

extern const CpuKernels NTKFAST_KERNEL_TABLE = {NTKFAST_ISA_LABEL, kLanes, &row_pass, &tile<double>,
                                                &tile<float>};

}  // namespace ntkfast
