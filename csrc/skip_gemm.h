// Building blocks of the CPU skip_linear kernels: activations, a grow-only scratch arena, B-panel
// packing and the register-blocked GEMM micro-kernel.
//
// Micro-kernel: C[MR, NR] (+)= A[MR, kc] * B[kc, NR] with NR = NV * Vec<T>::size, the C tile held in
// MR * NV vector registers for the whole reduction. B is always a packed panel (kc rows of NR
// contiguous values, zero padded past the matrix edge). A is read in place, either
//   row layout (COL = false): A(i, p) = a[i * lda + p]   (x or gz rows, reduction along a row)
//   col layout (COL = true):  A(i, p) = a[p * lda + i]   (gz^T for dW, reduction down the batch)
// and broadcast one element at a time. The DUAL form runs two products that share A (the dense skip:
// x W^T and x Q^T over the same x rows) into two accumulator sets. The caller owns the epilogue: it
// receives the tile in registers and writes it back fused with bias / activation / skip.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdlib>
#include <new>
#include <vector>

#include "op_codes.h"
#include "simd.h"

namespace skipkern {

// Register blocking per ISA. AVX-512 has 32 vector registers: 8x2 = 16 accumulators for one product
// (plus 2 B vectors and a broadcast), 6x2x2 = 24 for the dual product. 16-register ISAs get half.
#if defined(__AVX512F__)
constexpr int kNV = 2, kMR = 8, kMRDual = 6;
#else
constexpr int kNV = 2, kMR = 4, kMRDual = 2;
#endif

template <typename T>
constexpr int kNR = kNV * Vec<T>::size;

inline long ceil_div(long a, long b) { return (a + b - 1) / b; }
inline long round_up(long a, long b) { return ceil_div(a, b) * b; }

// --------------------------------------------------------------------------------- activations
constexpr double kSqrtHalf = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;

template <typename T>
inline T act_scalar(T z, Act a) {
  switch (a) {
    case Act::kRelu: return z < T(0) ? T(0) : z;  // NaN passes through, as torch.relu
    case Act::kIdentity: return z;
    case Act::kTanh: return std::tanh(z);
    case Act::kGelu: return T(0.5) * z * (T(1) + std::erf(z * T(kSqrtHalf)));
  }
  return z;
}

// act'(z) exactly as skipkern.reference.activation_grad_ref (relu'(0) = 0).
template <typename T>
inline T act_grad_scalar(T z, Act a) {
  switch (a) {
    case Act::kRelu: return z > T(0) ? T(1) : T(0);
    case Act::kIdentity: return T(1);
    case Act::kTanh: { T t = std::tanh(z); return T(1) - t * t; }
    case Act::kGelu:
      return T(0.5) * (T(1) + std::erf(z * T(kSqrtHalf))) + z * T(kInvSqrt2Pi) * std::exp(T(-0.5) * z * z);
  }
  return T(1);
}

// Vector activation: relu/identity in registers; tanh/gelu lane by lane through libm (exact forms).
template <typename T>
SK_INLINE typename Vec<T>::reg act_vec(typename Vec<T>::reg z, Act a) {
  using V = Vec<T>;
  if (a == Act::kRelu) return V::relu(z);
  if (a == Act::kIdentity) return z;
  alignas(64) T t[V::size];
  V::store(t, z);
  for (int j = 0; j < V::size; ++j) t[j] = act_scalar(t[j], a);
  return V::load(t);
}

template <typename T>
SK_INLINE typename Vec<T>::reg act_grad_vec(typename Vec<T>::reg z, Act a) {
  using V = Vec<T>;
  if (a == Act::kRelu) return V::step(z);
  if (a == Act::kIdentity) return V::set1(T(1));
  alignas(64) T t[V::size];
  V::store(t, z);
  for (int j = 0; j < V::size; ++j) t[j] = act_grad_scalar(t[j], a);
  return V::load(t);
}

// ------------------------------------------------------------------------------------- scratch
// Grow-only, 64-byte aligned buffers kept per calling thread: repeated calls of one shape reuse the
// same pages instead of paying malloc + first-touch page faults every layer.
class Scratch {
 public:
  ~Scratch() {
    for (auto& b : bufs_) std::free(b.ptr);
  }
  template <typename T>
  T* get(std::size_t slot, std::size_t count) {
    if (slot >= bufs_.size()) bufs_.resize(slot + 1);
    Buf& b = bufs_[slot];
    std::size_t bytes = std::max<std::size_t>(64, round_up(static_cast<long>(count * sizeof(T)), 64));
    if (b.bytes < bytes) {
      std::free(b.ptr);
      b.ptr = std::aligned_alloc(64, bytes);
      if (!b.ptr) throw std::bad_alloc();
      b.bytes = bytes;
    }
    return static_cast<T*>(b.ptr);
  }

 private:
  struct Buf {
    void* ptr = nullptr;
    std::size_t bytes = 0;
  };
  std::vector<Buf> bufs_;
};

inline Scratch& thread_scratch() {
  static thread_local Scratch s;
  return s;
}

// --------------------------------------------------------------------------------------- packing
// Transposes a square block of Vec<T>::size x Vec<T>::size elements: dst[c * ldd + r] = src[r * lds + c].
#if defined(__AVX512F__)
SK_INLINE void transpose_block(const float* src, long lds, float* dst, long ldd) {
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * lds);
  for (int i = 0; i < 8; ++i) {  // 32-bit interleave of row pairs, within 128-bit lanes
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int g = 0; g < 4; ++g) {  // 64-bit interleave: u[4g + c], lane L = column 4L + c of rows 4g..4g+3
    const __m512d a = _mm512_castps_pd(t[4 * g]), b = _mm512_castps_pd(t[4 * g + 1]);
    const __m512d c = _mm512_castps_pd(t[4 * g + 2]), d = _mm512_castps_pd(t[4 * g + 3]);
    r[4 * g + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    r[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  for (int c = 0; c < 4; ++c) {  // gather lane L of the four row groups: column 4L + c
    const __m512 v0 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x88), v1 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xDD);
    const __m512 w0 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x88);
    const __m512 w1 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xDD);
    _mm512_storeu_ps(dst + (0 + c) * ldd, _mm512_shuffle_f32x4(v0, w0, 0x88));
    _mm512_storeu_ps(dst + (8 + c) * ldd, _mm512_shuffle_f32x4(v0, w0, 0xDD));
    _mm512_storeu_ps(dst + (4 + c) * ldd, _mm512_shuffle_f32x4(v1, w1, 0x88));
    _mm512_storeu_ps(dst + (12 + c) * ldd, _mm512_shuffle_f32x4(v1, w1, 0xDD));
  }
}

SK_INLINE void transpose_block(const double* src, long lds, double* dst, long ldd) {
  __m512d r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm512_loadu_pd(src + i * lds);
  for (int i = 0; i < 4; ++i) {  // t[2i]: lanes = columns 0,2,4,6 of rows 2i, 2i+1; t[2i+1]: 1,3,5,7
    t[2 * i] = _mm512_unpacklo_pd(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_pd(r[2 * i], r[2 * i + 1]);
  }
  for (int o = 0; o < 2; ++o) {  // o = 0: even columns, 1: odd columns
    const __m512d v0 = _mm512_shuffle_f64x2(t[o], t[2 + o], 0x88), v1 = _mm512_shuffle_f64x2(t[o], t[2 + o], 0xDD);
    const __m512d w0 = _mm512_shuffle_f64x2(t[4 + o], t[6 + o], 0x88);
    const __m512d w1 = _mm512_shuffle_f64x2(t[4 + o], t[6 + o], 0xDD);
    _mm512_storeu_pd(dst + (0 + o) * ldd, _mm512_shuffle_f64x2(v0, w0, 0x88));
    _mm512_storeu_pd(dst + (4 + o) * ldd, _mm512_shuffle_f64x2(v0, w0, 0xDD));
    _mm512_storeu_pd(dst + (2 + o) * ldd, _mm512_shuffle_f64x2(v1, w1, 0x88));
    _mm512_storeu_pd(dst + (6 + o) * ldd, _mm512_shuffle_f64x2(v1, w1, 0xDD));
  }
}
#else
template <typename T>
SK_INLINE void transpose_block(const T* src, long lds, T* dst, long ldd) {
  constexpr int V = Vec<T>::size;
  for (int r = 0; r < V; ++r)
    for (int c = 0; c < V; ++c) dst[c * ldd + r] = src[r * lds + c];
}
#endif

// Panel j of B = M^T for a row-major M [rows_m, cols_m] (B(p, c) = M[c, p]): dst[p * NR + r] =
// M[j*NR + r, p] for p < cols_m, zero where j*NR + r >= rows_m. Used for W^T and Q^T in the forward.
// Full square blocks are transposed in registers; the ragged edges element by element.
template <typename T>
void pack_panel_transposed(const T* m, long rows_m, long cols_m, long j, T* dst) {
  constexpr int NR = kNR<T>, V = Vec<T>::size;
  const long c0 = j * NR;
  const int nc = static_cast<int>(std::min<long>(NR, rows_m - c0));
  const long p_full = cols_m / V * V;
  int r0 = 0;
  for (; r0 + V <= nc; r0 += V)
    for (long p = 0; p < p_full; p += V) transpose_block(m + (c0 + r0) * cols_m + p, cols_m, dst + p * NR + r0, NR);
  for (long p = 0; p < cols_m; ++p) {  // the rest: rows past the full blocks, columns past p_full
    T* d = dst + p * NR;
    for (int r = p < p_full ? r0 : 0; r < NR; ++r) d[r] = r < nc ? m[(c0 + r) * cols_m + p] : T(0);
  }
}

// Panel j of B = M for a row-major M [rows, cols] with row stride ld (B(p, c) = M[p, c]):
// dst[p * NR + r] = M[p, j*NR + r], zero past the last column. Used for W, Q (dx) and x (dW).
template <typename T>
void pack_panel(const T* m, long rows, long cols, long ld, long j, T* dst) {
  constexpr int NR = kNR<T>;
  const long c0 = j * NR;
  const int nc = static_cast<int>(std::min<long>(NR, cols - c0));
  for (long p = 0; p < rows; ++p) {
    const T* src = m + p * ld + c0;
    T* d = dst + p * NR;
    int r = 0;
    for (; r < nc; ++r) d[r] = src[r];
    for (; r < NR; ++r) d[r] = T(0);
  }
}

// ---------------------------------------------------------------------------------- micro-kernel
template <typename T, int MR, int NV, bool COL, bool DUAL>
SK_INLINE void micro_kernel(typename Vec<T>::reg (&c)[MR][NV], typename Vec<T>::reg (&s)[MR][NV],
                            const T* a, long lda, const T* b, const T* b2, long kc) {
  using V = Vec<T>;
  using R = typename V::reg;
  constexpr int NR = NV * V::size;
  const T* ar[MR];  // row layout: one pointer per row, indexed by p
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) ar[i] = a + i * lda;
  const T* ap = a;  // col layout: the MR values of step p are contiguous at ap
  for (long p = 0; p < kc; ++p) {
    R bv[NV], bv2[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      bv[v] = V::load(b + v * V::size);
      if (DUAL) bv2[v] = V::load(b2 + v * V::size);
    }
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const R av = V::set1(COL ? ap[i] : ar[i][p]);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) {
        c[i][v] = V::fma(av, bv[v], c[i][v]);
        if (DUAL) s[i][v] = V::fma(av, bv2[v], s[i][v]);
      }
    }
    if (COL) ap += lda;
    b += NR;
    if (DUAL) b2 += NR;
  }
}

template <typename T, int MR, int NV>
SK_INLINE void zero_tile(typename Vec<T>::reg (&c)[MR][NV]) {
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) c[i][v] = Vec<T>::zero();
}

// Columns of vector v of a tile starting at column n0 that lie inside a matrix of ncols columns:
// Vec::size for a full vector, fewer at the edge, <= 0 past it.
template <typename T>
SK_INLINE int lanes_in(long n0, int v, long ncols) {
  return static_cast<int>(std::min<long>(Vec<T>::size, ncols - (n0 + static_cast<long>(v) * Vec<T>::size)));
}

template <typename T>
SK_INLINE typename Vec<T>::reg load_lanes(const T* p, int n) {
  return n == Vec<T>::size ? Vec<T>::load(p) : Vec<T>::load_n(p, n);
}

template <typename T>
SK_INLINE void store_lanes(T* p, typename Vec<T>::reg v, int n) {
  if (n == Vec<T>::size) Vec<T>::store(p, v); else Vec<T>::store_n(p, v, n);
}

}  // namespace skipkern
