// skip_linear on the CPU: y = act(x W^T + b) + S(x), fused, C++/OpenMP on raw pointers.
//
// Shapes (row-major, contiguous): x [M, K], W [N, K], b [N] or null, Q [N, K] or null (dense skip),
// y, z [M, N] (z = x W^T + b, the pre-activation saved for backward).
//
// Forward: one packed, register-blocked GEMM per layer. W^T (and Q^T) are packed into NR-wide panels
// once per call (O(NK), in-register transposes, shared by the threads); each thread owns a block of
// rows of x (a batch smaller than one MR block per thread splits the panels instead) and, chunk of MC
// rows by chunk, runs the micro-kernel over its rows x every panel. The epilogue (bias, activation, z and y stores, identity
// skip add or the second accumulator set of the dense skip x Q^T) is fused into the tile write-back,
// so y and z are written exactly once and never re-read.
//
// Backward (g = grad_y): the batch is cut into a fixed number of row blocks (the thread count asked
// for), each with its own scratch; the threads OpenMP actually gives take the blocks in turn. A block
// is walked in chunks of MC rows, computing gz = g * act'(z) once into its scratch (accumulating db)
// and, while the chunk is in L2, dx = gz W (+ g, or + g Q as a second stretch of the reduction into the
// same registers). Then its partial dW = gz^T x over all of its rows, each dW tile reduced in registers
// and stored once. Partial dW/db are summed over the blocks in block order at the end (no atomics).
// act'(z) is recomputed from z (no bitmask). A null dx, dW or db output is not computed: the dx GEMM
// (the input layer's dx, which nothing uses) or the dW GEMM and its partial sums are skipped.
//
// OpenMP may give a region fewer threads than omp_get_max_threads() (OMP_THREAD_LIMIT, OMP_DYNAMIC,
// nesting): nothing here sizes or indexes scratch by the thread number. Blocks and scratch are fixed
// before the region; the forward indexes its per-thread tails by omp_get_thread_num() < team <= nt.
// So the result does not depend on the team size (bitwise).
#include <omp.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "skip_gemm.h"

namespace py = pybind11;

namespace skipkern {

// Below this many multiply-adds a parallel region costs more than it saves: run on one thread.
constexpr double kParallelMinMacs = 1 << 18;

inline int threads_for(double macs) {
  return macs < kParallelMinMacs ? 1 : std::max(1, omp_get_max_threads());
}

// Rows [begin, end) of thread t out of nt, in whole MR blocks so that only the last block has a tail.
inline void row_range(long m, int t, int nt, int mr, long* begin, long* end) {
  const long per = round_up(ceil_div(m, nt), mr);
  *begin = std::min(m, t * per);
  *end = std::min(m, *begin + per);
}

// Copies mr (< MR) rows of a [*, cols] row-major matrix into a zeroed MR-row buffer, so that a tail
// block runs through the same full-size micro-kernel.
template <typename T>
const T* pad_rows(const T* src, long ld, int mr, int MR, long cols, T* buf) {
  for (int i = 0; i < MR; ++i)
    for (long p = 0; p < cols; ++p) buf[i * cols + p] = i < mr ? src[i * ld + p] : T(0);
  return buf;
}

// ----------------------------------------------------------------------------------------- forward
template <typename T, int MR, bool DUAL>
void fwd_impl(const T* x, const T* w, const T* bias, const T* q, T* y, T* z, long M, long K, long N,
              Skip skip, Act act) {
  using V = Vec<T>;
  using R = typename V::reg;
  constexpr int NV = kNV, NR = kNR<T>;
  const long np = ceil_div(N, NR);
  Scratch& ws = thread_scratch();
  T* wp = ws.get<T>(0, np * K * NR);
  T* qp = DUAL ? ws.get<T>(1, np * K * NR) : nullptr;
  const int nt = threads_for(double(M) * N * K * (DUAL ? 2 : 1));
  T* tails = ws.get<T>(2, static_cast<std::size_t>(nt) * MR * K);

  // Row chunk: MC rows of x (~192 KiB) stay in L2 while every W^T panel streams past them once.
  const long mc = std::clamp<long>((192 << 10) / (std::max<long>(K, 1) * long(sizeof(T))) / MR * MR, MR, 512);

#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num(), team = omp_get_num_threads();
    for (long j = t; j < np; j += team) {
      pack_panel_transposed(w, N, K, j, wp + j * K * NR);
      if (DUAL) pack_panel_transposed(q, N, K, j, qp + j * K * NR);
    }
    // Work split: rows in whole MR blocks; a batch too small to share out splits the panels instead.
    long m_begin = 0, m_end = M, j_begin = 0, j_end = np;
    if (ceil_div(M, MR) >= team) {
      row_range(M, t, team, MR, &m_begin, &m_end);
    } else {
      const long per = ceil_div(np, team);
      j_begin = std::min(np, t * per);
      j_end = std::min(np, j_begin + per);
    }
    T* tail = tails + t * MR * K;
#pragma omp barrier
    for (long c0 = m_begin; c0 < m_end; c0 += mc) {
      const long c1 = std::min(m_end, c0 + mc);
      const long last = c0 + (c1 - c0 - 1) / MR * MR;  // first row of the chunk's last MR block
      const int last_mr = static_cast<int>(c1 - last);
      if (last_mr < MR) pad_rows(x + last * K, K, last_mr, MR, K, tail);
      for (long j = j_begin; j < j_end; ++j) {
        const long n0 = j * NR;
        for (long m0 = c0; m0 < c1; m0 += MR) {
          const int mr = static_cast<int>(std::min<long>(MR, c1 - m0));
          R c[MR][NV], s[MR][NV];
          zero_tile<T, MR, NV>(c);
          if (DUAL) zero_tile<T, MR, NV>(s);
          micro_kernel<T, MR, NV, false, DUAL>(c, s, mr == MR ? x + m0 * K : tail, K, wp + j * K * NR,
                                               DUAL ? qp + j * K * NR : nullptr, K);
          // Fused epilogue: z = acc + b; y = act(z) + S(x).
#pragma GCC unroll 16
          for (int i = 0; i < MR; ++i) {
            if (i >= mr) break;
            const long row = m0 + i;
#pragma GCC unroll 8
            for (int v = 0; v < NV; ++v) {
              const int n = lanes_in<T>(n0, v, N);
              if (n <= 0) break;
              const long col = n0 + v * V::size;
              R zz = c[i][v];
              if (bias) zz = V::add(zz, load_lanes(bias + col, n));
              store_lanes(z + row * N + col, zz, n);
              R yy = act_vec<T>(zz, act);
              if (skip == Skip::kIdentity) yy = V::add(yy, load_lanes(x + row * K + col, n));
              if (DUAL) yy = V::add(yy, s[i][v]);
              store_lanes(y + row * N + col, yy, n);
            }
          }
        }
      }
    }
  }
}

template <typename T>
void skip_linear_fwd_cpu(const T* x, const T* w, const T* bias, const T* q, T* y, T* z, long M, long K, long N,
                         Skip skip, Act act) {
  if (M <= 0 || N <= 0) return;
  if (skip == Skip::kDense)
    fwd_impl<T, kMRDual, true>(x, w, bias, q, y, z, M, K, N, skip, act);
  else
    fwd_impl<T, kMR, false>(x, w, bias, nullptr, y, z, M, K, N, skip, act);
}

// ---------------------------------------------------------------------------------------- backward
template <typename T, bool DENSE>
void bwd_impl(const T* gy, const T* x, const T* w, const T* zin, const T* q, T* dx, T* dw, T* db, long M,
              long K, long N, Skip skip, Act act) {
  using V = Vec<T>;
  using R = typename V::reg;
  constexpr int MR = kMR, NV = kNV, NR = kNR<T>;
  const long npk = ceil_div(K, NR);  // panels over K (columns of dx and dW)
  const long ldg = round_up(N, MR);  // gz row stride, zero padded so dW's col-layout A has full tiles
  // dx row chunk: its gz rows (~192 KiB) stay in L2 while the W (Q) panels stream past once.
  const long mc = std::clamp<long>((192 << 10) / (ldg * long(sizeof(T))) / MR * MR, MR, 512);
  // dW reduction block: kcb rows of gz (~512 KiB) per pass over the dW tiles.
  const long kcb = std::clamp<long>((512 << 10) / (ldg * long(sizeof(T))) / MR * MR, 4 * MR, 2048);
  const long ldb = round_up(N, V::size);  // per-thread db partials
  const bool want_dx = dx != nullptr, want_dw = dw != nullptr;
  Scratch& ws = thread_scratch();
  T* wp = want_dx ? ws.get<T>(0, npk * N * NR) : nullptr;
  T* qp = DENSE && want_dx ? ws.get<T>(1, npk * N * NR) : nullptr;
  const int nt = threads_for((1.0 + want_dx + want_dw) * M * N * K);
  // The partition: nb row blocks of whole MR blocks, fixed here, independent of the team size.
  const int nb = nt;
  const long rows_max = round_up(ceil_div(M, nb), MR);  // most rows a block gets (row_range)
  // Per block: gz of its rows [rows_max, ldg], one packed x panel [kcb, NR], a padded tail of g
  // [MR, N], db partial [ldb], and (blocks > 0) a dW partial [N, K].
  const std::size_t per_block = rows_max * ldg + kcb * NR + MR * N + ldb + (nb > 1 && want_dw ? N * K : 0);
  T* block_bufs = ws.get<T>(2, nb * per_block);
  auto buf = [&](int blk) { return block_bufs + blk * per_block; };
  auto db_part = [&](int blk) { return buf(blk) + rows_max * ldg + kcb * NR + MR * N; };
  auto dw_part = [&](int blk) { return db_part(blk) + ldb; };

  // One row block, all of it on the calling thread: gz (+ db partial), dx rows, dW partial.
  auto run_block = [&](int blk) {
    T* gzt = buf(blk);                        // [rows_max, ldg]
    T* xpk = gzt + rows_max * ldg;            // [kcb, NR]
    T* tail = xpk + kcb * NR;                 // [MR, N]
    T* dbt = db_part(blk);                    // [ldb]
    T* dwt = blk == 0 ? dw : dw_part(blk);    // [N, K]: block 0 writes dW itself
    for (long n = 0; n < ldb; ++n) dbt[n] = T(0);
    long m_begin, m_end;
    row_range(M, blk, nb, MR, &m_begin, &m_end);
    const long my_rows = m_end - m_begin;
    for (long c0 = 0; c0 < my_rows; c0 += mc) {  // c0, rows: relative to m_begin
      const long rows = std::min(mc, my_rows - c0), rows_pad = round_up(rows, MR);
      // 1) gz = g * act'(z) for the chunk (zero padding rows and columns), db partial.
      for (long r = 0; r < rows_pad; ++r) {
        T* g = gzt + (c0 + r) * ldg;
        if (r >= rows) {
          for (long n = 0; n < ldg; ++n) g[n] = T(0);
          continue;
        }
        const T* gyr = gy + (m_begin + c0 + r) * N;
        const T* zr = zin + (m_begin + c0 + r) * N;
        for (long n = 0; n < N; n += V::size) {
          const int l = static_cast<int>(std::min<long>(V::size, N - n));
          R gz = load_lanes(gyr + n, l);
          if (act != Act::kIdentity) gz = V::mul(gz, act_grad_vec<T>(load_lanes(zr + n, l), act));
          store_lanes(g + n, gz, l);
          V::store(dbt + n, V::add(V::load(dbt + n), gz));  // lanes past N add zeros into padding
        }
        for (long n = N; n < ldg; ++n) g[n] = T(0);
      }
      // 2) dx = gz W (+ g | + g Q) for the chunk's rows; each W (Q) panel streams past the chunk once.
      if (!want_dx) continue;
      const long last = (rows - 1) / MR * MR;  // chunk-relative first row of the last MR block
      if (DENSE && rows - last < MR)
        pad_rows(gy + (m_begin + c0 + last) * N, N, int(rows - last), MR, N, tail);
      for (long j = 0; j < npk; ++j) {
        const long k0 = j * NR;
        for (long mb = 0; mb < rows; mb += MR) {
          const int mr = static_cast<int>(std::min<long>(MR, rows - mb));
          const long row0 = m_begin + c0 + mb;
          R c[MR][NV];
          zero_tile<T, MR, NV>(c);
          micro_kernel<T, MR, NV, false, false>(c, c, gzt + (c0 + mb) * ldg, ldg, wp + j * N * NR, nullptr, N);
          if (DENSE)  // second stretch of the reduction: + g Q, into the same registers
            micro_kernel<T, MR, NV, false, false>(c, c, mr == MR ? gy + row0 * N : tail, N, qp + j * N * NR,
                                                  nullptr, N);
#pragma GCC unroll 16
          for (int i = 0; i < MR; ++i) {
            if (i >= mr) break;
#pragma GCC unroll 8
            for (int v = 0; v < NV; ++v) {
              const int n = lanes_in<T>(k0, v, K);
              if (n <= 0) break;
              const long col = k0 + v * V::size;
              R d = c[i][v];
              if (skip == Skip::kIdentity) d = V::add(d, load_lanes(gy + (row0 + i) * N + col, n));
              store_lanes(dx + (row0 + i) * K + col, d, n);
            }
          }
        }
      }
    }
    // 3) dW (block part) = gz^T x over the block's rows, in blocks of kcb rows whose gz (~512 KiB)
    //    stays in L2 while one packed x panel at a time streams through the register tiles.
    for (long kb = 0; want_dw && kb < my_rows; kb += kcb) {
      const long kr = std::min(kcb, my_rows - kb);
      for (long j = 0; j < npk; ++j) {
        pack_panel(x + (m_begin + kb) * K, kr, K, K, j, xpk);
        const long k0 = j * NR;
        for (long ib = 0; ib < N; ib += MR) {
          R c[MR][NV];
          zero_tile<T, MR, NV>(c);
          micro_kernel<T, MR, NV, true, false>(c, c, gzt + kb * ldg + ib, ldg, xpk, nullptr, kr);
          const int nr = static_cast<int>(std::min<long>(MR, N - ib));
#pragma GCC unroll 16
          for (int i = 0; i < MR; ++i) {
            if (i >= nr) break;
            T* out = dwt + (ib + i) * K + k0;
#pragma GCC unroll 8
            for (int v = 0; v < NV; ++v) {
              const int n = lanes_in<T>(k0, v, K);
              if (n <= 0) break;
              T* o = out + v * V::size;
              store_lanes(o, kb == 0 ? c[i][v] : V::add(c[i][v], load_lanes(o, n)), n);
            }
          }
        }
      }
    }
  };

#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num(), team = omp_get_num_threads();
    for (long j = t; want_dx && j < npk; j += team) {  // W (Q) panels serve only dx
      pack_panel(w, N, K, K, j, wp + j * N * NR);
      if (DENSE) pack_panel(q, N, K, K, j, qp + j * N * NR);
    }
#pragma omp barrier
    for (int blk = t; blk < nb; blk += team) run_block(blk);
#pragma omp barrier
    // Add the partial dW of blocks 1.. (those that had rows) into dW, in block order, split by elements.
    const long total = N * K, per = ceil_div(total, team);
    const long e0 = std::min(total, t * per), e1 = std::min(total, e0 + per);
    for (int u = 1; want_dw && u < nb; ++u) {
      long ub, ue;
      row_range(M, u, nb, MR, &ub, &ue);
      if (ub >= ue) continue;
      const T* part = dw_part(u);
      for (long e = e0; e < e1; ++e) dw[e] += part[e];
    }
    if (db && t == 0) {
      for (long n = 0; n < N; ++n) {
        T acc = T(0);
        for (int u = 0; u < nb; ++u) acc += db_part(u)[n];
        db[n] = acc;
      }
    }
  }
}

template <typename T>
void skip_linear_bwd_cpu(const T* gy, const T* x, const T* w, const T* z, const T* q, T* dx, T* dw, T* db, long M,
                         long K, long N, Skip skip, Act act) {
  if (K < 0 || N <= 0) return;
  if (M <= 0) {  // empty batch: no rows contribute
    if (dw) for (long e = 0; e < N * K; ++e) dw[e] = T(0);
    if (db) for (long n = 0; n < N; ++n) db[n] = T(0);
    return;
  }
  if (skip == Skip::kDense)
    bwd_impl<T, true>(gy, x, w, z, q, dx, dw, db, M, K, N, skip, act);
  else
    bwd_impl<T, false>(gy, x, w, z, nullptr, dx, dw, db, M, K, N, skip, act);
}

template void skip_linear_fwd_cpu<float>(const float*, const float*, const float*, const float*, float*, float*,
                                         long, long, long, Skip, Act);
template void skip_linear_fwd_cpu<double>(const double*, const double*, const double*, const double*, double*,
                                          double*, long, long, long, Skip, Act);
template void skip_linear_bwd_cpu<float>(const float*, const float*, const float*, const float*, const float*,
                                         float*, float*, float*, long, long, long, Skip, Act);
template void skip_linear_bwd_cpu<double>(const double*, const double*, const double*, const double*,
                                          const double*, double*, double*, double*, long, long, long, Skip, Act);

// ------------------------------------------------------------------------------------------ binding
template <typename T>
T* ptr(std::uintptr_t p) { return reinterpret_cast<T*>(p); }

// Memory safety only: names, shapes and dtypes were validated in Python (skipkern.ops, backends).
void check_args(long M, long K, long N, Skip skip, std::uintptr_t q) {
  if (M < 0 || K < 0 || N < 0) throw py::value_error("sizes must be non-negative");
  if (skip == Skip::kIdentity && K != N)
    throw py::value_error("skip 'identity' needs in_features == out_features, got K=" + std::to_string(K) +
                          ", N=" + std::to_string(N));
  if (skip == Skip::kDense && q == 0 && K > 0 && N > 0) throw py::value_error("skip 'dense' needs a Q pointer");
}

}  // namespace skipkern

void register_skip_linear(py::module_& m) {
  using namespace skipkern;
  m.attr("ABI") = kAbi;
  // The backward skips a null dx / dW / db (an older build would write through it): launchers check this.
  m.attr("SKIP_LINEAR_OPTIONAL_GRADS") = 1;
  m.def(
      "skip_linear_fwd_cpu",
      [](const std::string& dtype, std::uintptr_t x, std::uintptr_t w, std::uintptr_t b, std::uintptr_t q,
         std::uintptr_t y, std::uintptr_t z, long M, long K, long N, int skip, int activation) {
        const Skip sk = skip_from_code(skip);
        const Act ac = act_from_code(activation);
        check_args(M, K, N, sk, q);
        py::gil_scoped_release nogil;
        if (dtype == "float32")
          skip_linear_fwd_cpu<float>(ptr<float>(x), ptr<float>(w), ptr<float>(b), ptr<float>(q), ptr<float>(y),
                                     ptr<float>(z), M, K, N, sk, ac);
        else if (dtype == "float64")
          skip_linear_fwd_cpu<double>(ptr<double>(x), ptr<double>(w), ptr<double>(b), ptr<double>(q),
                                      ptr<double>(y), ptr<double>(z), M, K, N, sk, ac);
        else
          throw std::invalid_argument("dtype must be float32 or float64, got " + dtype);
      },
      "Fused forward on raw pointers: y = act(x W^T + b) + S(x), z = x W^T + b. x [M,K], W/Q [N,K], b [N] "
      "(0 = none), y/z [M,N]; all contiguous row-major of one dtype. skip, activation: integer codes "
      "(skipkern.reference.SKIP_CODES, ACTIVATION_CODES).",
      py::arg("dtype"), py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("q"), py::arg("y"),
      py::arg("z"), py::arg("M"), py::arg("K"), py::arg("N"), py::arg("skip"), py::arg("activation"));
  m.def(
      "skip_linear_bwd_cpu",
      [](const std::string& dtype, std::uintptr_t gy, std::uintptr_t x, std::uintptr_t w, std::uintptr_t z,
         std::uintptr_t q, std::uintptr_t dx, std::uintptr_t dw, std::uintptr_t db, long M, long K, long N,
         int skip, int activation) {
        const Skip sk = skip_from_code(skip);
        const Act ac = act_from_code(activation);
        check_args(M, K, N, sk, q);
        py::gil_scoped_release nogil;
        if (dtype == "float32")
          skip_linear_bwd_cpu<float>(ptr<float>(gy), ptr<float>(x), ptr<float>(w), ptr<float>(z), ptr<float>(q),
                                     ptr<float>(dx), ptr<float>(dw), ptr<float>(db), M, K, N, sk, ac);
        else if (dtype == "float64")
          skip_linear_bwd_cpu<double>(ptr<double>(gy), ptr<double>(x), ptr<double>(w), ptr<double>(z),
                                      ptr<double>(q), ptr<double>(dx), ptr<double>(dw), ptr<double>(db), M, K, N,
                                      sk, ac);
        else
          throw std::invalid_argument("dtype must be float32 or float64, got " + dtype);
      },
      "Fused backward on raw pointers: gz = g * act'(z); dx = gz W + S^T(g); dW = gz^T x; db = sum_rows gz "
      "(a 0 pointer for dx, dW or db skips that output). Shapes as the forward; dx [M,K], dW [N,K], db [N].",
      py::arg("dtype"), py::arg("grad_y"), py::arg("x"), py::arg("weight"), py::arg("z"), py::arg("q"),
      py::arg("dx"), py::arg("dw"), py::arg("db"), py::arg("M"), py::arg("K"), py::arg("N"), py::arg("skip"),
      py::arg("activation"));
  m.def(
      "cpu_kernel_info",
      []() {
        py::dict d;
        d["isa"] = SKIPKERN_SIMD_ISA;
        d["max_threads"] = omp_get_max_threads();
        int team = 0;  // what a region asking for max_threads gets now (fewer under a limit / dynamic)
#pragma omp parallel num_threads(omp_get_max_threads())
        {
#pragma omp single
          team = omp_get_num_threads();
        }
        d["team_threads"] = team;
        d["mr"] = kMR;
        d["mr_dual"] = kMRDual;
        d["nr_float32"] = kNR<float>;
        d["nr_float64"] = kNR<double>;
        d["parallel_min_macs"] = kParallelMinMacs;
        return d;
      },
      "Build facts of the CPU kernels: SIMD ISA, OpenMP threads (max, and the team a region gets now), "
      "register tile sizes.");
}
