// The CUDA kernels' interface: one params struct of raw pointers and sizes per kernel, and
// a launcher that picks the grid, launches on the given stream and returns the launch's
// error. Free of torch, so the .cu files compile with nvcc alone; ops.cpp calls these.
//
// Storage pointers (x-like data: gates, states, outputs) hold the op's dtype `DType`;
// opmath pointers (the workspace, running cell states, carried gradients) hold float,
// or double when the dtype is Double. Rows are contiguous; row strides are given in
// elements as multiples of H. Optional pointers are nullptr when absent.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace fusedrnn::cuda {

enum class DType { Float, Double, Half, BFloat16 };

// One LSTM time step over rows [0, B) of the step. Per row: xg = x_t @ W_ih^T and
// hg = h_prev @ W_hh^T [4H]; c [H] running cell state, updated in place; out [H]
// receives h_t (or m = o * tanh(c) before a projection); h [H] (optional) receives h_t
// too, as the next step's GEMM input; ws [5H] receives i, f, g, o, c.
struct LSTMForwardStep {
  const void* xg;
  const void* hg;
  const void* b_ih;  // [4H] or nullptr (then b_hh is nullptr too)
  const void* b_hh;
  void* c;    // opmath [B, H]
  void* out;  // [B, H]
  void* h;    // [B, H] or nullptr
  void* ws;   // opmath [B, 5H]
  int64_t B, H;
};

// The LSTM step backward. dh of row n is gy[n] + dh_next[n] (dh_next optional); c_prev of
// row n is ws_prev[n, 4H:5H] for n < keep, else c0[n]. dc [H] carries the cell gradient
// (in: of c_t, out: of c_{t-1}); dg [4H] receives the gate pre-activation gradients.
// It also writes hp [P], the h_prev each row started from (y_prev[n] for n < keep, else
// h0[n]), the input of the W_hh gradient GEMM.
struct LSTMBackwardStep {
  const void* gy;       // [B, H]
  const void* dh_next;  // [B, H] or nullptr
  const void* ws;       // opmath [B, 5H]
  const void* ws_prev;  // opmath [keep, 5H] or nullptr
  const void* c0;       // opmath [N, H]
  void* dc;             // opmath [B, H]
  void* dg;             // [B, 4H]
  const void* y_prev;   // [keep, P] or nullptr
  const void* h0;       // [N, P]
  void* hp;             // [B, P]
  int64_t B, H, P, keep;
};

// One GRU time step. xg, hg [3H]; ha [H] running state in opmath, updated in place;
// y [H] and h [H] both receive h_t; ws [4H] receives r, z, n and hn = W_hn h + b_hn.
struct GRUForwardStep {
  const void* xg;
  const void* hg;
  const void* b_ih;
  const void* b_hh;
  void* ha;  // opmath [B, H]
  void* y;   // [B, H]
  void* h;   // [B, H]
  void* ws;  // opmath [B, 4H]
  int64_t B, H;
};

// The GRU step backward. dh of row n is gy[n] + dd[n] + rec[n], with rec = the next
// step's dgh @ W_hh (or grad_h_n) and dd = the next step's dh * z (opmath, in/out).
// h_prev is y_prev[n] for n < keep, else h0[n]; it is also written to hp.
// dgi, dgh [3H]: gradients of x_t @ W_ih^T + b_ih and of h_prev @ W_hh^T + b_hh.
struct GRUBackwardStep {
  const void* gy;   // [B, H]
  const void* rec;  // [B, H]
  const void* ws;   // opmath [B, 4H]
  void* dd;         // opmath [B, H]
  void* dgi;        // [B, 3H]
  void* dgh;        // [B, 3H]
  const void* y_prev;
  const void* h0;
  void* hp;
  int64_t B, H, keep;
};

cudaError_t lstm_forward_step(DType, const LSTMForwardStep&, cudaStream_t);
cudaError_t lstm_backward_step(DType, const LSTMBackwardStep&, cudaStream_t);
cudaError_t gru_forward_step(DType, const GRUForwardStep&, cudaStream_t);
cudaError_t gru_backward_step(DType, const GRUBackwardStep&, cudaStream_t);

// out[r, j] = o * tanh(c) of workspace row r (ws [R, 5H] opmath): the input of the
// LSTM projection, for the W_hr gradient.
cudaError_t lstm_projection_inputs(DType, const void* ws, void* out, int64_t R, int64_t H,
                                   cudaStream_t);

// out[i] = a[i] + b[i] (b optional, storage dtype) + c[i] (c optional, opmath), summed in
// opmath, for i < n.
cudaError_t add(DType, const void* a, const void* b, const void* c, void* out, int64_t n,
                cudaStream_t);

// out[j] = sum over r of m[r, j] for m [R, G]: a bias gradient. Summed in double in a
// fixed order that depends only on R (no atomics), so results are bit-identical from run
// to run and across GPUs. partial: double [column_sum_chunks(R), G] scratch.
int64_t column_sum_chunks(int64_t R);
cudaError_t column_sum(DType, const void* m, int64_t R, int64_t G, double* partial, void* out,
                       cudaStream_t);

}  // namespace fusedrnn::cuda
