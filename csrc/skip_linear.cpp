// Placeholder: filled in by the C++ kernel work (skip_linear_fwd_cpu / skip_linear_bwd_cpu).
#include <pybind11/pybind11.h>
namespace py = pybind11;
void register_skip_linear(py::module_& m) {}
