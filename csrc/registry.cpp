// Every fusedrnn op schema, in one place. Implementations register per device key
// (csrc/cpu/*.cpp for CPU, csrc/cuda/ for CUDA); fake kernels live in _ops.py.
//
// A layer op covers one layer and one direction over the whole sequence:
//   x [T,N,I] padded, or a PackedSequence's data [R,I] with its batch_sizes [T] (int64,
//   CPU); w_ih [G,I], w_hh [G,P], b_ih/b_hh [G] or None, h0 [N,P], c0 [N,H];
//   G = 4H (LSTM, gates i,f,g,o) or 3H (GRU, gates r,z,n); LSTM projections w_hr [P,H]
//   (P = H without); reverse runs t = T-1 .. 0.
// Forward returns y ([T,N,P] or [R,P]), the final state(s) and a workspace in opmath
// (float for 16-bit storage) that only the backward op reads; save=False (no backward
// will run: inference) returns an empty workspace [0] and skips writing it. Backward returns the
// gradients; grad_w_hr is empty ([0]) without projections.
#include <Python.h>

#include <torch/csrc/stable/library.h>

extern "C" {
// An empty Python module: importing fusedrnn._C loads this library, which runs the
// static registrations below. Limited API only, so the wheel is abi3.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

STABLE_TORCH_LIBRARY(fusedrnn, m) {
  m.def(
      "lstm_forward(Tensor x, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
      "Tensor? w_hr, Tensor h0, Tensor c0, Tensor? batch_sizes, bool reverse, "
      "bool save=True) -> (Tensor y, Tensor h_n, Tensor c_n, Tensor workspace)");
  m.def(
      "lstm_backward(Tensor grad_y, Tensor grad_h_n, Tensor grad_c_n, Tensor x, "
      "Tensor w_ih, Tensor w_hh, Tensor? w_hr, Tensor h0, Tensor c0, Tensor y, "
      "Tensor workspace, Tensor? batch_sizes, bool reverse) -> (Tensor grad_x, "
      "Tensor grad_h0, Tensor grad_c0, Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_b, "
      "Tensor grad_w_hr)");
  m.def(
      "gru_forward(Tensor x, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
      "Tensor h0, Tensor? batch_sizes, bool reverse, bool save=True) -> (Tensor y, "
      "Tensor h_n, Tensor workspace)");
  m.def(
      "gru_backward(Tensor grad_y, Tensor grad_h_n, Tensor x, Tensor w_ih, Tensor w_hh, "
      "Tensor h0, Tensor y, Tensor workspace, Tensor? batch_sizes, bool reverse) -> "
      "(Tensor grad_x, Tensor grad_h0, Tensor grad_w_ih, Tensor grad_w_hh, "
      "Tensor grad_b_ih, Tensor grad_b_hh)");
}
