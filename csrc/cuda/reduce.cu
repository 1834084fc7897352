// Small kernels around the step loops: an elementwise sum and the deterministic
// column sum of the bias gradients.
#include "common.cuh"

namespace fusedrnn::cuda {
namespace {

template <typename T>
__global__ void __launch_bounds__(kThreads)
    add_kernel(const T* a, const T* b, const opmath_t<T>* c, T* out, int64_t n) {
  using A = opmath_t<T>;
  FUSEDRNN_GRID_STRIDE(i, n) {
    A v = up<A>(a[i]);
    if (b != nullptr) v += up<A>(b[i]);
    if (c != nullptr) v += c[i];
    out[i] = down<T>(v);
  }
}

// Rows per block column, and columns per block: a block (32 x 8 threads) sums rows
// [s*rows, (s+1)*rows) of 32 columns; thread (x, y) takes every 8th row from y, then the
// 8 partial sums are added in order of y. Nothing depends on scheduling.
constexpr int kColumns = 32, kRowLanes = 8;
constexpr int64_t kRowsPerChunk = 512, kMaxChunks = 128;

template <typename T>
__global__ void __launch_bounds__(kColumns* kRowLanes)
    column_partial_kernel(const T* m, int64_t R, int64_t G, int64_t rows, double* partial) {
  __shared__ double sh[kRowLanes][kColumns];
  const int64_t j = blockIdx.x * static_cast<int64_t>(kColumns) + threadIdx.x;
  const int64_t r0 = blockIdx.y * rows, r1 = r0 + rows < R ? r0 + rows : R;
  double acc = 0;
  if (j < G)
    for (int64_t r = r0 + threadIdx.y; r < r1; r += kRowLanes) acc += up<double>(m[r * G + j]);
  sh[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && j < G) {
    double s = 0;
#pragma unroll
    for (int y = 0; y < kRowLanes; ++y) s += sh[y][threadIdx.x];
    partial[blockIdx.y * G + j] = s;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    column_finish_kernel(const double* partial, int64_t chunks, int64_t G, T* out) {
  FUSEDRNN_GRID_STRIDE(j, G) {
    double s = 0;
    for (int64_t c = 0; c < chunks; ++c) s += partial[c * G + j];
    out[j] = static_cast<T>(static_cast<opmath_t<T>>(s));
  }
}

}  // namespace

cudaError_t add(DType dt, const void* a, const void* b, const void* c, void* out, int64_t n,
                cudaStream_t s) {
  return dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    if (n == 0) return cudaSuccess;
    add_kernel<T><<<grid_for(n), kThreads, 0, s>>>(static_cast<const T*>(a),
                                                    static_cast<const T*>(b),
                                                    static_cast<const opmath_t<T>*>(c),
                                                    static_cast<T*>(out), n);
    return cudaGetLastError();
  });
}

int64_t column_sum_chunks(int64_t R) {
  const int64_t c = (R + kRowsPerChunk - 1) / kRowsPerChunk;
  return c < 1 ? 1 : (c > kMaxChunks ? kMaxChunks : c);
}

cudaError_t column_sum(DType dt, const void* m, int64_t R, int64_t G, double* partial, void* out,
                       cudaStream_t s) {
  return dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    if (G == 0) return cudaSuccess;
    const int64_t chunks = column_sum_chunks(R);
    const int64_t rows = (R + chunks - 1) / chunks;
    const dim3 grid(static_cast<unsigned>((G + kColumns - 1) / kColumns),
                    static_cast<unsigned>(chunks));
    column_partial_kernel<T><<<grid, dim3(kColumns, kRowLanes), 0, s>>>(
        static_cast<const T*>(m), R, G, rows, partial);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
    column_finish_kernel<T><<<grid_for(G), kThreads, 0, s>>>(partial, chunks, G,
                                                            static_cast<T*>(out));
    return cudaGetLastError();
  });
}

}  // namespace fusedrnn::cuda
