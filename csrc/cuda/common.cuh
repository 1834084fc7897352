// Shared by the .cu files: storage/opmath types, 16-byte vector packs, launch sizing and
// dtype dispatch. Plain CUDA, no torch.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <initializer_list>

#include "../cells.h"
#include "kernels.h"

namespace fusedrnn::cuda {

// opmath: float for float, half and bfloat16; double for double.
template <typename T>
struct Opmath {
  using type = float;
};
template <>
struct Opmath<double> {
  using type = double;
};
template <typename T>
using opmath_t = typename Opmath<T>::type;

template <typename A, typename T>
__device__ __forceinline__ A up(T v) {
  return static_cast<A>(static_cast<opmath_t<T>>(v));
}
template <typename T, typename A>
__device__ __forceinline__ T down(A v) {
  return static_cast<T>(v);
}

// V consecutive elements, loaded and stored as 16-byte accesses (one for storage types,
// two for 8 floats of opmath beside 8 halves), so 16-byte alignment is all a pack needs.
template <typename T, int V>
struct alignas(sizeof(T) * V < 16 ? sizeof(T) * V : 16) Pack {
  T v[V];
};
template <int V, typename T>
__device__ __forceinline__ Pack<T, V> load(const T* p) {
  return *reinterpret_cast<const Pack<T, V>*>(p);
}
template <int V, typename T>
__device__ __forceinline__ void store(T* p, const Pack<T, V>& x) {
  *reinterpret_cast<Pack<T, V>*>(p) = x;
}

// Units per thread on the vector path: 16 bytes of storage.
template <typename T>
constexpr int kVec = 16 / static_cast<int>(sizeof(T));

// True when every (non-null) pointer is 16-byte aligned and H % V == 0; the kernels then
// take the vector path (every row stride is a multiple of H, so every row stays aligned).
template <typename T>
inline bool vector_ok(int64_t H, std::initializer_list<const void*> ptrs) {
  constexpr uintptr_t align = 16;
  if (H % kVec<T> != 0) return false;
  for (const void* p : ptrs)
    if (reinterpret_cast<uintptr_t>(p) % align != 0) return false;
  return true;
}

constexpr int kThreads = 256;

// Blocks for `items` grid-stride work items: enough to fill every SM of the current
// device (its multiprocessor count, read once per device), no more than the work needs.
inline unsigned grid_for(int64_t items) {
  static std::atomic<int> sms[64] = {};
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) dev = 0;
  int n = sms[dev & 63].load(std::memory_order_relaxed);
  if (n == 0) {
    if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || n <= 0)
      n = 1;
    (void)cudaGetLastError();  // a failed query must not surface as a launch error
    sms[dev & 63].store(n, std::memory_order_relaxed);
  }
  const int64_t need = (items + kThreads - 1) / kThreads;
  const int64_t fill = static_cast<int64_t>(n) * (2048 / kThreads);
  return static_cast<unsigned>(need < fill ? (need > 0 ? need : 1) : fill);
}

// Launches a step kernel over p.B rows of p.H units: the 16-byte variant (V units a thread)
// when vector_ok said so, else the scalar one.
template <typename Params>
cudaError_t launch_units(void (*vector_kernel)(Params), void (*scalar_kernel)(Params),
                         int V, bool vector, const Params& p, cudaStream_t s) {
  if (p.B == 0 || p.H == 0) return cudaSuccess;
  if (vector)
    vector_kernel<<<grid_for(p.B * p.H / V), kThreads, 0, s>>>(p);
  else
    scalar_kernel<<<grid_for(p.B * p.H), kThreads, 0, s>>>(p);
  return cudaGetLastError();
}

#define FUSEDRNN_GRID_STRIDE(i, n)                                                     \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

// Calls f(T{}) with the storage type of t; returns f's error.
template <typename F>
cudaError_t dispatch(DType t, F&& f) {
  switch (t) {
    case DType::Float: return f(float{});
    case DType::Double: return f(double{});
    case DType::Half: return f(__half{});
    case DType::BFloat16: return f(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace fusedrnn::cuda
