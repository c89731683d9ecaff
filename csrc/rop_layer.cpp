// Fused R-layers of the batched Hessian-vector product of a SkipMLP (skipkern/hessian/hvp_cpu.py),
// C++/OpenMP on raw pointers, built on the GEMM micro-kernel of skip_gemm.h.
//
// k directions at once; row-major, contiguous; the R-tensors are direction-major [k, n, width] (row
// (j, r) = direction j, sample r), so the rows a register tile reads or writes for one direction are
// contiguous (an [n, k, width] layout puts them k * width apart: 16 KiB for k = 32, width 128, and
// eight such rows share one L1 set). Per layer with input width K, output width N, Ka = K + 1 with a
// bias (else K):
//   A [n, Ka] = [h, 1] (primal inputs), W [N, K], dirs [k, N, Ka] = [dW | db] of the k directions,
//   d1, d2 [n, N] = act'(z), act''(z), gz [n, N] = d loss / d z, gh [n, K] = d loss / d h.
// rop_layer_fwd:  out[j, r, c] = sum_p A[r,p] dirs_j[c,p] + sum_q Rh[j,r,q] W[c,q]          (R z)
//                 epilogue (d1 given): t2 = out * d2; out = out * d1 + Rh (identity skip)    (R h')
// rop_layer_grad: res_j[c, q] += sum_r Rgz[j,r,c] A[r,q] + sum_r gz[r,c] Ra[j,r,q]          (R dW|db)
// rop_layer_back: rgh[j, r, q] = sum_c Rgz[j,r,c] W[c,q] + sum_c gz[r,c] dirs_j[c,q] + Rgh_next (identity)
//                 epilogue: rgz = rgh * d1 + gh * t2 (the R delta of the layer below)
// Each is two stretches of one register-tile reduction (the two GEMMs of a term share the output
// tile) with the elementwise epilogue fused into the write-back, so an R-tensor is written once and
// the [n, k, width] intermediates of a separate GEMM + epilogue never exist. Packed B panels: W, W^T
// and the directions once per call; the row-tiled kernels split (direction, row chunk) pairs over
// the threads, rop_layer_grad splits (direction, row block of res) pairs, directions in groups with one
// buffer slot each. Any OpenMP team size gives the same result: no
// scratch is indexed by thread number and every output element is reduced by one thread in a fixed
// order.
#include <omp.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "skip_gemm.h"

namespace py = pybind11;

namespace skipkern_rop_layer {
using namespace skipkern;

template <typename T>
T* ptr(std::uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

// mr (< MR) rows of a matrix with row stride ld, K wide, copied into a zeroed [MR, K] buffer.
template <typename T>
const T* padded(const T* src, long ld, int mr, int MR, long K, T* buf) {
  for (int i = 0; i < MR; ++i)
    for (long p = 0; p < K; ++p) buf[i * K + p] = i < mr ? src[i * ld + p] : T(0);
  return buf;
}

inline long row_chunk(long width, std::size_t bytes, int MR) {
  return std::clamp<long>((192 << 10) / (std::max<long>(width, 1) * long(bytes)) / MR * MR, MR, 512);
}

// ------------------------------------------------------------------------------------------ forward
template <typename T>
void fwd(const T* A, const T* dirs, const T* Rh, const T* W, const T* d1, const T* d2, T* t2, T* out, bool identity,
         long n, long k, long K, long Ka, long N) {
  using V = Vec<T>;
  using R = typename V::reg;
  constexpr int MR = kMR, NV = kNV, NR = kNR<T>;
  const long np = ceil_div(N, NR);
  Scratch& ws = thread_scratch();
  T* wt = Rh ? ws.get<T>(0, np * K * NR) : nullptr;          // W^T panels [np][K][NR]
  T* dt = dirs ? ws.get<T>(1, k * np * Ka * NR) : nullptr;   // dirs_j^T panels [k][np][Ka][NR]
  const long mc = row_chunk(Ka + K, sizeof(T), MR);
  const long nchunks = ceil_div(n, mc);
  T* tails = ws.get<T>(2, static_cast<std::size_t>(k * nchunks) * MR * (Ka + K));
#pragma omp parallel
  {
#pragma omp for schedule(static)
    for (long t = 0; t < k * np; ++t) {
      const long j = t / np, jp = t % np;
      if (dirs) pack_panel_transposed(dirs + j * N * Ka, N, Ka, jp, dt + (j * np + jp) * Ka * NR);
      if (Rh && j == 0) pack_panel_transposed(W, N, K, jp, wt + jp * K * NR);
    }
#pragma omp for schedule(dynamic, 1)
    for (long task = 0; task < k * nchunks; ++task) {
      const long j = task / nchunks, c0 = (task % nchunks) * mc, c1 = std::min(n, c0 + mc);
      T* tailA = tails + task * MR * (Ka + K);
      T* tailR = tailA + MR * Ka;
      const long last = c0 + (c1 - c0 - 1) / MR * MR;
      const int last_mr = static_cast<int>(c1 - last);
      if (last_mr < MR) {
        if (dirs) padded(A + last * Ka, Ka, last_mr, MR, Ka, tailA);
        if (Rh) padded(Rh + (j * n + last) * K, K, last_mr, MR, K, tailR);
      }
      for (long jp = 0; jp < np; ++jp) {
        const long n0 = jp * NR;
        for (long m0 = c0; m0 < c1; m0 += MR) {
          const int mr = static_cast<int>(std::min<long>(MR, c1 - m0));
          R c[MR][NV];
          zero_tile<T, MR, NV>(c);
          if (dirs)
            micro_kernel<T, MR, NV, false, false>(c, c, mr == MR ? A + m0 * Ka : tailA, Ka,
                                                  dt + (j * np + jp) * Ka * NR, nullptr, Ka);
          if (Rh)
            micro_kernel<T, MR, NV, false, false>(c, c, mr == MR ? Rh + (j * n + m0) * K : tailR, K,
                                                  wt + jp * K * NR, nullptr, K);
#pragma GCC unroll 16
          for (int i = 0; i < MR; ++i) {
            if (i >= mr) break;
            const long r = m0 + i, row = j * n + r;
#pragma GCC unroll 8
            for (int v = 0; v < NV; ++v) {
              const int nl = lanes_in<T>(n0, v, N);
              if (nl <= 0) break;
              const long col = n0 + v * V::size;
              R z = c[i][v];
              if (d1) {
                if (d2) store_lanes(t2 + row * N + col, V::mul(z, load_lanes(d2 + r * N + col, nl)), nl);
                z = V::mul(z, load_lanes(d1 + r * N + col, nl));
                if (identity) z = V::add(z, load_lanes(Rh + row * K + col, nl));
              }
              store_lanes(out + row * N + col, z, nl);
            }
          }
        }
      }
    }
  }
}

// ------------------------------------------------------------------------------------ weight terms
// skip_gemm.h's micro-kernel with B read in place at row stride ldb (a full NR-wide column block of a
// row-major matrix) instead of a packed panel: saves packing each direction's R h (n x K per layer).
template <typename T, int MR, int NV, bool COL>
SK_INLINE void micro_kernel_ldb(typename Vec<T>::reg (&c)[MR][NV], const T* a, long lda, const T* b, long ldb, long kc) {
  using V = Vec<T>;
  using R = typename V::reg;
  const T* ar[MR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) ar[i] = a + i * lda;
  const T* ap = a;
  for (long p = 0; p < kc; ++p) {
    R bv[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) bv[v] = V::load(b + v * V::size);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const R av = V::set1(COL ? ap[i] : ar[i][p]);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) c[i][v] = V::fma(av, bv[v], c[i][v]);
    }
    if (COL) ap += lda;
    b += ldb;
  }
}

template <typename T>
void grad(const T* Rgz, const T* A, const T* gz, const T* Ra, T* res, long n, long k, long K, long Ka, long N) {
  using V = Vec<T>;
  using R = typename V::reg;
  constexpr int MR = kMR, NV = kNV, NR = kNR<T>;
  const long npk = ceil_div(K, NR), nib = ceil_div(N, MR);
  const bool ragged = K % NR != 0;   // the last column block of Ra_j is packed (zero padded), not read in place
  const long ldn = round_up(N, MR);  // padded row stride of the col-layout A operands
  const bool copy = Rgz && ldn != N;
  Scratch& ws = thread_scratch();
  T* ap = Rgz ? ws.get<T>(0, npk * n * NR) : nullptr;       // h panels [npk][n][NR] (the bias column apart)
  T* gzp = (gz && Ra) ? ws.get<T>(1, n * ldn) : nullptr;    // gz, rows padded to ldn
  // Per direction of a group: Rgz_j padded to [n, ldn] (when N is not a multiple of MR) and the last Ra_j
  // panel [n][NR] (when K is not a multiple of NR). Groups of G directions, G fixed before the regions:
  // the group's buffers are filled, then its (direction, MR rows of res_j) tiles are shared out.
  const std::size_t per_dir = (copy ? n * ldn : 0) + ((gzp && ragged) ? n * NR : 0);
  const long G = std::min<long>(k, std::max(1, omp_get_max_threads()));
  T* dirbuf = ws.get<T>(2, std::max<std::size_t>(1, G * per_dir));
#pragma omp parallel
  {
#pragma omp for schedule(static)
    for (long jp = 0; jp < npk; ++jp)
      if (Rgz) pack_panel(A, n, K, Ka, jp, ap + jp * n * NR);
#pragma omp for schedule(static)
    for (long r = 0; r < n; ++r)
      if (gzp) {
        std::copy(gz + r * N, gz + r * N + N, gzp + r * ldn);
        std::fill(gzp + r * ldn + N, gzp + r * ldn + ldn, T(0));
      }
    for (long g0 = 0; g0 < k; g0 += G) {
      const long gn = std::min(G, k - g0);
      auto rgz_of = [&](long slot) -> const T* {
        return copy ? dirbuf + slot * per_dir : (Rgz ? Rgz + (g0 + slot) * n * N : nullptr);
      };
      if (per_dir) {
#pragma omp for schedule(static)
        for (long slot = 0; slot < gn; ++slot) {
          T* buf = dirbuf + slot * per_dir;
          const long j = g0 + slot;
          if (copy)
            for (long r = 0; r < n; ++r) {
              std::copy(Rgz + (j * n + r) * N, Rgz + (j * n + r) * N + N, buf + r * ldn);
              std::fill(buf + r * ldn + N, buf + r * ldn + ldn, T(0));
            }
          if (gzp && ragged) pack_panel(Ra + j * n * K, n, K, K, npk - 1, buf + (copy ? n * ldn : 0));
        }
      }
#pragma omp for schedule(dynamic, 1)
      for (long task = 0; task < gn * nib; ++task) {
        const long slot = task / nib, ib = (task % nib) * MR, j = g0 + slot;
        const T* rj = rgz_of(slot);
        const T* raj = Ra ? Ra + j * n * K : nullptr;
        const T* tail = dirbuf + slot * per_dir + (copy ? n * ldn : 0);
        T* rs = res + j * N * Ka;
        const int nr = static_cast<int>(std::min<long>(MR, N - ib));
        for (long jp = 0; jp < npk; ++jp) {
          const long q0 = jp * NR;
          const bool packed = ragged && jp == npk - 1;
          R c[MR][NV];
          zero_tile<T, MR, NV>(c);
          if (Rgz) micro_kernel<T, MR, NV, true, false>(c, c, rj + ib, ldn, ap + jp * n * NR, nullptr, n);
          if (gzp)
            micro_kernel_ldb<T, MR, NV, true>(c, gzp + ib, ldn, packed ? tail : raj + q0, packed ? NR : K, n);
#pragma GCC unroll 16
          for (int i = 0; i < MR; ++i) {
            if (i >= nr) break;
#pragma GCC unroll 8
            for (int v = 0; v < NV; ++v) {
              const int nl = lanes_in<T>(q0, v, K);
              if (nl <= 0) break;
              T* dst = rs + (ib + i) * Ka + q0 + v * V::size;
              store_lanes(dst, V::add(load_lanes(dst, nl), c[i][v]), nl);
            }
          }
        }
        if (Rgz && Ka == K + 1) {  // the bias column of these rows: R db_j = sum over samples of R delta_j
          T sums[MR] = {};
          for (long r = 0; r < n; ++r)
            for (int i = 0; i < nr; ++i) sums[i] += rj[r * ldn + ib + i];
          for (int i = 0; i < nr; ++i) rs[(ib + i) * Ka + K] += sums[i];
        }
      }
    }
  }
}

// ----------------------------------------------------------------------------------------- backward
template <typename T>
void back(const T* Rgz, const T* W, const T* gz, const T* dirs, const T* Rgh_next, const T* d1, const T* gh,
          const T* t2, T* rgh, T* rgz, long n, long k, long K, long Ka, long N) {
  using V = Vec<T>;
  using R = typename V::reg;
  constexpr int MR = kMR, NV = kNV, NR = kNR<T>;
  const long npk = ceil_div(K, NR);
  Scratch& ws = thread_scratch();
  T* wp = Rgz ? ws.get<T>(0, npk * N * NR) : nullptr;            // W panels [npk][N][NR]
  T* dp = (gz && dirs) ? ws.get<T>(1, k * npk * N * NR) : nullptr;  // dW_j panels [k][npk][N][NR]
  const long mc = row_chunk(2 * N, sizeof(T), MR);
  const long nchunks = ceil_div(n, mc);
  T* tails = ws.get<T>(2, static_cast<std::size_t>(k * nchunks) * MR * 2 * N);
#pragma omp parallel
  {
#pragma omp for schedule(static)
    for (long t = 0; t < k * npk; ++t) {
      const long j = t / npk, jp = t % npk;
      if (dp) pack_panel(dirs + j * N * Ka, N, K, Ka, jp, dp + (j * npk + jp) * N * NR);
      if (wp && j == 0) pack_panel(W, N, K, K, jp, wp + jp * N * NR);
    }
#pragma omp for schedule(dynamic, 1)
    for (long task = 0; task < k * nchunks; ++task) {
      const long j = task / nchunks, c0 = (task % nchunks) * mc, c1 = std::min(n, c0 + mc);
      T* tailR = tails + task * MR * 2 * N;
      T* tailG = tailR + MR * N;
      const long last = c0 + (c1 - c0 - 1) / MR * MR;
      const int last_mr = static_cast<int>(c1 - last);
      if (last_mr < MR) {
        if (wp) padded(Rgz + (j * n + last) * N, N, last_mr, MR, N, tailR);
        if (dp) padded(gz + last * N, N, last_mr, MR, N, tailG);
      }
      for (long jp = 0; jp < npk; ++jp) {
        const long q0 = jp * NR;
        for (long m0 = c0; m0 < c1; m0 += MR) {
          const int mr = static_cast<int>(std::min<long>(MR, c1 - m0));
          R c[MR][NV];
          zero_tile<T, MR, NV>(c);
          if (wp)
            micro_kernel<T, MR, NV, false, false>(c, c, mr == MR ? Rgz + (j * n + m0) * N : tailR, N,
                                                  wp + jp * N * NR, nullptr, N);
          if (dp)
            micro_kernel<T, MR, NV, false, false>(c, c, mr == MR ? gz + m0 * N : tailG, N,
                                                  dp + (j * npk + jp) * N * NR, nullptr, N);
#pragma GCC unroll 16
          for (int i = 0; i < MR; ++i) {
            if (i >= mr) break;
            const long r = m0 + i, row = j * n + r;
#pragma GCC unroll 8
            for (int v = 0; v < NV; ++v) {
              const int nl = lanes_in<T>(q0, v, K);
              if (nl <= 0) break;
              const long col = q0 + v * V::size;
              R g = c[i][v];
              if (Rgh_next) g = V::add(g, load_lanes(Rgh_next + row * K + col, nl));
              if (rgh) store_lanes(rgh + row * K + col, g, nl);
              if (rgz) {
                R o = d1 ? V::mul(g, load_lanes(d1 + r * K + col, nl)) : V::zero();
                if (t2) o = V::fma(load_lanes(gh + r * K + col, nl), load_lanes(t2 + row * K + col, nl), o);
                store_lanes(rgz + row * K + col, o, nl);
              }
            }
          }
        }
      }
    }
  }
}

void check(long n, long k, long K, long Ka, long N) {
  if (n < 0 || k < 1 || K < 1 || N < 1 || (Ka != K && Ka != K + 1))
    throw py::value_error("sizes must be n >= 0, k, K, N >= 1 and Ka = K or K + 1, got n=" + std::to_string(n) +
                          ", k=" + std::to_string(k) + ", K=" + std::to_string(K) + ", Ka=" + std::to_string(Ka) +
                          ", N=" + std::to_string(N));
}

template <typename F>
void dispatch(const std::string& dtype, F&& f) {
  py::gil_scoped_release nogil;
  if (dtype == "float32")
    f(float{});
  else if (dtype == "float64")
    f(double{});
  else
    throw std::invalid_argument("dtype must be float32 or float64, got " + dtype);
}

}  // namespace skipkern_rop_layer

void register_rop_layer(py::module_& m) {
  using namespace skipkern_rop_layer;
  using P = std::uintptr_t;
  m.def(
      "rop_layer_fwd_cpu",
      [](const std::string& dtype, P A, P dirs, P Rh, P W, P d1, P d2, P t2, P out, bool identity, long n, long k,
         long K, long Ka, long N) {
        check(n, k, K, Ka, N);
        if (!out || (!dirs && !Rh) || (dirs && !A) || (Rh && !W) || (d2 && (!d1 || !t2)) || (identity && (!Rh || K != N)))
          throw py::value_error("rop_layer_fwd_cpu: out, and dirs (with A) or Rh (with W) are required; d2 needs d1 "
                                "and t2; the identity skip needs Rh and K == N");
        dispatch(dtype, [&](auto z) {
          using T = decltype(z);
          fwd<T>(ptr<const T>(A), ptr<const T>(dirs), ptr<const T>(Rh), ptr<const T>(W), ptr<const T>(d1),
                 ptr<const T>(d2), ptr<T>(t2), ptr<T>(out), identity, n, k, K, Ka, N);
        });
      },
      "R-forward of one layer (csrc/rop_layer.cpp): out = A dirs_j^T + Rh_j W^T, then (d1 != 0) t2 = out * d2, "
      "out = out * d1 (+ Rh, identity skip). A [n,Ka], dirs [k,N,Ka], Rh [k,n,K], W [N,K], d1/d2 [n,N], "
      "t2/out [k,n,N]; 0 = absent.",
      py::arg("dtype"), py::arg("A"), py::arg("dirs"), py::arg("Rh"), py::arg("W"), py::arg("d1"), py::arg("d2"),
      py::arg("t2"), py::arg("out"), py::arg("identity"), py::arg("n"), py::arg("k"), py::arg("K"), py::arg("Ka"),
      py::arg("N"));
  m.def(
      "rop_layer_grad_cpu",
      [](const std::string& dtype, P Rgz, P A, P gz, P Ra, P res, long n, long k, long K, long Ka, long N) {
        check(n, k, K, Ka, N);
        if (!res || (!Rgz && !(gz && Ra)) || (Rgz && !A))
          throw py::value_error("rop_layer_grad_cpu: res, and Rgz (with A) or gz with Ra are required");
        dispatch(dtype, [&](auto z) {
          using T = decltype(z);
          grad<T>(ptr<const T>(Rgz), ptr<const T>(A), ptr<const T>(gz), ptr<const T>(Ra), ptr<T>(res), n, k, K, Ka, N);
        });
      },
      "R weight gradient of one layer, accumulated: res_j[c,q] += sum_r Rgz[j,r,c] A[r,q] + gz[r,c] Ra[j,r,q] "
      "(q < K). Rgz [k,n,N], A [n,Ka], gz [n,N], Ra [k,n,K], res [k,N,Ka]; 0 = absent.",
      py::arg("dtype"), py::arg("Rgz"), py::arg("A"), py::arg("gz"), py::arg("Ra"), py::arg("res"), py::arg("n"),
      py::arg("k"), py::arg("K"), py::arg("Ka"), py::arg("N"));
  m.def(
      "rop_layer_back_cpu",
      [](const std::string& dtype, P Rgz, P W, P gz, P dirs, P Rgh_next, P d1, P gh, P t2, P rgh, P rgz, long n, long k,
         long K, long Ka, long N) {
        check(n, k, K, Ka, N);
        if ((!Rgz && !(gz && dirs)) || (!rgh && !rgz) || (Rgz && !W) || (rgz && !d1 && !t2) || (t2 && !gh))
          throw py::value_error("rop_layer_back_cpu: Rgz (with W) or gz with dirs, an output rgh or rgz, rgz needs "
                                "d1 or t2, and t2 needs gh");
        dispatch(dtype, [&](auto z) {
          using T = decltype(z);
          back<T>(ptr<const T>(Rgz), ptr<const T>(W), ptr<const T>(gz), ptr<const T>(dirs), ptr<const T>(Rgh_next),
                  ptr<const T>(d1), ptr<const T>(gh), ptr<const T>(t2), ptr<T>(rgh), ptr<T>(rgz), n, k, K, Ka, N);
        });
      },
      "R-backward of one layer: rgh = Rgz_j W + gz dirs_j[:, :K] (+ Rgh_next, identity skip); rgz = rgh * d1 + "
      "gh * t2. Rgz [k,n,N], W [N,K], gz [n,N], dirs [k,N,Ka], Rgh_next/t2/rgh/rgz [k,n,K], d1/gh [n,K]; 0 = "
      "absent.",
      py::arg("dtype"), py::arg("Rgz"), py::arg("W"), py::arg("gz"), py::arg("dirs"), py::arg("Rgh_next"),
      py::arg("d1"), py::arg("gh"), py::arg("t2"), py::arg("rgh"), py::arg("rgz"), py::arg("n"), py::arg("k"),
      py::arg("K"), py::arg("Ka"), py::arg("N"));
}
