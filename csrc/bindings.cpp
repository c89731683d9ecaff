// pybind11 module skipkern._C: CPU kernels on raw pointers (no torch headers).
#include <pybind11/pybind11.h>

namespace py = pybind11;

void register_skip_linear(py::module_& m);  // csrc/skip_linear.cpp
void register_rop_epilogue(py::module_& m);  // csrc/rop_epilogue.cpp
void register_rop_layer(py::module_& m);  // csrc/rop_layer.cpp

PYBIND11_MODULE(_C, m) {
  m.doc() = "skipkern CPU kernels (C++/OpenMP, raw pointers)";
  register_skip_linear(m);
  register_rop_epilogue(m);
  register_rop_layer(m);
}
