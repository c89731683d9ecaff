// rop_epilogue on the CPU: the elementwise passes of the fused R-op (skipkern/hessian/hvp_fused.py),
// one pass over the [n, k, N] R-tensors instead of two to four torch ops. C++/OpenMP on raw pointers.
//
// Shapes (row-major, contiguous, one dtype): out, skip, hsum, t2, rgh [n, k, N]; d1, d2, gh [n, N]
// (per-sample factors broadcast over the k directions). A null pointer means "absent".
//   forward:  t2 = out * d2 (if d2);  out = out * d1 + skip + c * hsum            (in place)
//   backward: out = rgh * d1 + gh * t2   (either product may be absent, not both)
// Rows r = i * k + j of the flattened [n * k, N] view are split over the threads; row r reads row i of
// the [n, N] factors. Each variant (which operands exist) is its own instantiation so that the inner
// loop has no branches and vectorizes.
#include <omp.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace py = pybind11;

namespace skipkern_rop {

// Below this many elements one thread is faster than waking the team (memory-bound, ~1 ns/element).
constexpr long kParallelMinElems = 1L << 15;

inline int threads_for(long elems) {
  return elems < kParallelMinElems ? 1 : std::max(1, omp_get_max_threads());
}

template <typename T>
T* ptr(std::uintptr_t p) { return reinterpret_cast<T*>(p); }

template <typename T, bool D2, bool SKIP, bool HSUM>
void fwd_impl(T* __restrict out, const T* __restrict d1, const T* __restrict d2, const T* __restrict skip,
              const T* __restrict hsum, T* __restrict t2, T c, long n, long k, long N) {
  const long rows = n * k;
#pragma omp parallel for schedule(static) num_threads(threads_for(rows * N))
  for (long r = 0; r < rows; ++r) {
    const long i = r / k;
    const T* a = d1 + i * N;
    const T* b = D2 ? d2 + i * N : nullptr;
    T* o = out + r * N;
    const T* s = SKIP ? skip + r * N : nullptr;
    const T* h = HSUM ? hsum + r * N : nullptr;
    T* t = D2 ? t2 + r * N : nullptr;
#pragma omp simd
    for (long e = 0; e < N; ++e) {
      const T v = o[e];
      if (D2) t[e] = v * b[e];
      T acc = v * a[e];
      if (SKIP) acc += s[e];
      if (HSUM) acc += c * h[e];
      o[e] = acc;
    }
  }
}

template <typename T, bool RGH, bool T2>
void bwd_impl(const T* __restrict rgh, const T* __restrict d1, const T* __restrict gh, const T* __restrict t2,
              T* __restrict out, long n, long k, long N) {
  const long rows = n * k;
#pragma omp parallel for schedule(static) num_threads(threads_for(rows * N))
  for (long r = 0; r < rows; ++r) {
    const long i = r / k;
    const T* g = RGH ? rgh + r * N : nullptr;
    const T* a = RGH ? d1 + i * N : nullptr;
    const T* b = T2 ? gh + i * N : nullptr;
    const T* t = T2 ? t2 + r * N : nullptr;
    T* o = out + r * N;
#pragma omp simd
    for (long e = 0; e < N; ++e) {
      T acc = RGH ? g[e] * a[e] : T(0);
      if (T2) acc += b[e] * t[e];
      o[e] = acc;
    }
  }
}

template <typename T>
void fwd(std::uintptr_t out, std::uintptr_t d1, std::uintptr_t d2, std::uintptr_t skip, std::uintptr_t hsum,
         std::uintptr_t t2, double c, long n, long k, long N) {
  const int variant = (d2 != 0) * 4 + (skip != 0) * 2 + (hsum != 0);
  auto args = [&](auto f) {
    f(ptr<T>(out), ptr<const T>(d1), ptr<const T>(d2), ptr<const T>(skip), ptr<const T>(hsum), ptr<T>(t2),
      static_cast<T>(c), n, k, N);
  };
  switch (variant) {
    case 0: args(fwd_impl<T, false, false, false>); break;
    case 1: args(fwd_impl<T, false, false, true>); break;
    case 2: args(fwd_impl<T, false, true, false>); break;
    case 3: args(fwd_impl<T, false, true, true>); break;
    case 4: args(fwd_impl<T, true, false, false>); break;
    case 5: args(fwd_impl<T, true, false, true>); break;
    case 6: args(fwd_impl<T, true, true, false>); break;
    default: args(fwd_impl<T, true, true, true>); break;
  }
}

template <typename T>
void bwd(std::uintptr_t rgh, std::uintptr_t d1, std::uintptr_t gh, std::uintptr_t t2, std::uintptr_t out, long n,
         long k, long N) {
  auto r = ptr<const T>(rgh), a = ptr<const T>(d1), g = ptr<const T>(gh), t = ptr<const T>(t2);
  T* o = ptr<T>(out);
  if (rgh && t2)
    bwd_impl<T, true, true>(r, a, g, t, o, n, k, N);
  else if (rgh)
    bwd_impl<T, true, false>(r, a, g, t, o, n, k, N);
  else
    bwd_impl<T, false, true>(r, a, g, t, o, n, k, N);
}

void check_sizes(long n, long k, long N) {
  if (n < 0 || k < 0 || N < 0)
    throw py::value_error("sizes must be non-negative, got n=" + std::to_string(n) + ", k=" + std::to_string(k) +
                          ", N=" + std::to_string(N));
}

}  // namespace skipkern_rop

void register_rop_epilogue(py::module_& m) {
  using namespace skipkern_rop;
  m.def(
      "rop_epilogue_fwd_cpu",
      [](const std::string& dtype, std::uintptr_t out, std::uintptr_t d1, std::uintptr_t d2, std::uintptr_t skip,
         std::uintptr_t hsum, std::uintptr_t t2, double c, long n, long k, long N) {
        check_sizes(n, k, N);
        if (out == 0 || d1 == 0) throw py::value_error("out and d1 are required (got a null pointer)");
        if ((d2 == 0) != (t2 == 0)) throw py::value_error("d2 and t2 must be given together");
        py::gil_scoped_release nogil;
        if (dtype == "float32")
          fwd<float>(out, d1, d2, skip, hsum, t2, c, n, k, N);
        else if (dtype == "float64")
          fwd<double>(out, d1, d2, skip, hsum, t2, c, n, k, N);
        else
          throw std::invalid_argument("dtype must be float32 or float64, got " + dtype);
      },
      "R-forward epilogue in place: t2 = out * d2 (d2 != 0); out = out * d1 + skip + c * hsum. out, skip, "
      "hsum, t2 [n,k,N]; d1, d2 [n,N]; 0 = absent; contiguous row-major, one dtype.",
      py::arg("dtype"), py::arg("out"), py::arg("d1"), py::arg("d2"), py::arg("skip"), py::arg("hsum"),
      py::arg("t2"), py::arg("c"), py::arg("n"), py::arg("k"), py::arg("N"));
  m.def(
      "rop_epilogue_bwd_cpu",
      [](const std::string& dtype, std::uintptr_t rgh, std::uintptr_t d1, std::uintptr_t gh, std::uintptr_t t2,
         std::uintptr_t out, long n, long k, long N) {
        check_sizes(n, k, N);
        if (out == 0) throw py::value_error("out is required (got a null pointer)");
        if (rgh == 0 && t2 == 0) throw py::value_error("rgh and t2 cannot both be absent");
        if ((rgh != 0 && d1 == 0) || (t2 != 0 && gh == 0))
          throw py::value_error("rgh needs d1 and t2 needs gh");
        py::gil_scoped_release nogil;
        if (dtype == "float32")
          bwd<float>(rgh, d1, gh, t2, out, n, k, N);
        else if (dtype == "float64")
          bwd<double>(rgh, d1, gh, t2, out, n, k, N);
        else
          throw std::invalid_argument("dtype must be float32 or float64, got " + dtype);
      },
      "R-backward epilogue: out = rgh * d1 + gh * t2 (either product may be absent). rgh, t2, out [n,k,N]; "
      "d1, gh [n,N]; 0 = absent; contiguous row-major, one dtype.",
      py::arg("dtype"), py::arg("rgh"), py::arg("d1"), py::arg("gh"), py::arg("t2"), py::arg("out"), py::arg("n"),
      py::arg("k"), py::arg("N"));
}
