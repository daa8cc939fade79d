// lenet-edge fastconv: a Paddle custom operator that trains a 2-D convolution with oneDNN.
//
// Paddle 3.3's dygraph CPU conv kernel is im2col + one small GEMM per image; its forward and
// backward were ~85 % of a training step (docs/performance.md). oneDNN, which the Paddle wheel
// already ships (paddle/libs/libdnnl.so.3), has JIT convolution kernels for the whole batch. This
// operator computes y = conv(x, w) + b (NCHW, OIHW weights, square stride and padding, no dilation,
// one group) and its gradients with oneDNN primitives, reordering to the layout oneDNN prefers and
// back. The math is the convolution's; the summation order is oneDNN's, so weights trained with it
// are not bitwise those of Paddle's kernel (the training record names the kernel used).
//
// Two operators: `fastconv` (gradients for x, w, b) and `fastconv_first` (w and b only, for a first
// layer whose input is data: no input gradient is computed). And `fastpool`: max pooling with
// Paddle's own arithmetic (bitwise its values and gradients) at a fraction of its per-call cost.
// Built by train/fastconv.py.
#include <cfloat>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "dnnl.hpp"
#include "paddle/extension.h"

namespace {
using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;

dnnl::engine& eng() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}

dnnl::stream& strm() {
  static dnnl::stream s(eng());
  return s;
}

struct Prims {
  dnnl::convolution_forward::primitive_desc fwd_pd;
  dnnl::convolution_forward fwd;
  dnnl::convolution_backward_data::primitive_desc bd_pd;
  dnnl::convolution_backward_data bd;
  dnnl::convolution_backward_weights::primitive_desc bw_pd;
  dnnl::convolution_backward_weights bw;
};

struct Shape {
  memory::dims x, w, y;
  int64_t stride, pad;
};

std::mutex cache_mutex;

Shape shape_of(const paddle::Tensor& x, const paddle::Tensor& w, int64_t stride, int64_t pad) {
  PD_CHECK(x.is_cpu() && w.is_cpu(), "fastconv: CPU tensors only");
  PD_CHECK(x.dtype() == paddle::DataType::FLOAT32 && w.dtype() == paddle::DataType::FLOAT32,
           "fastconv: float32 only");
  PD_CHECK(x.is_contiguous() && w.is_contiguous(), "fastconv: contiguous tensors only");
  auto xs = x.shape(), ws = w.shape();
  PD_CHECK(xs.size() == 4 && ws.size() == 4, "fastconv: x must be NCHW and w OIHW");
  PD_CHECK(xs[1] == ws[1], "fastconv: input channels ", xs[1], " but weights for ", ws[1]);
  PD_CHECK(ws[2] == ws[3], "fastconv: square kernels only");
  PD_CHECK(stride >= 1 && pad >= 0, "fastconv: stride >= 1 and padding >= 0");
  int64_t oh = (xs[2] + 2 * pad - ws[2]) / stride + 1, ow = (xs[3] + 2 * pad - ws[3]) / stride + 1;
  PD_CHECK(oh >= 1 && ow >= 1, "fastconv: kernel larger than the padded input");
  return {memory::dims(xs.begin(), xs.end()), memory::dims(ws.begin(), ws.end()),
          memory::dims{xs[0], ws[0], oh, ow}, stride, pad};
}

// One set of primitives per shape (a training run sees two: the batch and the last partial one).
Prims& prims(const Shape& s) {
  using Key = std::tuple<memory::dims, memory::dims, int64_t, int64_t>;
  static std::map<Key, Prims> cache;
  std::lock_guard<std::mutex> lock(cache_mutex);
  Key key{s.x, s.w, s.stride, s.pad};
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  // tag::any: oneDNN picks its blocked layouts (its JIT kernels); plain NCHW falls back to slow
  // reference code for a one-channel input.
  memory::desc src(s.x, dt::f32, tag::any), wei(s.w, dt::f32, tag::any), dst(s.y, dt::f32, tag::any);
  memory::desc bia({s.w[0]}, dt::f32, tag::x);
  memory::dims st{s.stride, s.stride}, pd{s.pad, s.pad};
  auto alg = dnnl::algorithm::convolution_direct;
  auto fwd_pd = dnnl::convolution_forward::primitive_desc(eng(), dnnl::prop_kind::forward_training, alg,
                                                          src, wei, bia, dst, st, pd, pd);
  auto bd_pd = dnnl::convolution_backward_data::primitive_desc(eng(), alg, src, wei, dst, st, pd, pd, fwd_pd);
  auto bw_pd =
      dnnl::convolution_backward_weights::primitive_desc(eng(), alg, src, wei, bia, dst, st, pd, pd, fwd_pd);
  Prims p{fwd_pd, dnnl::convolution_forward(fwd_pd), bd_pd, dnnl::convolution_backward_data(bd_pd),
          bw_pd,  dnnl::convolution_backward_weights(bw_pd)};
  return cache.emplace(key, std::move(p)).first->second;
}

// A user buffer in plain layout `t`, as the memory `want` describes (reordered into a new buffer
// when the layouts differ).
memory input(const memory::desc& want, const memory::dims& d, tag t, const float* p) {
  memory user(memory::desc(d, dt::f32, t), eng(), const_cast<float*>(p));
  if (want == user.get_desc()) return user;
  memory m(want, eng());
  dnnl::reorder(user, m).execute(strm(), user, m);
  return m;
}

// Memory for a result in layout `have`: the user's buffer when that is plain `t`, else a new one
// that `output_done` reorders into the user's buffer.
memory output(const memory::desc& have, const memory::dims& d, tag t, float* p) {
  if (have == memory::desc(d, dt::f32, t)) return memory(have, eng(), p);
  return memory(have, eng());
}

void output_done(memory& m, const memory::dims& d, tag t, float* p) {
  memory user(memory::desc(d, dt::f32, t), eng(), p);
  if (m.get_data_handle() == p) return;
  dnnl::reorder(m, user).execute(strm(), m, user);
}

paddle::Tensor empty(const memory::dims& d, const paddle::Tensor& like) {
  return paddle::empty(std::vector<int64_t>(d.begin(), d.end()), paddle::DataType::FLOAT32, like.place());
}

template <typename F>
auto guarded(F f) -> decltype(f()) {
  try {
    return f();
  } catch (const dnnl::error& e) {
    PD_THROW("fastconv: oneDNN error: ", e.what());
  }
}

std::vector<paddle::Tensor> Forward(const paddle::Tensor& x, const paddle::Tensor& w, const paddle::Tensor& b,
                                    int64_t stride, int64_t pad) {
  return guarded([&] {
    Shape s = shape_of(x, w, stride, pad);
    PD_CHECK(b.shape().size() == 1 && b.shape()[0] == s.w[0] && b.is_contiguous() &&
                 b.dtype() == paddle::DataType::FLOAT32,
             "fastconv: bias must be float32 [out channels]");
    Prims& p = prims(s);
    auto y = empty(s.y, x);
    memory ms = input(p.fwd_pd.src_desc(), s.x, tag::nchw, x.data<float>());
    memory mw = input(p.fwd_pd.weights_desc(), s.w, tag::oihw, w.data<float>());
    memory mb(p.fwd_pd.bias_desc(), eng(), const_cast<float*>(b.data<float>()));
    memory md = output(p.fwd_pd.dst_desc(), s.y, tag::nchw, y.data<float>());
    p.fwd.execute(strm(), {{DNNL_ARG_SRC, ms}, {DNNL_ARG_WEIGHTS, mw}, {DNNL_ARG_BIAS, mb}, {DNNL_ARG_DST, md}});
    output_done(md, s.y, tag::nchw, y.data<float>());
    strm().wait();
    return std::vector<paddle::Tensor>{y};
  });
}

// dW and db (and dx when asked) from x, w and dy.
std::vector<paddle::Tensor> Backward(const paddle::Tensor& x, const paddle::Tensor& w, const paddle::Tensor& dy,
                                     int64_t stride, int64_t pad, bool with_dx) {
  return guarded([&] {
    Shape s = shape_of(x, w, stride, pad);
    PD_CHECK(dy.is_contiguous() && std::vector<int64_t>(s.y.begin(), s.y.end()) == dy.shape(),
             "fastconv: output gradient of another shape");
    Prims& p = prims(s);
    std::vector<paddle::Tensor> out;
    memory mdy = input(p.bw_pd.diff_dst_desc(), s.y, tag::nchw, dy.data<float>());
    if (with_dx) {
      auto dx = empty(s.x, x);
      memory mdy_d = p.bd_pd.diff_dst_desc() == mdy.get_desc()
                         ? mdy
                         : input(p.bd_pd.diff_dst_desc(), s.y, tag::nchw, dy.data<float>());
      memory mw = input(p.bd_pd.weights_desc(), s.w, tag::oihw, w.data<float>());
      memory mdx = output(p.bd_pd.diff_src_desc(), s.x, tag::nchw, dx.data<float>());
      p.bd.execute(strm(), {{DNNL_ARG_DIFF_DST, mdy_d}, {DNNL_ARG_WEIGHTS, mw}, {DNNL_ARG_DIFF_SRC, mdx}});
      output_done(mdx, s.x, tag::nchw, dx.data<float>());
      out.push_back(dx);
    }
    auto dw = empty(s.w, x);
    auto db = empty(memory::dims{s.w[0]}, x);
    memory ms = input(p.bw_pd.src_desc(), s.x, tag::nchw, x.data<float>());
    memory mdw = output(p.bw_pd.diff_weights_desc(), s.w, tag::oihw, dw.data<float>());
    memory mdb(p.bw_pd.diff_bias_desc(), eng(), db.data<float>());
    p.bw.execute(strm(), {{DNNL_ARG_SRC, ms},
                          {DNNL_ARG_DIFF_DST, mdy},
                          {DNNL_ARG_DIFF_WEIGHTS, mdw},
                          {DNNL_ARG_DIFF_BIAS, mdb}});
    output_done(mdw, s.w, tag::oihw, dw.data<float>());
    strm().wait();
    out.push_back(dw);
    out.push_back(db);
    return out;
  });
}

// The weight and bias gradients of a one-channel, stride-1 convolution (a first layer on grey
// images) as a forward convolution: dW[o,0,u,v] = sum_n sum_ij dy[n,o,i,j] * x_padded[n,i+u,j+v]
// convolves the batch, taken as input channels ([1,N,H,W], same padding), with dy taken as weights
// ([OC,N,OH,OW], a strided view of dy). oneDNN's backward-weights kernel for one input channel is
// slow without AVX-512 (1.4-1.6 ms per LeNet conv1 step on its AVX2 kernels); this form took
// 1.38 against 2.58 ms for conv1's forward + backward there, but 1.9 against 1.2 ms with AVX-512,
// so it is used only below AVX-512 (a rule on the ISA oneDNN runs, so the choice, and with it the
// weights, is the same on every run of one machine).
bool one_channel_as_forward(const Shape& s) {
  static const bool below_avx512 = dnnl::get_effective_cpu_isa() < dnnl::cpu_isa::avx512_core;
  return below_avx512 && s.x[1] == 1 && s.stride == 1;
}

std::vector<paddle::Tensor> OneChannelWeights(const paddle::Tensor& x, const paddle::Tensor& dy, const Shape& s) {
  const int64_t n = s.x[0], h = s.x[2], w = s.x[3], oc = s.w[0], k = s.w[2], oh = s.y[2], ow = s.y[3];
  const memory::dims src_d{1, n, h, w}, wei_d{oc, n, oh, ow}, dst_d{1, oc, k, k};
  using Key = std::tuple<memory::dims, memory::dims, int64_t>;
  using Fwd = std::pair<dnnl::convolution_forward::primitive_desc, dnnl::convolution_forward>;
  static std::map<Key, Fwd> cache;
  Fwd* f;
  {
    std::lock_guard<std::mutex> lock(cache_mutex);
    Key key{s.x, s.w, s.pad};
    auto it = cache.find(key);
    if (it == cache.end()) {
      auto pd = dnnl::convolution_forward::primitive_desc(
          eng(), dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct,
          memory::desc(src_d, dt::f32, tag::any), memory::desc(wei_d, dt::f32, tag::any),
          memory::desc(dst_d, dt::f32, tag::any), {1, 1}, {s.pad, s.pad}, {s.pad, s.pad});
      it = cache.emplace(key, Fwd(pd, dnnl::convolution_forward(pd))).first;
    }
    f = &it->second;
  }
  memory ms = input(f->first.src_desc(), src_d, tag::nchw, x.data<float>());
  memory user_w(memory::desc(wei_d, dt::f32, memory::dims{oh * ow, oc * oh * ow, ow, 1}), eng(),
                const_cast<float*>(dy.data<float>()));
  memory mw(f->first.weights_desc(), eng());
  dnnl::reorder(user_w, mw).execute(strm(), user_w, mw);
  auto dw = empty(s.w, x);
  memory md = output(f->first.dst_desc(), dst_d, tag::nchw, dw.data<float>());
  f->second.execute(strm(), {{DNNL_ARG_SRC, ms}, {DNNL_ARG_WEIGHTS, mw}, {DNNL_ARG_DST, md}});
  output_done(md, dst_d, tag::nchw, dw.data<float>());
  strm().wait();
  auto db = empty(memory::dims{oc}, x);
  float* dbp = db.data<float>();
  const float* g = dy.data<float>();
  for (int64_t o = 0; o < oc; ++o) dbp[o] = 0.f;
  for (int64_t b = 0; b < n; ++b)
    for (int64_t o = 0; o < oc; ++o) {
      const float* src = g + (b * oc + o) * oh * ow;
      float acc = 0.f;
      for (int64_t t = 0; t < oh * ow; ++t) acc += src[t];
      dbp[o] += acc;
    }
  return {dw, db};
}

std::vector<paddle::Tensor> BackwardAll(const paddle::Tensor& x, const paddle::Tensor& w, const paddle::Tensor& dy,
                                        int64_t stride, int64_t pad) {
  return Backward(x, w, dy, stride, pad, true);
}

std::vector<paddle::Tensor> BackwardParams(const paddle::Tensor& x, const paddle::Tensor& w,
                                           const paddle::Tensor& dy, int64_t stride, int64_t pad) {
  return guarded([&] {
    Shape s = shape_of(x, w, stride, pad);
    if (!one_channel_as_forward(s)) return Backward(x, w, dy, stride, pad, false);
    PD_CHECK(dy.is_contiguous() && std::vector<int64_t>(s.y.begin(), s.y.end()) == dy.shape(),
             "fastconv: output gradient of another shape");
    return OneChannelWeights(x, dy, s);
  });
}

std::vector<std::vector<int64_t>> OutShape(const std::vector<int64_t>& x, const std::vector<int64_t>& w,
                                           const std::vector<int64_t>&, int64_t stride, int64_t pad) {
  return {{x[0], w[0], (x[2] + 2 * pad - w[2]) / stride + 1, (x[3] + 2 * pad - w[3]) / stride + 1}};
}

std::vector<paddle::DataType> OutType(const paddle::DataType& x, const paddle::DataType&, const paddle::DataType&) {
  return {x};
}
// Max pooling, square window k, stride s, no padding, floor mode: Paddle's CPU pool2d arithmetic
// (start from -FLT_MAX, keep the larger; the gradient goes to the first element of a window, in
// row-major order, that equals its maximum), without its per-call dispatch cost.
void pool_check(const paddle::Tensor& x, int64_t k, int64_t s) {
  PD_CHECK(x.is_cpu() && x.dtype() == paddle::DataType::FLOAT32 && x.is_contiguous(),
           "fastpool: contiguous float32 CPU tensors only");
  PD_CHECK(x.shape().size() == 4, "fastpool: x must be NCHW");
  PD_CHECK(k >= 1 && s >= 1 && x.shape()[2] >= k && x.shape()[3] >= k, "fastpool: window larger than the input");
}

std::vector<paddle::Tensor> PoolForward(const paddle::Tensor& x, int64_t k, int64_t s) {
  pool_check(x, k, s);
  auto d = x.shape();
  int64_t planes = d[0] * d[1], h = d[2], w = d[3], oh = (h - k) / s + 1, ow = (w - k) / s + 1;
  auto y = paddle::empty({d[0], d[1], oh, ow}, paddle::DataType::FLOAT32, x.place());
  const float* in = x.data<float>();
  float* out = y.data<float>();
  for (int64_t p = 0; p < planes; ++p, in += h * w)
    for (int64_t i = 0; i < oh; ++i)
      for (int64_t j = 0; j < ow; ++j) {
        float m = -FLT_MAX;
        for (int64_t u = 0; u < k; ++u)
          for (int64_t v = 0; v < k; ++v) {
            float e = in[(i * s + u) * w + j * s + v];
            m = m > e ? m : e;
          }
        *out++ = m;
      }
  return {y};
}

std::vector<paddle::Tensor> PoolBackward(const paddle::Tensor& x, const paddle::Tensor& y, const paddle::Tensor& dy,
                                         int64_t k, int64_t s) {
  pool_check(x, k, s);
  PD_CHECK(y.shape() == dy.shape() && y.is_contiguous() && dy.is_contiguous(), "fastpool: gradient of another shape");
  auto d = x.shape();
  int64_t planes = d[0] * d[1], h = d[2], w = d[3], oh = (h - k) / s + 1, ow = (w - k) / s + 1;
  auto dx = paddle::full(d, 0.0, paddle::DataType::FLOAT32, x.place());
  const float *in = x.data<float>(), *out = y.data<float>(), *g = dy.data<float>();
  float* gx = dx.data<float>();
  for (int64_t p = 0; p < planes; ++p, in += h * w, gx += h * w)
    for (int64_t i = 0; i < oh; ++i)
      for (int64_t j = 0; j < ow; ++j, ++out, ++g) {
        // the first element equal to the maximum, found backwards without branches (a branch per
        // element mispredicts on random data and cost as much as Paddle's whole kernel)
        int64_t first = (i * s) * w + j * s;
        for (int64_t u = k - 1; u >= 0; --u)
          for (int64_t v = k - 1; v >= 0; --v) {
            int64_t at = (i * s + u) * w + j * s + v;
            first = in[at] == *out ? at : first;
          }
        gx[first] += *g;
      }
  return {dx};
}

std::vector<std::vector<int64_t>> PoolShape(const std::vector<int64_t>& x, int64_t k, int64_t s) {
  return {{x[0], x[1], (x[2] - k) / s + 1, (x[3] - k) / s + 1}};
}

std::vector<paddle::DataType> PoolType(const paddle::DataType& x) { return {x}; }
}  // namespace

PD_BUILD_OP(fastpool)
    .Inputs({"X"})
    .Outputs({"Out"})
    .Attrs({"kernel: int64_t", "stride: int64_t"})
    .SetKernelFn(PD_KERNEL(PoolForward))
    .SetInferShapeFn(PD_INFER_SHAPE(PoolShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(PoolType));

PD_BUILD_GRAD_OP(fastpool)
    .Inputs({"X", "Out", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X")})
    .Attrs({"kernel: int64_t", "stride: int64_t"})
    .SetKernelFn(PD_KERNEL(PoolBackward));

PD_BUILD_OP(fastconv)
    .Inputs({"X", "W", "B"})
    .Outputs({"Out"})
    .Attrs({"stride: int64_t", "pad: int64_t"})
    .SetKernelFn(PD_KERNEL(Forward))
    .SetInferShapeFn(PD_INFER_SHAPE(OutShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(OutType));

PD_BUILD_GRAD_OP(fastconv)
    .Inputs({"X", "W", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X"), paddle::Grad("W"), paddle::Grad("B")})
    .Attrs({"stride: int64_t", "pad: int64_t"})
    .SetKernelFn(PD_KERNEL(BackwardAll));

PD_BUILD_OP(fastconv_first)
    .Inputs({"X", "W", "B"})
    .Outputs({"Out"})
    .Attrs({"stride: int64_t", "pad: int64_t"})
    .SetKernelFn(PD_KERNEL(Forward))
    .SetInferShapeFn(PD_INFER_SHAPE(OutShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(OutType));

PD_BUILD_GRAD_OP(fastconv_first)
    .Inputs({"X", "W", paddle::Grad("Out")})
    .Outputs({paddle::Grad("W"), paddle::Grad("B")})
    .Attrs({"stride: int64_t", "pad: int64_t"})
    .SetKernelFn(PD_KERNEL(BackwardParams));
