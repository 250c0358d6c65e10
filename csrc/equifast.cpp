// The schema of the one fused operator, and the module init of `equifast._C`.
//
// Importing `equifast._C` runs the static registrations below and in the backend files
// (`cpu/scores_cpu.cpp`, `cuda/scores_cuda.cu`); the module itself holds no Python
// functions, so it is built without pybind and against the limited Python API. The Python
// surface (typed wrapper and fake) is `equifast/ops.py`.
#include <Python.h>

#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

extern "C" {
// `import equifast._C` needs a PyInit; the operators are registered by static
// initialisers when the shared library is loaded.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",  // name
      "Compiled kernels of equifast; use them through equifast.ops.",  // doc
      -1,    // per-interpreter state: none
      nullptr,
  };
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(equifast, m) {
  // Channel and layer scores of one representation under one transform (SPEC section 1),
  // reading `fx` through the transform's index map: pair p compares fx[n, k, a_index[p]]
  // with ftx[n, k', b_index[p]] (flat positions i * W + j). `centered` picks Pearson
  // correlation (true) or cosine (false); `eps` is the undefined-row tolerance.
  // `tensor_cores` lets CUDA multiply on tensor cores (TF32 for float32, native float16 /
  // bfloat16); false keeps float32 arithmetic, as the CPU always does. `check_indices=false`
  // lets CUDA skip the bounds check of the indices (a host sync per call there) for maps
  // checked when they were built (Transform.index_map); the CPU always checks.
  m.def(
      "equivariance_scores(Tensor fx, Tensor ftx, Tensor a_index, Tensor b_index, "
      "bool centered, float eps, bool tensor_cores=True, bool check_indices=True) -> "
      "(Tensor channel, Tensor layer, Tensor layer_index)");
}

// The scores are measurements, not a loss: no derivative is implemented, and a backward pass
// through them says so (without this kernel autograd silently returned no gradient).
TORCH_LIBRARY_IMPL(equifast, Autograd, m) {
  m.impl("equivariance_scores", torch::autograd::autogradNotImplementedFallback());
}
