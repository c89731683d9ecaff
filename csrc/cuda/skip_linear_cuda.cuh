// skip_linear on NVIDIA GPUs: shared-memory tiled GEMM kernels with fused epilogues, on raw pointers
// and a stream (no torch headers).
//
// Shapes (row-major, contiguous): x [M, K], W [N, K], b [N] or null, Q [N, K] or null, y, z [M, N].
// Scalar types: float, double, __half, __nv_bfloat16; accumulation in float (double for double).
//
// One generic kernel, gemm_tile_kernel, computes a BM x BN tile of C = A B over a reduction range,
// reading A(i, p) and B(p, j) through small loader functors (so the activation derivative can be
// recomputed while loading gz) and writing the tile through an epilogue functor:
//   forward : A = x, B = W^T (and Q^T as a second accumulator set, DUAL), epilogue z = acc + b,
//             y = act(z) + {0, x, acc_Q}
//   dx      : A = [gz | g], B = [W ; Q] (one reduction of length N or 2N), epilogue + g for identity;
//             not launched when dx is null (the gradient of an input that needs none)
//   dW, db  : A = gz^T, B = x, reduction over the batch split across blockIdx.z into a workspace of
//             partial sums (deterministic, no atomics), db partials from the same A tiles; a small
//             kernel sums the partials and converts to T.
// Not done: tensor cores (mma/wgmma), cross-layer fusion, a ReLU bitmask (act'(z) is recomputed).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "../op_codes.h"

namespace skipkern {
namespace cuda {

constexpr int BM = 64, BN = 64, BK = 16;  // block tile and reduction step
constexpr int TM = 4, TN = 4;             // per-thread micro-tile (strided by 16 rows/cols)
constexpr int kThreads = (BM / TM) * (BN / TN);

template <typename T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

// Stores an accumulator value as T (round to nearest for the half types).
__device__ __forceinline__ void store_acc(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_acc(double* p, double v) { *p = v; }
__device__ __forceinline__ void store_acc(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store_acc(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

// act and act' exactly as skipkern.reference (gelu: exact erf form; relu'(0) = 0; relu(NaN) = NaN).
// relu and identity are inlined; the transcendental forms are out-of-line calls, which keeps the
// twenty-odd kernel instantiations small and quick to compile.
template <typename A>
__device__ __noinline__ A act_smooth(A z, Act act) {
  if (act == Act::kTanh) return tanh(z);
  return A(0.5) * z * (A(1) + erf(z * A(0.70710678118654752440)));
}

template <typename A>
__device__ __noinline__ A act_grad_smooth(A z, Act act) {
  if (act == Act::kTanh) {
    const A t = tanh(z);
    return A(1) - t * t;
  }
  return A(0.5) * (A(1) + erf(z * A(0.70710678118654752440))) + z * A(0.39894228040143267794) * exp(A(-0.5) * z * z);
}

template <typename A>
__device__ __forceinline__ A act_fn(A z, Act act) {
  if (act == Act::kRelu) return z < A(0) ? A(0) : z;
  if (act == Act::kIdentity) return z;
  return act_smooth(z, act);
}

template <typename A>
__device__ __forceinline__ A act_grad_fn(A z, Act act) {
  if (act == Act::kRelu) return z > A(0) ? A(1) : A(0);
  if (act == Act::kIdentity) return A(1);
  return act_grad_smooth(z, act);
}

// ------------------------------------------------------------------------------------- loaders
// Every loader returns 0 outside the matrix, so edge tiles need no special path.
template <typename T, typename A>
struct RowMajorA {  // A(i, p) = a[i * lda + p]   (x in the forward)
  const T* a; long long lda; int rows, cols;
  static constexpr bool kContigP = true;
  __device__ A operator()(int i, int p) const { return (i < rows && p < cols) ? to_acc(a[i * lda + p]) : A(0); }
};

template <typename T, typename A>
struct TransposedB {  // B(p, j) = m[j * ld + p]   (W^T, Q^T in the forward)
  const T* m; long long ld; int rows, cols;  // rows = reduction length, cols = output columns
  static constexpr bool kContigP = true;
  __device__ A operator()(int p, int j) const { return (p < rows && j < cols) ? to_acc(m[j * ld + p]) : A(0); }
};

template <typename T, typename A>
struct GradA {  // dx: A(i, p) = gz[i, p] for p < N, then g[i, p - N] (dense skip segment)
  const T* gy; const T* z; int M, N; Act act; bool dense;
  static constexpr bool kContigP = true;
  __device__ A operator()(int i, int p) const {
    if (i >= M) return A(0);
    if (p < N) {
      const long long o = (long long)i * N + p;
      return to_acc(gy[o]) * act_grad_fn<A>(to_acc(z[o]), act);
    }
    return (dense && p < 2 * N) ? to_acc(gy[(long long)i * N + (p - N)]) : A(0);
  }
};

template <typename T, typename A>
struct WeightsB {  // dx: B(p, j) = W[p, j] for p < N, then Q[p - N, j]
  const T* w; const T* q; int N, K;
  static constexpr bool kContigP = false;
  __device__ A operator()(int p, int j) const {
    if (j >= K) return A(0);
    if (p < N) return to_acc(w[(long long)p * K + j]);
    return (q && p < 2 * N) ? to_acc(q[(long long)(p - N) * K + j]) : A(0);
  }
};

template <typename T, typename A>
struct GradTA {  // dW: A(i, p) = gz[p, i] (i over N, p over the batch)
  const T* gy; const T* z; int M, N; Act act;
  static constexpr bool kContigP = false;
  __device__ A operator()(int i, int p) const {
    if (i >= N || p >= M) return A(0);
    const long long o = (long long)p * N + i;
    return to_acc(gy[o]) * act_grad_fn<A>(to_acc(z[o]), act);
  }
};

template <typename T, typename A>
struct RowMajorB {  // dW: B(p, j) = x[p, j]
  const T* m; int rows, cols;
  static constexpr bool kContigP = false;
  __device__ A operator()(int p, int j) const { return (p < rows && j < cols) ? to_acc(m[(long long)p * cols + j]) : A(0); }
};

// ----------------------------------------------------------------------------------- epilogues
template <typename T, typename A>
struct FwdEpilogue {
  const T* x; const T* bias; T* y; T* z; int M, N, K; Act act; Skip skip;
  __device__ void operator()(int i, int j, A c, A s, int /*split*/) const {
    if (i >= M || j >= N) return;
    A zz = c + (bias ? to_acc(bias[j]) : A(0));
    A yy = act_fn<A>(zz, act);
    if (skip == Skip::kIdentity) yy += to_acc(x[(long long)i * K + j]);
    else if (skip == Skip::kDense) yy += s;
    store_acc(z + (long long)i * N + j, zz);
    store_acc(y + (long long)i * N + j, yy);
  }
};

template <typename T, typename A>
struct DxEpilogue {
  const T* gy; T* dx; int M, N, K; Skip skip;
  __device__ void operator()(int i, int j, A c, A, int) const {
    if (i >= M || j >= K) return;
    if (skip == Skip::kIdentity) c += to_acc(gy[(long long)i * N + j]);
    store_acc(dx + (long long)i * K + j, c);
  }
};

template <typename A>
struct PartialEpilogue {  // dW partial sums of one split: part[split, i, j]
  A* part; int rows, cols;
  __device__ void operator()(int i, int j, A c, A, int split) const {
    if (i < rows && j < cols) part[((long long)split * rows + i) * cols + j] = c;
  }
};

// ----------------------------------------------------------------------------------- the GEMM
// C tile (blockIdx.x: row tile, blockIdx.y: column tile, blockIdx.z: reduction split) over reduction steps [split * p_per, (split+1) * p_per).
// DUAL: a second B operand into a second accumulator set (the dense skip of the forward).
// rowsum: if set, blocks of column-tile 0 also write sum_p A(i, p) of their split to rowsum[split, i]
// (db from the dW kernel's gz^T tiles).
template <typename A, bool DUAL, class LA, class LB, class Epi>
__global__ void __launch_bounds__(kThreads)
gemm_tile_kernel(int P, int p_per, LA la, LB lb, LB lb2, Epi epi, A* rowsum, int rowsum_len) {
  // +1 padding: the transposing tile stores (p fastest across threads) stay free of bank conflicts.
  __shared__ A As[BK][BM + 1];
  __shared__ A Bs[BK][BN + 1];
  __shared__ A Bs2[DUAL ? BK : 1][DUAL ? BN + 1 : 1];
  const int tid = threadIdx.x, tx = tid % (BN / TN), ty = tid / (BN / TN);
  const int i0 = blockIdx.x * BM, j0 = blockIdx.y * BN, split = blockIdx.z;
  const int p_begin = split * p_per, p_end = min(P, p_begin + p_per);
  const bool do_rowsum = rowsum != nullptr && blockIdx.y == 0;
  A acc[TM][TN], acc2[TM][TN];  // acc2 is dead (and eliminated) unless DUAL
#pragma unroll
  for (int r = 0; r < TM; ++r)
#pragma unroll
    for (int c = 0; c < TN; ++c) acc[r][c] = acc2[r][c] = A(0);
  A rsum = A(0);
  for (int p0 = p_begin; p0 < p_end; p0 += BK) {
    // Cooperative tile loads, the memory-contiguous index fastest across threads (coalesced).
    for (int e = tid; e < BK * BM; e += kThreads) {
      const int p = LA::kContigP ? e % BK : e / BM, i = LA::kContigP ? e / BK : e % BM;
      As[p][i] = (p0 + p < p_end) ? la(i0 + i, p0 + p) : A(0);
    }
    for (int e = tid; e < BK * BN; e += kThreads) {
      const int p = LB::kContigP ? e % BK : e / BN, j = LB::kContigP ? e / BK : e % BN;
      const bool in = p0 + p < p_end;
      Bs[p][j] = in ? lb(p0 + p, j0 + j) : A(0);
      if constexpr (DUAL) Bs2[p][j] = in ? lb2(p0 + p, j0 + j) : A(0);
    }
    __syncthreads();
    if (do_rowsum && tid < BM) {
#pragma unroll
      for (int p = 0; p < BK; ++p) rsum += As[p][tid];
    }
#pragma unroll
    for (int p = 0; p < BK; ++p) {
      A a[TM], b[TN], b2[TN];
#pragma unroll
      for (int r = 0; r < TM; ++r) a[r] = As[p][ty + r * (BM / TM)];
#pragma unroll
      for (int c = 0; c < TN; ++c) {
        b[c] = Bs[p][tx + c * (BN / TN)];
        if constexpr (DUAL) b2[c] = Bs2[p][tx + c * (BN / TN)];
      }
#pragma unroll
      for (int r = 0; r < TM; ++r)
#pragma unroll
        for (int c = 0; c < TN; ++c) {
          acc[r][c] = fma(a[r], b[c], acc[r][c]);
          if constexpr (DUAL) acc2[r][c] = fma(a[r], b2[c], acc2[r][c]);
        }
    }
    __syncthreads();
  }
  if (do_rowsum && tid < BM && i0 + tid < rowsum_len) rowsum[(long long)split * rowsum_len + i0 + tid] = rsum;
#pragma unroll
  for (int r = 0; r < TM; ++r)
#pragma unroll
    for (int c = 0; c < TN; ++c)
      epi(i0 + ty + r * (BM / TM), j0 + tx + c * (BN / TN), acc[r][c], acc2[r][c], split);
}

// Sums the split partials of dW [splits, N, K] and db [splits, N], converting to T (a null dw or db is skipped).
template <typename T, typename A>
__global__ void reduce_splits_kernel(const A* part, const A* dbpart, int splits, long long nk, int n, T* dw, T* db) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; dw && e < nk; e += stride) {
    A s = A(0);
    for (int k = 0; k < splits; ++k) s += part[k * nk + e];
    store_acc(dw + e, s);
  }
  if (db)
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += stride) {
      A s = A(0);
      for (int k = 0; k < splits; ++k) s += dbpart[(long long)k * n + e];
      store_acc(db + e, s);
    }
}

// ------------------------------------------------------------------------------- host launchers
// Number of batch splits of the dW reduction and the workspace it needs (bytes).
int bwd_splits(int M, int K, int N, int sm_count);
template <typename T>
size_t skip_linear_bwd_cuda_workspace(int M, int K, int N, int sm_count);

template <typename T>
cudaError_t skip_linear_fwd_cuda(const T* x, const T* w, const T* bias, const T* q, T* y, T* z, int M, int K,
                                 int N, Skip skip, Act act, cudaStream_t stream);

template <typename T>
cudaError_t skip_linear_bwd_cuda(const T* gy, const T* x, const T* w, const T* z, const T* q, T* dx, T* dw, T* db,
                                 void* workspace, int M, int K, int N, Skip skip, Act act, int sm_count,
                                 cudaStream_t stream);

}  // namespace cuda
}  // namespace skipkern
