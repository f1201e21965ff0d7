// What digitjax's C++ kernels (weight_grad.cc, direct_conv.cc; built into one library by
// digitjax/models/weight_grad.py) share: the vector type, and a parallel loop over XLA's
// intra-op thread pool.

#ifndef DIGITJAX_MODELS_KERNELS_H_
#define DIGITJAX_MODELS_KERNELS_H_

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace digitjax {

// kBlockVectors: output-feature vectors per register block, at most, in both kernels.
// With AVX2, 2 (x 6 images or input values), not 4 x 3: each vector loaded then serves
// 6 multiply-adds, not 3; measured in direct_conv.cc and weight_grad.cc.
#if defined(__AVX512F__)
constexpr int kLanes = 16;  // floats per vector register
constexpr int kAccumulators = 24;  // of 32 registers; the rest hold operands
constexpr int kBlockVectors = 4;
#else
constexpr int kLanes = 8;
constexpr int kAccumulators = 12;  // of 16
constexpr int kBlockVectors = 2;
#endif
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));

inline Vec Load(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof(Vec));
  return v;
}

inline void Store(float* p, Vec v) { std::memcpy(p, &v, sizeof(Vec)); }

// Runs body(k) for k in [0, count) on XLA's intra-op threads and this one, and returns
// when all are done. Which thread runs which k is up to timing, so each body(k) must
// write its own outputs only.
template <typename Body>
void ParallelFor(xla::ffi::ThreadPool& pool, int64_t count, Body body) {
  struct Work {
    std::atomic<int64_t> next{0};
    int64_t done = 0;
    std::mutex mu;
    std::condition_variable cv;
  };
  auto work = std::make_shared<Work>();
  // A worker takes items until none are left; one that starts late finds none and
  // only drops its reference.
  auto worker = [work, body, count]() {
    int64_t taken = 0;
    for (int64_t k; (k = work->next.fetch_add(1)) < count; ++taken) body(k);
    if (taken) {
      std::lock_guard<std::mutex> lock(work->mu);
      work->done += taken;
      work->cv.notify_all();
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), count) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([worker] { worker(); });
  worker();
  std::unique_lock<std::mutex> lock(work->mu);
  work->cv.wait(lock, [&] { return work->done == count; });
}

}  // namespace digitjax

#endif  // DIGITJAX_MODELS_KERNELS_H_
