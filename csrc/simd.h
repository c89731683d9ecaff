// Minimal SIMD layer for the CPU kernels: one register type per scalar type with the handful of
// operations the GEMM micro-kernels and epilogues need.
//
// Three implementations, picked at compile time (setup.py builds with -march=native):
//   __AVX512F__            : 512-bit zmm registers, masked partial loads/stores
//   __AVX2__ && __FMA__    : 256-bit ymm registers, maskload/maskstore for partial vectors
//   otherwise              : GCC/Clang vector extensions (16 or 32 bytes), which the compiler lowers to
//                            whatever the target has (SSE2, NEON, ...), so the fallback still vectorises
// Partial loads (load_n) read only the first n lanes and zero the rest; partial stores write only n.
#pragma once

#include <cstring>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

namespace skipkern {

#define SK_INLINE inline __attribute__((always_inline))

template <typename T>
struct Vec;

#if defined(__AVX512F__)
#define SKIPKERN_SIMD_ISA "avx512f"

template <>
struct Vec<float> {
  using reg = __m512;
  static constexpr int size = 16;
  static SK_INLINE __mmask16 mask(int n) { return static_cast<__mmask16>((1u << n) - 1u); }
  static SK_INLINE reg zero() { return _mm512_setzero_ps(); }
  static SK_INLINE reg set1(float a) { return _mm512_set1_ps(a); }
  static SK_INLINE reg load(const float* p) { return _mm512_loadu_ps(p); }
  static SK_INLINE reg load_n(const float* p, int n) { return _mm512_maskz_loadu_ps(mask(n), p); }
  static SK_INLINE void store(float* p, reg v) { _mm512_storeu_ps(p, v); }
  static SK_INLINE void store_n(float* p, reg v, int n) { _mm512_mask_storeu_ps(p, mask(n), v); }
  static SK_INLINE reg fma(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static SK_INLINE reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  static SK_INLINE reg mul(reg a, reg b) { return _mm512_mul_ps(a, b); }
  // z < 0 ? 0 : z, so relu(NaN) = NaN as in torch (a blend: GCC 12 warns on _mm512_max_ps).
  static SK_INLINE reg relu(reg z) {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(z, _mm512_setzero_ps(), _CMP_LT_OQ), z, _mm512_setzero_ps());
  }
  // 1 where z > 0, else 0 (NaN -> 0), the reference's relu'(z).
  static SK_INLINE reg step(reg z) {
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(z, _mm512_setzero_ps(), _CMP_GT_OQ), _mm512_set1_ps(1.f));
  }
};

template <>
struct Vec<double> {
  using reg = __m512d;
  static constexpr int size = 8;
  static SK_INLINE __mmask8 mask(int n) { return static_cast<__mmask8>((1u << n) - 1u); }
  static SK_INLINE reg zero() { return _mm512_setzero_pd(); }
  static SK_INLINE reg set1(double a) { return _mm512_set1_pd(a); }
  static SK_INLINE reg load(const double* p) { return _mm512_loadu_pd(p); }
  static SK_INLINE reg load_n(const double* p, int n) { return _mm512_maskz_loadu_pd(mask(n), p); }
  static SK_INLINE void store(double* p, reg v) { _mm512_storeu_pd(p, v); }
  static SK_INLINE void store_n(double* p, reg v, int n) { _mm512_mask_storeu_pd(p, mask(n), v); }
  static SK_INLINE reg fma(reg a, reg b, reg c) { return _mm512_fmadd_pd(a, b, c); }
  static SK_INLINE reg add(reg a, reg b) { return _mm512_add_pd(a, b); }
  static SK_INLINE reg mul(reg a, reg b) { return _mm512_mul_pd(a, b); }
  static SK_INLINE reg relu(reg z) {
    return _mm512_mask_blend_pd(_mm512_cmp_pd_mask(z, _mm512_setzero_pd(), _CMP_LT_OQ), z, _mm512_setzero_pd());
  }
  static SK_INLINE reg step(reg z) {
    return _mm512_maskz_mov_pd(_mm512_cmp_pd_mask(z, _mm512_setzero_pd(), _CMP_GT_OQ), _mm512_set1_pd(1.0));
  }
};

#elif defined(__AVX2__) && defined(__FMA__)
#define SKIPKERN_SIMD_ISA "avx2+fma"

namespace detail {
// Sliding windows over these give lane masks for the first n lanes (maskload/maskstore read the sign bit).
alignas(32) static const int kMask32[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
alignas(32) static const long long kMask64[8] = {-1, -1, -1, -1, 0, 0, 0, 0};
}  // namespace detail

template <>
struct Vec<float> {
  using reg = __m256;
  static constexpr int size = 8;
  static SK_INLINE __m256i mask(int n) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(detail::kMask32 + 8 - n));
  }
  static SK_INLINE reg zero() { return _mm256_setzero_ps(); }
  static SK_INLINE reg set1(float a) { return _mm256_set1_ps(a); }
  static SK_INLINE reg load(const float* p) { return _mm256_loadu_ps(p); }
  static SK_INLINE reg load_n(const float* p, int n) { return _mm256_maskload_ps(p, mask(n)); }
  static SK_INLINE void store(float* p, reg v) { _mm256_storeu_ps(p, v); }
  static SK_INLINE void store_n(float* p, reg v, int n) { _mm256_maskstore_ps(p, mask(n), v); }
  static SK_INLINE reg fma(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static SK_INLINE reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
  static SK_INLINE reg mul(reg a, reg b) { return _mm256_mul_ps(a, b); }
  // max(0, z) returns its second operand when either is NaN, so relu(NaN) = NaN as in torch.
  static SK_INLINE reg relu(reg z) { return _mm256_max_ps(_mm256_setzero_ps(), z); }
  static SK_INLINE reg step(reg z) {
    return _mm256_and_ps(_mm256_cmp_ps(z, _mm256_setzero_ps(), _CMP_GT_OQ), _mm256_set1_ps(1.f));
  }
};

template <>
struct Vec<double> {
  using reg = __m256d;
  static constexpr int size = 4;
  static SK_INLINE __m256i mask(int n) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(detail::kMask64 + 4 - n));
  }
  static SK_INLINE reg zero() { return _mm256_setzero_pd(); }
  static SK_INLINE reg set1(double a) { return _mm256_set1_pd(a); }
  static SK_INLINE reg load(const double* p) { return _mm256_loadu_pd(p); }
  static SK_INLINE reg load_n(const double* p, int n) { return _mm256_maskload_pd(p, mask(n)); }
  static SK_INLINE void store(double* p, reg v) { _mm256_storeu_pd(p, v); }
  static SK_INLINE void store_n(double* p, reg v, int n) { _mm256_maskstore_pd(p, mask(n), v); }
  static SK_INLINE reg fma(reg a, reg b, reg c) { return _mm256_fmadd_pd(a, b, c); }
  static SK_INLINE reg add(reg a, reg b) { return _mm256_add_pd(a, b); }
  static SK_INLINE reg mul(reg a, reg b) { return _mm256_mul_pd(a, b); }
  static SK_INLINE reg relu(reg z) { return _mm256_max_pd(_mm256_setzero_pd(), z); }
  static SK_INLINE reg step(reg z) {
    return _mm256_and_pd(_mm256_cmp_pd(z, _mm256_setzero_pd(), _CMP_GT_OQ), _mm256_set1_pd(1.0));
  }
};

#else
#define SKIPKERN_SIMD_ISA "generic-vector-extensions"

// Portable path: GCC/Clang vector types as wide as the target's registers (32 bytes with AVX, else
// 16: SSE2, NEON); arithmetic lowers to the target's SIMD unit.
#if defined(__AVX__)
constexpr int kGenericVecBytes = 32;
#else
constexpr int kGenericVecBytes = 16;
#endif

template <typename T>
struct Vec {
  typedef T reg __attribute__((vector_size(kGenericVecBytes)));
  static constexpr int size = kGenericVecBytes / sizeof(T);
  static SK_INLINE reg zero() { return reg{}; }
  static SK_INLINE reg set1(T a) { return reg{} + a; }
  static SK_INLINE reg load(const T* p) { reg r; std::memcpy(&r, p, sizeof(reg)); return r; }
  static SK_INLINE reg load_n(const T* p, int n) { reg r{}; std::memcpy(&r, p, n * sizeof(T)); return r; }
  static SK_INLINE void store(T* p, reg v) { std::memcpy(p, &v, sizeof(reg)); }
  static SK_INLINE void store_n(T* p, reg v, int n) { std::memcpy(p, &v, n * sizeof(T)); }
  static SK_INLINE reg fma(reg a, reg b, reg c) { return a * b + c; }  // contracted by -ffp-contract=fast
  static SK_INLINE reg add(reg a, reg b) { return a + b; }
  static SK_INLINE reg mul(reg a, reg b) { return a * b; }
  static SK_INLINE reg relu(reg z) {
    reg r;
    for (int i = 0; i < size; ++i) r[i] = z[i] < T(0) ? T(0) : z[i];  // NaN stays NaN
    return r;
  }
  static SK_INLINE reg step(reg z) {
    reg r;
    for (int i = 0; i < size; ++i) r[i] = z[i] > T(0) ? T(1) : T(0);
    return r;
  }
};
#endif

}  // namespace skipkern
