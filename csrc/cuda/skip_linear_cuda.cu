// Host launchers of the CUDA skip_linear kernels (skip_linear_cuda.cuh), their explicit
// instantiations for float, double, __half and __nv_bfloat16, and the dtype dispatch that the pybind11
// module (bindings_cuda.cpp) calls with raw pointers and a stream.
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "skip_linear_cuda.cuh"

namespace skipkern {
namespace cuda {

namespace {
inline int cdiv(long long a, long long b) { return static_cast<int>((a + b - 1) / b); }

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}
}  // namespace

int bwd_splits(int M, int K, int N, int sm_count) {
  // Enough (row tile x column tile x split) blocks for ~2 waves, each split >= 4 reduction steps.
  const int tiles = cdiv(N, BM) * std::max(1, cdiv(K, BN));
  const int want = cdiv(2LL * std::max(1, sm_count), tiles);
  const int most = std::max(1, cdiv(M, 4 * BK));
  return std::max(1, std::min({want, most, 64}));
}

template <typename T>
size_t skip_linear_bwd_cuda_workspace(int M, int K, int N, int sm_count) {
  using A = typename AccOf<T>::type;
  const long long s = bwd_splits(M, K, N, sm_count);
  return static_cast<size_t>(s * (static_cast<long long>(N) * K + N)) * sizeof(A);
}

template <typename T>
cudaError_t skip_linear_fwd_cuda(const T* x, const T* w, const T* bias, const T* q, T* y, T* z, int M, int K,
                                 int N, Skip skip, Act act, cudaStream_t stream) {
  using A = typename AccOf<T>::type;
  if (M == 0 || N == 0) return cudaSuccess;
  if (cdiv(N, BN) > 65535) return cudaErrorInvalidValue;
  const dim3 grid(cdiv(M, BM), cdiv(N, BN), 1);
  const RowMajorA<T, A> la{x, K, M, K};
  const TransposedB<T, A> lb{w, K, K, N}, lb2{q, K, K, N};
  const FwdEpilogue<T, A> epi{x, bias, y, z, M, N, K, act, skip};
  if (skip == Skip::kDense)
    gemm_tile_kernel<A, true><<<grid, kThreads, 0, stream>>>(K, K, la, lb, lb2, epi, static_cast<A*>(nullptr), 0);
  else
    gemm_tile_kernel<A, false><<<grid, kThreads, 0, stream>>>(K, K, la, lb, lb, epi, static_cast<A*>(nullptr), 0);
  return cudaGetLastError();
}

template <typename T>
cudaError_t skip_linear_bwd_cuda(const T* gy, const T* x, const T* w, const T* z, const T* q, T* dx, T* dw, T* db,
                                 void* workspace, int M, int K, int N, Skip skip, Act act, int sm_count,
                                 cudaStream_t stream) {
  using A = typename AccOf<T>::type;
  if (N == 0) return cudaSuccess;
  if (cdiv(K, BN) > 65535 || cdiv(N, BN) > 65535) return cudaErrorInvalidValue;
  const bool dense = skip == Skip::kDense;
  // dx = gz W (+ g Q as a second stretch of the same reduction) (+ g in the epilogue); a null dx (the
  // input layer's, which nothing uses) skips this GEMM.
  if (dx && M > 0 && K > 0) {
    const int P = dense ? 2 * N : N;
    const GradA<T, A> la{gy, z, M, N, act, dense};
    const WeightsB<T, A> lb{w, dense ? q : nullptr, N, K};
    const DxEpilogue<T, A> epi{gy, dx, M, N, K, skip};
    gemm_tile_kernel<A, false><<<dim3(cdiv(M, BM), cdiv(K, BN), 1), kThreads, 0, stream>>>(
        P, P, la, lb, lb, epi, static_cast<A*>(nullptr), 0);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  // dW = gz^T x and db = colsum(gz): batch split into partial sums, then one reduction. Skipped when
  // neither is wanted; db alone still runs the dW GEMM (its partials come from the same A tiles).
  if (!dw && !db) return cudaSuccess;
  const int splits = bwd_splits(M, K, N, sm_count);
  const int p_per = cdiv(cdiv(std::max(M, 1), splits), BK) * BK;
  A* part = static_cast<A*>(workspace);
  A* dbpart = part + static_cast<long long>(splits) * N * K;
  const GradTA<T, A> la{gy, z, M, N, act};
  const RowMajorB<T, A> lb{x, M, K};
  const PartialEpilogue<A> epi{part, N, K};
  gemm_tile_kernel<A, false><<<dim3(cdiv(N, BM), std::max(1, cdiv(K, BN)), splits), kThreads, 0, stream>>>(
      M, p_per, la, lb, lb, epi, db ? dbpart : static_cast<A*>(nullptr), N);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const long long nk = static_cast<long long>(N) * K;
  const int blocks = std::max(1, std::min(cdiv(std::max(nk, static_cast<long long>(N)), 256), 4096));
  reduce_splits_kernel<T, A><<<blocks, 256, 0, stream>>>(part, dbpart, splits, nk, N, dw, db);
  return cudaGetLastError();
}

#define SKIPKERN_INSTANTIATE(T)                                                                               \
  template size_t skip_linear_bwd_cuda_workspace<T>(int, int, int, int);                                       \
  template cudaError_t skip_linear_fwd_cuda<T>(const T*, const T*, const T*, const T*, T*, T*, int, int, int, \
                                               Skip, Act, cudaStream_t);                                       \
  template cudaError_t skip_linear_bwd_cuda<T>(const T*, const T*, const T*, const T*, const T*, T*, T*, T*,  \
                                               void*, int, int, int, Skip, Act, int, cudaStream_t);
SKIPKERN_INSTANTIATE(float)
SKIPKERN_INSTANTIATE(double)
SKIPKERN_INSTANTIATE(__half)
SKIPKERN_INSTANTIATE(__nv_bfloat16)
#undef SKIPKERN_INSTANTIATE

// ------------------------------------------------------------------ dispatch for the pybind11 module
// dtype codes: 0 float32, 1 float64, 2 float16, 3 bfloat16 (bindings_cuda.cpp parses the names); skip and
// activation arrive as the enums of op_codes.h.
int current_sm_count() {
  int dev = 0, sms = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), "cudaDeviceGetAttribute");
  return sms;
}

size_t bwd_workspace_dispatch(int dtype, int M, int K, int N) {
  const int sms = current_sm_count();
  switch (dtype) {
    case 0: return skip_linear_bwd_cuda_workspace<float>(M, K, N, sms);
    case 1: return skip_linear_bwd_cuda_workspace<double>(M, K, N, sms);
    case 2: return skip_linear_bwd_cuda_workspace<__half>(M, K, N, sms);
    case 3: return skip_linear_bwd_cuda_workspace<__nv_bfloat16>(M, K, N, sms);
  }
  throw std::invalid_argument("unknown dtype code " + std::to_string(dtype));
}

template <typename T>
static T* P(std::uintptr_t p) { return reinterpret_cast<T*>(p); }

void fwd_dispatch(int dtype, std::uintptr_t x, std::uintptr_t w, std::uintptr_t b, std::uintptr_t q,
                  std::uintptr_t y, std::uintptr_t z, int M, int K, int N, Skip skip, Act act, std::uintptr_t stream) {
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  cudaError_t err = cudaErrorInvalidValue;
#define SKIPKERN_FWD(T) \
  skip_linear_fwd_cuda<T>(P<T>(x), P<T>(w), P<T>(b), P<T>(q), P<T>(y), P<T>(z), M, K, N, skip, act, s)
  switch (dtype) {
    case 0: err = SKIPKERN_FWD(float); break;
    case 1: err = SKIPKERN_FWD(double); break;
    case 2: err = SKIPKERN_FWD(__half); break;
    case 3: err = SKIPKERN_FWD(__nv_bfloat16); break;
    default: throw std::invalid_argument("unknown dtype code " + std::to_string(dtype));
  }
#undef SKIPKERN_FWD
  check(err, "skip_linear_fwd_cuda");
}

void bwd_dispatch(int dtype, std::uintptr_t gy, std::uintptr_t x, std::uintptr_t w, std::uintptr_t z,
                  std::uintptr_t q, std::uintptr_t dx, std::uintptr_t dw, std::uintptr_t db, std::uintptr_t ws,
                  int M, int K, int N, Skip skip, Act act, std::uintptr_t stream) {
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  const int sms = current_sm_count();
  cudaError_t err = cudaErrorInvalidValue;
#define SKIPKERN_BWD(T)                                                                                     \
  skip_linear_bwd_cuda<T>(P<T>(gy), P<T>(x), P<T>(w), P<T>(z), P<T>(q), P<T>(dx), P<T>(dw), P<T>(db),     \
                          reinterpret_cast<void*>(ws), M, K, N, skip, act, sms, s)
  switch (dtype) {
    case 0: err = SKIPKERN_BWD(float); break;
    case 1: err = SKIPKERN_BWD(double); break;
    case 2: err = SKIPKERN_BWD(__half); break;
    case 3: err = SKIPKERN_BWD(__nv_bfloat16); break;
    default: throw std::invalid_argument("unknown dtype code " + std::to_string(dtype));
  }
#undef SKIPKERN_BWD
  check(err, "skip_linear_bwd_cuda");
}

std::string kernel_config() {
  return "BM=" + std::to_string(BM) + " BN=" + std::to_string(BN) + " BK=" + std::to_string(BK) +
         " TM=" + std::to_string(TM) + " TN=" + std::to_string(TN) + " threads=" + std::to_string(kThreads);
}

int runtime_version() {
  int v = 0;
  check(cudaRuntimeGetVersion(&v), "cudaRuntimeGetVersion");
  return v;
}

}  // namespace cuda
}  // namespace skipkern
