// The weight gradient of a float32 NHWC/HWIO convolution as one direct kernel, an XLA
// FFI custom call for the CPU (digitjax/models/weight_grad.py builds and registers it).
//
//   dw[i, j, c, f] = sum over n, y, x of  xp[n, y*s + i, x*s + j, c] * g[n, y, x, f]
//
// xp is the input already padded (the caller pads), g the output gradient. XLA:CPU hands
// this contraction to Eigen as a convolution whose "kernel" is the output gradient, far
// below the matmul peak; here a block of (channels x output features) accumulators stays
// in vector registers while the pixels stream past, each output-gradient vector loaded
// once per block and each input value broadcast once. The batch is cut into as many
// chunks as the scratch result's first axis says (the caller makes that a function of
// the batch size only), each summed into its own buffer
// on XLA's intra-op threads, and the buffers are added in chunk order: the result does
// not depend on the thread count or on timing.

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "kernels.h"

namespace ffi = xla::ffi;

namespace digitjax {
namespace {

struct Shape {
  int64_t h, w, c;        // padded input, per image
  int64_t oh, ow, f;      // output gradient, per image
  int64_t kh, kw, s;      // kernel and stride
};

// dw[i, r0:r0+CB, f0:f0+FV*kLanes] += images n0..n1-1's share, where r runs over kernel
// row i's kw * c (tap, channel) values (see Plan).
template <int FV, int CB>
void Block(const float* x, const float* g, float* dw, const Shape& sh, int64_t n0,
           int64_t n1, int64_t i, int64_t r0, int64_t f0) {
  Vec acc[CB][FV];
  for (int c = 0; c < CB; ++c)
    for (int v = 0; v < FV; ++v) acc[c][v] = Load(dw + (r0 + c) * sh.f + f0 + v * kLanes);
  for (int64_t n = n0; n < n1; ++n) {
    const float* gn = g + n * sh.oh * sh.ow * sh.f + f0;
    const float* xn = x + n * sh.h * sh.w * sh.c + i * sh.w * sh.c + r0;
    for (int64_t y = 0; y < sh.oh; ++y) {
      const float* gy = gn + y * sh.ow * sh.f;
      const float* xy = xn + y * sh.s * sh.w * sh.c;
      for (int64_t q = 0; q < sh.ow; ++q) {
        const float* gp = gy + q * sh.f;
        const float* xq = xy + q * sh.s * sh.c;
        Vec gv[FV];
#pragma GCC unroll 4
        for (int v = 0; v < FV; ++v) gv[v] = Load(gp + v * kLanes);
#pragma GCC unroll 12
        for (int c = 0; c < CB; ++c) {
          const float b = xq[c];
#pragma GCC unroll 4
          for (int v = 0; v < FV; ++v) acc[c][v] += b * gv[v];
        }
      }
    }
  }
  for (int c = 0; c < CB; ++c)
    for (int v = 0; v < FV; ++v) Store(dw + (r0 + c) * sh.f + f0 + v * kLanes, acc[c][v]);
}

using BlockFn = void (*)(const float*, const float*, float*, const Shape&, int64_t, int64_t,
                         int64_t, int64_t, int64_t);

template <int FV, int... CB>
BlockFn PickChannels(int cb, std::integer_sequence<int, CB...>) {
  BlockFn table[] = {&Block<FV, CB + 1>...};
  return cb >= 1 && cb <= static_cast<int>(sizeof...(CB)) ? table[cb - 1] : nullptr;
}

constexpr int kMaxValues = 12;  // kernel-row values per block at most (Block<FV, 1..12>)

template <int FV>
BlockFn PickChannels(int cb) {
  return PickChannels<FV>(cb, std::make_integer_sequence<int, kMaxValues>());
}

BlockFn Pick(int fv, int cb) {
  switch (fv) {
    case 1: return PickChannels<1>(cb);
    case 2: return PickChannels<2>(cb);
    case 3: return PickChannels<3>(cb);
    case 4: return PickChannels<4>(cb);
    default: return nullptr;
  }
}

// A kernel row's taps and channels, kw * c values, lie side by side in the input (one
// row of a pixel's patch) and in dw: the blocks run over them together, so a few-channel
// layer (a first layer's 1 or 3) still fills the accumulators. Feature blocks of up to
// kBlockVectors vectors (the last may be narrower), and per block as many of those
// kw * c values as fit the accumulators beside it (at most kMaxValues), the last block
// of a row taking the rest.
struct Plan {
  int64_t f0;
  int cb;
  BlockFn block;
  BlockFn tail;  // the row's last row % cb values, or null
};

std::vector<Plan> Blocking(int64_t row, int64_t f) {
  std::vector<Plan> plans;
  for (int64_t f0 = 0; f0 < f; f0 += kBlockVectors * kLanes) {
    const int fv = static_cast<int>(std::min<int64_t>(kBlockVectors, (f - f0) / kLanes));
    const int cb =
        static_cast<int>(std::min<int64_t>(row, std::min(kMaxValues, kAccumulators / fv)));
    const int rest = static_cast<int>(row % cb);
    plans.push_back({f0, cb, Pick(fv, cb), rest ? Pick(fv, rest) : nullptr});
  }
  return plans;
}

// A chunk's images are taken in groups of about this many bytes of input and output
// gradient, and a block's accumulators stay in registers across a group's images: a
// small output (kernel_cnn:7's last layer: 4x4 pixels) otherwise loads and stores the
// block for every 16 pixels. Groups, blocks of kBlockVectors (kernels.h: 2 with AVX2,
// 4 before) and blocks that need not divide the row (kernel_cnn:7's 7 * 16 values: 6s
// and a 4, not 4s) together, per layer at batch 128 on an AMD EPYC (Zen 3), against
// lax's weight gradient, kernel_cnn:7/5/3 and strided_cnn's 13 layers: 190 ms in all
// -> 161 (2-vector blocks alone) -> 131; kernel_cnn:7's three 19.9 / 28.2 / 12.1 ->
// 13.7 / 19.3 / 6.2 ms (lax's: 16.7 / 20.2 / 7.3); 64 KB and 192 KB groups tied, 1 MB
// lost (200 ms). `DIGITJAX_CPU_DEVICES=1 python experiments/layer_forward.py --pass
// weight_grad` measures every layer of the six models
// (experiments/results/layer_weight_grad_zen3.md). The groups and the row tails apply
// with AVX-512 too, where they have not been measured. Each dw value still sums images,
// then pixels, in order, each step one fused multiply-add (weight_grad.py's GCC_FLAGS):
// the blocking does not change a bit of the result.
constexpr int64_t kGroupBytes = 64 * 1024;

// Chunk k's partial sum over its images, a group at a time (the group's input and output
// gradient stay in cache while every kernel row and block passes over them).
void Chunk(const float* x, const float* g, float* part, const Shape& sh, int64_t n0,
           int64_t n1, const std::vector<Plan>& plans) {
  const int64_t row = sh.kw * sh.c;  // dw[i] holds row x f values
  const int64_t image = (sh.h * sh.w * sh.c + sh.oh * sh.ow * sh.f) * sizeof(float);
  const int64_t group = std::max<int64_t>(1, kGroupBytes / std::max<int64_t>(image, 1));
  std::fill(part, part + sh.kh * row * sh.f, 0.0f);
  for (int64_t n = n0; n < n1; n += group) {
    const int64_t m = std::min(n1, n + group);
    for (int64_t i = 0; i < sh.kh; ++i) {
      float* di = part + i * row * sh.f;
      for (const Plan& p : plans) {
        int64_t r0 = 0;
        for (; r0 + p.cb <= row; r0 += p.cb) p.block(x, g, di, sh, n, m, i, r0, p.f0);
        if (p.tail) p.tail(x, g, di, sh, n, m, i, r0, p.f0);
      }
    }
  }
}

ffi::Error WeightGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> g,
                      int64_t stride, ffi::ResultBuffer<ffi::F32> dw,
                      ffi::ResultBuffer<ffi::F32> scratch) {
  const auto xd = x.dimensions(), gd = g.dimensions(), wd = dw->dimensions();
  if (xd.size() != 4 || gd.size() != 4 || wd.size() != 4 || xd[0] != gd[0] ||
      wd[2] != xd[3] || wd[3] != gd[3] || gd[3] % kLanes != 0 || stride < 1 ||
      (gd[1] - 1) * stride + wd[0] > xd[1] || (gd[2] - 1) * stride + wd[1] > xd[2]) {
    return ffi::Error::InvalidArgument("conv weight grad: shapes do not match");
  }
  const Shape sh{xd[1], xd[2], xd[3], gd[1], gd[2], gd[3], wd[0], wd[1], stride};
  const int64_t n = xd[0];
  const int64_t size = sh.kh * sh.kw * sh.c * sh.f;
  float* out = dw->typed_data();
  if (size == 0) return ffi::Error::Success();  // no weights
  if (n == 0) {
    std::fill(out, out + size, 0.0f);
    return ffi::Error::Success();
  }
  const std::vector<Plan> plans = Blocking(sh.kw * sh.c, sh.f);
  // the caller chooses how many partial sums (chunks of the batch): scratch's first axis
  const int64_t chunks = scratch->dimensions().size() == 5 ? scratch->dimensions()[0] : 0;
  if (chunks < 1 || chunks > n || scratch->element_count() != chunks * size) {
    return ffi::Error::InvalidArgument("conv weight grad: scratch of the wrong size");
  }
  const float* xs = x.typed_data();
  const float* gs = g.typed_data();
  float* ps = scratch->typed_data();  // the chunks' partial sums
  auto run = [=, &plans](int64_t k) {
    Chunk(xs, gs, ps + k * size, sh, n * k / chunks, n * (k + 1) / chunks, plans);
  };
  ParallelFor(pool, chunks, run);
  std::copy(ps, ps + size, out);
  for (int64_t k = 1; k < chunks; ++k) {
    const float* p = ps + k * size;
    for (int64_t e = 0; e < size; ++e) out[e] += p[e];
  }
  return ffi::Error::Success();
}

}  // namespace
}  // namespace digitjax

XLA_FFI_DEFINE_HANDLER_SYMBOL(DigitjaxConvWeightGrad, digitjax::WeightGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("stride")
                                  .Ret<ffi::Buffer<ffi::F32>>()    // dw
                                  .Ret<ffi::Buffer<ffi::F32>>());  // scratch: chunks x dw

// The vector width this build computes in (floats), for the Python side's padding.
extern "C" int DigitjaxWeightGradLanes() { return digitjax::kLanes; }
