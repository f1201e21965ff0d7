// A float32 NHWC/HWIO convolution with stride s and implicit zero padding, as one direct
// kernel, an XLA FFI custom call for the CPU (digitjax/models/direct_conv.py):
//
//   out[n, y, x, f] = sum over i, j, c of  in[n, s*y + i - ph, s*x + j - pw, c] * w[i, j, c, f]
//
// where taps that fall outside `in` are skipped, not multiplied by zeros. That is what
// a VALID convolution's input gradient needs: it is this convolution of the output
// gradient with the flipped, transposed kernel and padding k - 1, and Eigen (through
// XLA:CPU) multiplies all that padding, (h/o)^2 times the useful work.
//
// The images are taken P at a time: a tile of P images' input rows is packed so that
// the P values of one (row, column, channel) lie side by side, and a block of
// (P images x up to kBlockVectors vectors of output features) accumulators stays in
// registers while the taps and channels stream past, each weight vector loaded once
// per block and each input value broadcast from the packed rows. All P images share
// one output pixel, so they share which taps are in bounds. Work items (a tile, an
// output row) write disjoint outputs: the result does not depend on the thread count,
// nor on the block (each output's sum runs over taps and channels in one order, each
// step one fused multiply-add: see weight_grad.py's GCC_FLAGS), so an image's output
// does not depend on its place in the batch.

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "kernels.h"

namespace ffi = xla::ffi;

namespace digitjax {
namespace {

struct Dims {
  int64_t n, h, w, c;   // input
  int64_t oh, ow, f;    // output; the kernel's f (wf) is a whole number of vectors
  int64_t wf;
  int64_t kh, kw;       // kernel
  int64_t ph, pw;       // low padding (the high padding follows from oh, ow)
  int64_t s;            // stride, both axes
};

// acc[p][v] += src[e * P + p] * wt[e * wf + v * kLanes] for e < count: the taps and
// channels of a run that lie side by side in both the packed input and the weights.
template <int P, int FV>
inline void Accumulate(const float* src, const float* wt, int64_t count, int64_t wf,
                       Vec (&acc)[P][FV]) {
  for (int64_t e = 0; e < count; ++e) {
    Vec wv[FV];
#pragma GCC unroll 4
    for (int v = 0; v < FV; ++v) wv[v] = Load(wt + e * wf + v * kLanes);
#pragma GCC unroll 12
    for (int p = 0; p < P; ++p) {
      const float b = src[e * P + p];
#pragma GCC unroll 4
      for (int v = 0; v < FV; ++v) acc[p][v] += b * wv[v];
    }
  }
}

// Stores acc[p] to out[p * image_stride + f0 ...], features f0.. up to f: the padded
// weights' extra features are dropped here, not sliced off later.
template <int P, int FV>
inline void StoreBlock(const Vec (&acc)[P][FV], float* out, int64_t image_stride,
                       int64_t tail) {
  for (int p = 0; p < P; ++p) {
    float* op = out + p * image_stride;
    for (int v = 0; v + 1 < FV; ++v) Store(op + v * kLanes, acc[p][v]);
    if (tail >= kLanes) {
      Store(op + (FV - 1) * kLanes, acc[p][FV - 1]);
    } else {
      float last[kLanes];
      Store(last, acc[p][FV - 1]);
      std::copy(last, last + tail, op + (FV - 1) * kLanes);
    }
  }
}

// out[n0:n0+P, y, x, f0:f0+FV*kLanes] from the tile's packed input
// (packed[((row * w + col) * c + ch) * P + p] = in[n0 + p, row, col, ch]). With a stride,
// only where a pixel's window starts moves: a kernel row's taps still lie side by side.
template <int P, int FV>
void Pixel(const float* packed, const float* wt, float* out, const Dims& d, int64_t y,
           int64_t x, int64_t f0) {
  Vec acc[P][FV];
  for (int p = 0; p < P; ++p)
    for (int v = 0; v < FV; ++v) acc[p][v] = Vec{};
  const int64_t sy = y * d.s - d.ph, sx = x * d.s - d.pw;  // the window's top left in `in`
  const int64_t i0 = std::max<int64_t>(0, -sy), i1 = std::min(d.kh, d.h - sy);
  const int64_t j0 = std::max<int64_t>(0, -sx), j1 = std::min(d.kw, d.w - sx);
  // Taps j0..j1 of a kernel row and all channels lie side by side in both the packed
  // input and the weights: one flat loop of (j1 - j0) * c steps per kernel row.
  const int64_t count = std::max<int64_t>(0, j1 - j0) * d.c;
  for (int64_t i = i0; i < i1; ++i) {
    Accumulate(packed + ((sy + i) * d.w + sx + j0) * d.c * P,
               wt + (i * d.kw + j0) * d.c * d.wf + f0, count, d.wf, acc);
  }
  StoreBlock(acc, out + (y * d.ow + x) * d.f + f0, d.oh * d.ow * d.f,
             d.f - f0 - (FV - 1) * kLanes);
}

using PixelFn = void (*)(const float*, const float*, float*, const Dims&, int64_t, int64_t,
                         int64_t);

constexpr int kMaxTile = 12;  // images per tile at most

// The block: kBlockVectors (kernels.h) feature vectors at most, and a tile of
// kAccumulators / that many images (at most kMaxTile). With AVX2, 4 vectors (tiles of 3)
// lost to lax's forward pass on every layer wider than 24 features: a block's weights
// for all taps (7x7x32x32 floats: 200 KB) stream from L2 once per pixel and serve only
// 3 images. 2 vectors (tiles of 6, the usual 6x16 AVX2 block) won or tied on 21 of 23
// layers. lax's time over the kernel's per layer on an AMD EPYC (Zen 3), 4 / 3 / 2 / 1
// vectors: 0.64-0.94 / 0.63-1.02 / 0.84-1.22 / 0.83-1.09 on the 18 layers of 30-128
// features (`DIGITJAX_CPU_DEVICES=1 python experiments/layer_forward.py`,
// experiments/results/layer_forward_zen3*.md). AVX-512 (4 vectors, tiles of 6) was at
// parity or faster on every layer (session 17).

// A kernel family's instantiation for a tile of p images (1..kMaxTile) and fv vectors:
// Family<P, FV>::kFn is the function (Pixel's here, WinogradPixel's below).
template <template <int, int> class Family, int FV, int... P>
auto PickTile(int p, std::integer_sequence<int, P...>) {
  static constexpr decltype(Family<1, FV>::kFn) table[] = {Family<P + 1, FV>::kFn...};
  return table[p - 1];
}

template <template <int, int> class Family>
auto Pick(int p, int fv) {
  using Tiles = std::make_integer_sequence<int, kMaxTile>;
  switch (fv) {
    case 1: return PickTile<Family, 1>(p, Tiles());
    case 2: return PickTile<Family, 2>(p, Tiles());
    case 3: return PickTile<Family, 3>(p, Tiles());
    default: return PickTile<Family, 4>(p, Tiles());
  }
}

template <int P, int FV>
struct DirectFamily {
  static constexpr PixelFn kFn = &Pixel<P, FV>;
};

// Images in[0:P], packed for Pixel: packed[e * P + q] = in[q * stride + e], e < count.
// Written in order from P read streams, where a pass per image wrote every P-th float:
// 1.03-1.07x on kernel_cnn:5's and strided_cnn's layers, neutral on kernel_cnn:7's
// (experiments/results/direct_flat_loop_zen3.md).
template <int P>
void PackTile(const float* in, float* packed, int64_t count, int64_t stride) {
  for (int64_t e = 0; e < count; ++e) {  // written in order, read from P streams
#pragma GCC unroll 12
    for (int q = 0; q < P; ++q) packed[e * P + q] = in[q * stride + e];
  }
}

template <int... P>
void PackAny(const float* in, float* packed, int64_t count, int64_t stride, int p,
             std::integer_sequence<int, P...>) {
  using PackFn = void (*)(const float*, float*, int64_t, int64_t);
  PackFn table[] = {&PackTile<P + 1>...};
  table[p - 1](in, packed, count, stride);
}

// Images n0:n0+p of `in`, packed for Pixel.
void Pack(const float* in, float* packed, const Dims& d, int64_t n0, int64_t p) {
  const int64_t image = d.h * d.w * d.c;
  PackAny(in + n0 * image, packed, image, image, static_cast<int>(p),
          std::make_integer_sequence<int, kMaxTile>());
}

// Images n0:n0+p of `in`, packed as Pack does, as `rows` rows padded with d.ph rows of
// zeros above (row r holds input row r - d.ph) and as many as it takes below.
void PackPaddedRows(const float* in, float* packed, const Dims& d, int64_t n0, int64_t p,
                    int64_t rows) {
  const int64_t image = d.h * d.w * d.c, row = d.w * d.c * p;
  const int64_t top = std::min(d.ph, rows), bottom = std::min(d.ph + d.h, rows);
  std::fill(packed, packed + top * row, 0.0f);
  if (bottom > top) {
    PackAny(in + n0 * image, packed + top * row, (bottom - top) * d.w * d.c, image,
            static_cast<int>(p), std::make_integer_sequence<int, kMaxTile>());
  }
  std::fill(packed + bottom * row, packed + rows * row, 0.0f);  // bottom >= top
}

ffi::Error DirectConv(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                      int64_t pad_h, int64_t pad_w, int64_t stride,
                      ffi::ResultBuffer<ffi::F32> out,
                      ffi::ResultBuffer<ffi::F32> scratch) {
  const auto xd = x.dimensions(), wd = w.dimensions(), od = out->dimensions();
  if (xd.size() != 4 || wd.size() != 4 || od.size() != 4 || xd[0] != od[0] ||
      wd[2] != xd[3] || wd[3] % kLanes != 0 || od[3] > wd[3] || od[3] <= wd[3] - kLanes ||
      pad_h < 0 || pad_w < 0 || stride < 1 ||
      od[1] < 1 || od[2] < 1 || scratch->element_count() != x.element_count()) {
    return ffi::Error::InvalidArgument("direct conv: shapes do not match");
  }
  if (out->element_count() == 0) return ffi::Error::Success();  // nothing to compute
  const Dims d{xd[0], xd[1], xd[2], xd[3], od[1], od[2], od[3],
               wd[3], wd[0], wd[1], pad_h, pad_w, stride};
  const int64_t vecs = d.wf / kLanes;
  const int fv = static_cast<int>(std::min<int64_t>(kBlockVectors, vecs));
  const int tile = std::min(kMaxTile, kAccumulators / fv);
  const int64_t tiles = (d.n + tile - 1) / tile;
  const float* in = x.typed_data();
  const float* wt = w.typed_data();
  float* o = out->typed_data();
  float* packed = scratch->typed_data();  // n * h * w * c, tile by tile
  const int64_t image = d.h * d.w * d.c;
  ParallelFor(pool, tiles, [=](int64_t t) {
    Pack(in, packed + t * tile * image, d, t * tile, std::min<int64_t>(tile, d.n - t * tile));
  });
  ParallelFor(pool, tiles * d.oh, [=](int64_t k) {
    const int64_t t = k / d.oh, y = k % d.oh;
    const int64_t n0 = t * tile, p = std::min<int64_t>(tile, d.n - n0);
    float* on = o + n0 * d.oh * d.ow * d.f;
    for (int64_t f0 = 0; f0 < d.wf; f0 += kBlockVectors * kLanes) {
      const int v = static_cast<int>(std::min<int64_t>(kBlockVectors, (d.wf - f0) / kLanes));
      const PixelFn pixel = Pick<DirectFamily>(static_cast<int>(p), v);
      for (int64_t xx = 0; xx < d.ow; ++xx) pixel(packed + n0 * image, wt, on, d, y, xx, f0);
    }
  });
  return ffi::Error::Success();
}

// The same convolution at stride 1 by a 1-D Winograd F(2, kh) down the height
// (models/winograd.py): a pair of output rows 2q, 2q+1 is
//
//   out[2q + m] = sum over r of at[m, r] * (sum over j, ch of v_r[x + j, ch] * u[r, j, ch])
//
// where v_r = sum over t of bt[r, t] * in[2q + t - ph] is a transformed input row (rows
// in the padding are zeros) and u the transformed kernel (kh + 1 rows of 1 x kw taps).
// kh + 1 rows of kw * c products make two output pixels where the direct form takes
// 2 * kh: 0.57x the multiply-adds for 7x7, 0.6x for 5x5. A work item (a tile of images,
// a pair of rows) transforms its kh + 1 rows from the packed tile (padded with zero rows
// by PackPaddedRows) into a buffer of its thread, then runs Accumulate over each, with
// the same register block as Pixel, skipping the taps in the width's padding as Pixel
// does, and adds each row's block into the pair's two output rows in the order of r
// (an odd height's last pair stores one).
template <int P, int FV>
void WinogradPixel(const float* rows, const float* u, const float* at, float* out,
                   const Dims& d, int64_t y, int64_t x, int64_t f0) {
  const int64_t row = d.w * d.c * P, sx = x - d.pw;
  const int64_t j0 = std::max<int64_t>(0, -sx), j1 = std::min(d.kw, d.w - sx);
  const int64_t count = std::max<int64_t>(0, j1 - j0) * d.c;
  const int outs = static_cast<int>(std::min<int64_t>(2, d.oh - y));
  Vec res[2][P][FV];
  for (int m = 0; m < 2; ++m)
    for (int p = 0; p < P; ++p)
      for (int v = 0; v < FV; ++v) res[m][p][v] = Vec{};
  for (int64_t r = 0; r <= d.kh; ++r) {
    Vec acc[P][FV];
    for (int p = 0; p < P; ++p)
      for (int v = 0; v < FV; ++v) acc[p][v] = Vec{};
    Accumulate(rows + r * row + (sx + j0) * d.c * P, u + (r * d.kw + j0) * d.c * d.wf + f0,
               count, d.wf, acc);
    for (int m = 0; m < outs; ++m) {
      const float a = at[m * (d.kh + 1) + r];
      if (a == 0.0f) continue;
      for (int p = 0; p < P; ++p)
        for (int v = 0; v < FV; ++v) res[m][p][v] += a * acc[p][v];
    }
  }
  const int64_t tail = d.f - f0 - (FV - 1) * kLanes;
  for (int m = 0; m < outs; ++m)
    StoreBlock(res[m], out + ((y + m) * d.ow + x) * d.f + f0, d.oh * d.ow * d.f, tail);
}

using WinogradFn = void (*)(const float*, const float*, const float*, float*, const Dims&,
                            int64_t, int64_t, int64_t);

template <int P, int FV>
struct WinogradFamily {
  static constexpr WinogradFn kFn = &WinogradPixel<P, FV>;
};

// dst[r * row + e] = sum over s of bt[r, s] * src[s * row + e] for e from e0, r and s
// < a, one float at a time: TransformRows' tail, and any other height.
void TransformRowsFrom(int64_t e0, const float* src, int64_t row, int64_t a, const float* bt,
                       float* dst) {
  for (int64_t e = e0; e < row; ++e) {
    for (int64_t r = 0; r < a; ++r) {
      float acc = 0.0f;
      for (int64_t s = 0; s < a; ++s) acc += bt[r * a + s] * src[s * row + e];
      dst[r * row + e] = acc;
    }
  }
}

// dst[r * row + e] = sum over s of bt[r, s] * src[s * row + e], r and s < A: the A
// transformed rows of a pair from the A packed rows it starts at. A vector of each
// source row is loaded once for all A outputs: with a pass per coefficient instead,
// reading and writing dst each time, the Winograd form ran at 1.07-1.21x the direct
// kernel's speed on kernel_cnn:5/:7's layers, here at 1.38-1.50x. The tail (rows of
// w * c * p floats, p images in the tile) is the same chain of fused multiply-adds.
template <int A>
void TransformRows(const float* src, int64_t row, const float* bt, float* dst) {
  int64_t e = 0;
  for (; e + kLanes <= row; e += kLanes) {
    Vec in[A];
#pragma GCC unroll 8
    for (int s = 0; s < A; ++s) in[s] = Load(src + s * row + e);
#pragma GCC unroll 8
    for (int r = 0; r < A; ++r) {
      Vec acc = Vec{};
#pragma GCC unroll 8
      for (int s = 0; s < A; ++s) acc += bt[r * A + s] * in[s];
      Store(dst + r * row + e, acc);
    }
  }
  TransformRowsFrom(e, src, row, A, bt, dst);
}

// x: (n, h, w, c); u: (kh + 1, kw, c, wf), the kernel transformed down its height; bt:
// (kh + 1, kh + 1); at: (2, kh + 1); pad_h, pad_w: the low padding; out: (n, oh, ow, f);
// scratch: n * (2 * ceil(oh / 2) + kh - 1) * w * c floats, the padded rows every pair
// reads.
ffi::Error WinogradConv(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                        ffi::Buffer<ffi::F32> u, ffi::Buffer<ffi::F32> bt,
                        ffi::Buffer<ffi::F32> at, int64_t pad_h, int64_t pad_w,
                        ffi::ResultBuffer<ffi::F32> out,
                        ffi::ResultBuffer<ffi::F32> scratch) {
  const auto xd = x.dimensions(), ud = u.dimensions(), od = out->dimensions();
  if (xd.size() != 4 || ud.size() != 4 || od.size() != 4 || xd[0] != od[0] ||
      ud[2] != xd[3] || ud[3] % kLanes != 0 || od[3] > ud[3] || od[3] <= ud[3] - kLanes ||
      ud[0] < 2 || od[1] < 1 || od[2] < 1 || pad_h < 0 || pad_w < 0 ||
      bt.element_count() != ud[0] * ud[0] || at.element_count() != 2 * ud[0] ||
      scratch->element_count() != xd[0] * ((od[1] + 1) / 2 * 2 + ud[0] - 2) * xd[2] * xd[3]) {
    return ffi::Error::InvalidArgument("winograd conv: shapes do not match");
  }
  if (out->element_count() == 0) return ffi::Error::Success();
  const Dims d{xd[0], xd[1], xd[2], xd[3], od[1], od[2], od[3],
               ud[3], ud[0] - 1, ud[1], pad_h, pad_w, 1};
  const int fv = static_cast<int>(std::min<int64_t>(kBlockVectors, d.wf / kLanes));
  const int tile = std::min(kMaxTile, kAccumulators / fv);
  const int64_t tiles = (d.n + tile - 1) / tile, pairs = (d.oh + 1) / 2;
  const int64_t padded = 2 * pairs + d.kh - 1;  // rows: pair q reads 2q .. 2q + kh
  const float* in = x.typed_data();
  const float* uw = u.typed_data();
  const float* btm = bt.typed_data();
  const float* atm = at.typed_data();
  float* o = out->typed_data();
  float* packed = scratch->typed_data();
  const int64_t image = padded * d.w * d.c, a = d.kh + 1;  // a padded image's floats
  ParallelFor(pool, tiles, [=](int64_t t) {
    PackPaddedRows(in, packed + t * tile * image, d, t * tile,
                   std::min<int64_t>(tile, d.n - t * tile), padded);
  });
  ParallelFor(pool, tiles * pairs, [=](int64_t k) {
    const int64_t t = k / pairs, q = k % pairs;
    const int64_t n0 = t * tile, p = std::min<int64_t>(tile, d.n - n0);
    const int64_t row = d.w * d.c * p;  // floats in one packed row of this tile
    thread_local std::vector<float> rows;  // this pair's kh + 1 transformed rows
    rows.resize(a * row);
    const float* src = packed + n0 * image + 2 * q * row;
    if (a == 4) {
      TransformRows<4>(src, row, btm, rows.data());
    } else if (a == 6) {
      TransformRows<6>(src, row, btm, rows.data());
    } else if (a == 8) {
      TransformRows<8>(src, row, btm, rows.data());
    } else {
      TransformRowsFrom(0, src, row, a, btm, rows.data());
    }
    float* on = o + n0 * d.oh * d.ow * d.f;
    for (int64_t f0 = 0; f0 < d.wf; f0 += kBlockVectors * kLanes) {
      const int v = static_cast<int>(std::min<int64_t>(kBlockVectors, (d.wf - f0) / kLanes));
      const WinogradFn pixel = Pick<WinogradFamily>(static_cast<int>(p), v);
      for (int64_t xx = 0; xx < d.ow; ++xx) pixel(rows.data(), uw, atm, on, d, 2 * q, xx, f0);
    }
  });
  return ffi::Error::Success();
}

}  // namespace
}  // namespace digitjax

XLA_FFI_DEFINE_HANDLER_SYMBOL(DigitjaxDirectConv, digitjax::DirectConv,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("pad_h")
                                  .Attr<int64_t>("pad_w")
                                  .Attr<int64_t>("stride")
                                  .Ret<ffi::Buffer<ffi::F32>>()    // out
                                  .Ret<ffi::Buffer<ffi::F32>>());  // scratch, as large as x

XLA_FFI_DEFINE_HANDLER_SYMBOL(DigitjaxWinogradConv, digitjax::WinogradConv,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()    // x
                                  .Arg<ffi::Buffer<ffi::F32>>()    // u
                                  .Arg<ffi::Buffer<ffi::F32>>()    // bt
                                  .Arg<ffi::Buffer<ffi::F32>>()    // at
                                  .Attr<int64_t>("pad_h")
                                  .Attr<int64_t>("pad_w")
                                  .Ret<ffi::Buffer<ffi::F32>>()    // out
                                  .Ret<ffi::Buffer<ffi::F32>>());  // scratch: padded rows
