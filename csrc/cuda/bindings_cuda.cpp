// pybind11 module skipkern._C_cuda: the CUDA skip_linear kernels on raw device pointers and a stream
// (torch.cuda.current_stream().cuda_stream). Compiled by the host compiler: no CUDA headers here, the
// launchers live in skip_linear_cuda.cu (compiled by nvcc) and are declared below.
#include <pybind11/pybind11.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "../op_codes.h"

namespace py = pybind11;

namespace skipkern {
namespace cuda {
// Defined in skip_linear_cuda.cu. dtype codes: 0 float32, 1 float64, 2 float16, 3 bfloat16; skip and
// activation: the enums of op_codes.h (Python passes their integer codes).
void fwd_dispatch(int dtype, std::uintptr_t x, std::uintptr_t w, std::uintptr_t b, std::uintptr_t q,
                  std::uintptr_t y, std::uintptr_t z, int M, int K, int N, Skip skip, Act act, std::uintptr_t stream);
void bwd_dispatch(int dtype, std::uintptr_t gy, std::uintptr_t x, std::uintptr_t w, std::uintptr_t z,
                  std::uintptr_t q, std::uintptr_t dx, std::uintptr_t dw, std::uintptr_t db, std::uintptr_t ws,
                  int M, int K, int N, Skip skip, Act act, std::uintptr_t stream);
size_t bwd_workspace_dispatch(int dtype, int M, int K, int N);
int current_sm_count();
int runtime_version();
std::string kernel_config();
}  // namespace cuda
}  // namespace skipkern

namespace {

int code(const std::string& s, std::initializer_list<const char*> names, const char* what) {
  int i = 0;
  for (const char* n : names) {
    if (s == n) return i;
    ++i;
  }
  std::string all;
  for (const char* n : names) all += std::string(all.empty() ? "" : ", ") + n;
  throw py::value_error(std::string(what) + " must be one of " + all + "; got '" + s + "'");
}

int dtype_code(const std::string& s) { return code(s, {"float32", "float64", "float16", "bfloat16"}, "dtype"); }

int as_int(long v, const char* name) {
  if (v < 0 || v > 0x7fffffffL) throw py::value_error(std::string(name) + " must be in [0, 2^31), got " + std::to_string(v));
  return static_cast<int>(v);
}

}  // namespace

PYBIND11_MODULE(_C_cuda, m) {
  using namespace skipkern;
  using namespace skipkern::cuda;
  m.doc() = "skipkern CUDA kernels (raw device pointers + stream)";
  m.attr("ABI") = kAbi;
  // The backward skips a null dx / dW / db (an older build would write through it): launchers check this.
  m.attr("SKIP_LINEAR_OPTIONAL_GRADS") = 1;
  m.def(
      "skip_linear_fwd_cuda",
      [](const std::string& dtype, std::uintptr_t x, std::uintptr_t w, std::uintptr_t b, std::uintptr_t q,
         std::uintptr_t y, std::uintptr_t z, long M, long K, long N, int skip, int activation,
         std::uintptr_t stream) {
        const int dt = dtype_code(dtype);
        const Skip sk = skip_from_code(skip);
        const Act ac = act_from_code(activation);
        const int m_ = as_int(M, "M"), k_ = as_int(K, "K"), n_ = as_int(N, "N");
        if (sk == Skip::kIdentity && k_ != n_) throw py::value_error("skip 'identity' needs K == N");
        py::gil_scoped_release nogil;
        fwd_dispatch(dt, x, w, b, q, y, z, m_, k_, n_, sk, ac, stream);
      },
      "Fused forward: y = act(x W^T + b) + S(x), z = x W^T + b. x [M,K], W/Q [N,K], b [N] (0 = none), "
      "y/z [M,N], contiguous device memory of one dtype; skip, activation: integer codes "
      "(skipkern.reference.SKIP_CODES, ACTIVATION_CODES); stream is a cudaStream_t as int.",
      py::arg("dtype"), py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("q"), py::arg("y"), py::arg("z"),
      py::arg("M"), py::arg("K"), py::arg("N"), py::arg("skip"), py::arg("activation"), py::arg("stream"));
  m.def(
      "skip_linear_bwd_cuda",
      [](const std::string& dtype, std::uintptr_t gy, std::uintptr_t x, std::uintptr_t w, std::uintptr_t z,
         std::uintptr_t q, std::uintptr_t dx, std::uintptr_t dw, std::uintptr_t db, std::uintptr_t workspace,
         long M, long K, long N, int skip, int activation, std::uintptr_t stream) {
        const int dt = dtype_code(dtype);
        const Skip sk = skip_from_code(skip);
        const Act ac = act_from_code(activation);
        const int m_ = as_int(M, "M"), k_ = as_int(K, "K"), n_ = as_int(N, "N");
        if (sk == Skip::kIdentity && k_ != n_) throw py::value_error("skip 'identity' needs K == N");
        py::gil_scoped_release nogil;
        bwd_dispatch(dt, gy, x, w, z, q, dx, dw, db, workspace, m_, k_, n_, sk, ac, stream);
      },
      "Fused backward: dx = gz W + S^T(g), dW = gz^T x, db = colsum(gz), gz = g act'(z); a 0 pointer for dx, "
      "dW or db skips that output (dW = db = 0 skips the dW GEMM). "
      "workspace: skip_linear_bwd_cuda_workspace_bytes(...) bytes of device memory.",
      py::arg("dtype"), py::arg("grad_y"), py::arg("x"), py::arg("weight"), py::arg("z"), py::arg("q"),
      py::arg("dx"), py::arg("dw"), py::arg("db"), py::arg("workspace"), py::arg("M"), py::arg("K"), py::arg("N"),
      py::arg("skip"), py::arg("activation"), py::arg("stream"));
  m.def(
      "skip_linear_bwd_cuda_workspace_bytes",
      [](const std::string& dtype, long M, long K, long N) {
        return bwd_workspace_dispatch(dtype_code(dtype), as_int(M, "M"), as_int(K, "K"), as_int(N, "N"));
      },
      "Bytes of device workspace the backward needs on the current device.", py::arg("dtype"), py::arg("M"),
      py::arg("K"), py::arg("N"));
  m.def(
      "cuda_kernel_info",
      []() {
        py::dict d;
        d["config"] = kernel_config();
        d["cuda_runtime"] = runtime_version();
        d["sm_count"] = current_sm_count();
        return d;
      },
      "Tile sizes, CUDA runtime version and SM count of the current device.");
}
