// oneDNN's fused RNN primitives (LSTM, linear-before-reset GRU, vanilla RNN) as
// XLA FFI custom calls: a training-mode forward that keeps oneDNN's workspace, and
// the backward that consumes it. Built by rnnjax/kernels/onednn.py with the
// machine's C++ compiler the first time it is needed.
//
// Layouts (all float32, row-major, one layer, one direction):
//   x   [T, B, D]  (oneDNN tnc)          wx [D, G*H], wh [H, G*H] (ldigo: gate-major columns)
//   h0, c0, hT, cT [B, H] (ldnc)        b  [Gb*H] (ldgo)            hs [T, B, H] (tnc)
// with G = 4 (LSTM: i, f, g, o), 3 (GRU: u, r, o) or 1 (vanilla) and Gb = G, except the
// linear-before-reset GRU's 4 biases (u, r, o and the one inside r * (W_ho h + b)).
// The caller (onednn.py) maps rnnjax's own gate order onto these.
// Cells without a cell state (GRU, vanilla) take and give [0]-sized c0/cT/dc0/dcT.

#include <omp.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;

namespace {

enum Kind : int64_t { kTanh = 0, kRelu = 1, kLogistic = 2, kLstm = 3, kGru = 4 };

struct Shape {
  int64_t kind, T, B, D, H, reverse, threads;
  bool operator<(const Shape& o) const {
    return std::tie(kind, T, B, D, H, reverse, threads) <
           std::tie(o.kind, o.T, o.B, o.D, o.H, o.reverse, o.threads);
  }
  int64_t gates() const { return kind == kLstm ? 4 : kind == kGru ? 3 : 1; }
  int64_t bias_gates() const { return kind == kLstm || kind == kGru ? 4 : 1; }
  bool has_c() const { return kind == kLstm; }
};

dnnl::engine& engine() {
  static dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  return eng;
}

// The memory descriptors of the caller's buffers.
struct UserDescs {
  memory::desc x, h0, c0, wx, wh, b, hs, hT, cT;
  explicit UserDescs(const Shape& s) {
    const auto f32 = memory::data_type::f32;
    x = memory::desc({s.T, s.B, s.D}, f32, tag::tnc);
    h0 = memory::desc({1, 1, s.B, s.H}, f32, tag::ldnc);
    c0 = s.has_c() ? h0 : memory::desc();
    wx = memory::desc({1, 1, s.D, s.gates(), s.H}, f32, tag::ldigo);
    wh = memory::desc({1, 1, s.H, s.gates(), s.H}, f32, tag::ldigo);
    b = memory::desc({1, 1, s.bias_gates(), s.H}, f32, tag::ldgo);
    hs = memory::desc({s.T, s.B, s.H}, f32, tag::tnc);
    hT = h0;
    cT = c0;
  }
};

memory::desc any_like(const memory::desc& d) {
  return memory::desc(d.get_dims(), d.get_data_type(), tag::any);
}

dnnl::rnn_direction direction(const Shape& s) {
  return s.reverse ? dnnl::rnn_direction::unidirectional_right2left
                   : dnnl::rnn_direction::unidirectional_left2right;
}

dnnl::algorithm activation(const Shape& s) {
  switch (s.kind) {
    case kRelu: return dnnl::algorithm::eltwise_relu;
    case kLogistic: return dnnl::algorithm::eltwise_logistic;
    default: return dnnl::algorithm::eltwise_tanh;
  }
}

// Forward (training) and backward primitive descriptors of one shape. The weights of
// the primitives are format "any": each primitive picks its layout (the backward wants
// them transposed) and the caller's ldigo weights are reordered into it.
struct Prims {
  dnnl::primitive_desc fwd_pd, bwd_pd;
  dnnl::primitive fwd, bwd;
};

template <typename Fwd, typename Bwd, typename... Extra>
void make(Prims& p, const Shape& s, const UserDescs& u, bool backward, Extra... extra) {
  const auto train = dnnl::prop_kind::forward_training;
  const auto dir = direction(s);
  // The caller passes the scratchpad: oneDNN's own (library mode) is per thread and sized
  // in the thread that made the primitive, while XLA runs it on any of its threads.
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  typename Fwd::primitive_desc fpd;
  if constexpr (std::is_same_v<Fwd, dnnl::lstm_forward>) {
    fpd = typename Fwd::primitive_desc(engine(), train, dir, u.x, u.h0, u.c0, any_like(u.wx),
                                       any_like(u.wh), u.b, u.hs, u.hT, u.cT, attr);
  } else {
    fpd = typename Fwd::primitive_desc(engine(), train, extra..., dir, u.x, u.h0,
                                       any_like(u.wx), any_like(u.wh), u.b, u.hs, u.hT, attr);
  }
  p.fwd_pd = fpd;
  p.fwd = dnnl::primitive(p.fwd_pd);
  if (!backward) return;
  const auto bw = dnnl::prop_kind::backward;
  typename Bwd::primitive_desc bpd;
  if constexpr (std::is_same_v<Fwd, dnnl::lstm_forward>) {
    bpd = typename Bwd::primitive_desc(
        engine(), bw, dir, u.x, u.h0, u.c0, any_like(u.wx), any_like(u.wh), u.b, u.hs, u.hT,
        u.cT, u.x, u.h0, u.c0, any_like(u.wx), any_like(u.wh), u.b, u.hs, u.hT, u.cT, fpd,
        attr);
  } else {
    bpd = typename Bwd::primitive_desc(engine(), bw, extra..., dir, u.x, u.h0, any_like(u.wx),
                                       any_like(u.wh), u.b, u.hs, u.hT, u.x, u.h0,
                                       any_like(u.wx), any_like(u.wh), u.b, u.hs, u.hT, fpd,
                                       attr);
  }
  p.bwd_pd = bpd;
  p.bwd = dnnl::primitive(p.bwd_pd);
}

// Primitives are made once per shape and thread count (oneDNN runs a primitive with
// the thread count it was made for) and kept for the life of the process.
const Prims& prims(const Shape& s, bool backward) {
  static std::mutex mu;
  static std::map<std::pair<Shape, bool>, std::unique_ptr<Prims>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto& slot = cache[{s, backward}];
  if (!slot) {
    auto p = std::make_unique<Prims>();
    UserDescs u(s);
    if (s.kind == kLstm) {
      make<dnnl::lstm_forward, dnnl::lstm_backward>(*p, s, u, backward);
    } else if (s.kind == kGru) {
      make<dnnl::lbr_gru_forward, dnnl::lbr_gru_backward>(*p, s, u, backward);
    } else {
      make<dnnl::vanilla_rnn_forward, dnnl::vanilla_rnn_backward>(*p, s, u, backward,
                                                                  activation(s));
    }
    slot = std::move(p);
  }
  return *slot;
}

memory wrap(const memory::desc& d, const void* ptr) {
  return memory(d, engine(), const_cast<void*>(ptr));
}

// The caller's buffer if the primitive takes that layout, else a reordered copy.
memory as(memory user, const memory::desc& wanted, dnnl::stream& st) {
  if (user.get_desc() == wanted) return user;
  memory m(wanted, engine());
  dnnl::reorder(user, m).execute(st, user, m);
  return m;
}

// A per-thread scratchpad buffer that grows to the largest request and is reused.
memory scratchpad(const dnnl::primitive_desc& pd) {
  struct Free {
    void operator()(void* p) const { std::free(p); }
  };
  thread_local std::unique_ptr<void, Free> buf;
  thread_local size_t capacity = 0;
  const memory::desc d = pd.scratchpad_desc();
  const size_t n = d.get_size();
  if (n > capacity) {
    buf.reset(std::aligned_alloc(4096, (n + 4095) / 4096 * 4096));
    if (!buf) throw dnnl::error(dnnl_out_of_memory, "scratchpad allocation failed");
    capacity = n;
  }
  return memory(d, engine(), buf.get());
}

void set_threads(int64_t threads) {
  if (threads > 0) omp_set_num_threads(static_cast<int>(threads));
}

Shape shape_of(int64_t kind, const ffi::Buffer<ffi::F32>& x, const ffi::Buffer<ffi::F32>& wh,
               int64_t reverse, int64_t threads) {
  auto xd = x.dimensions();
  auto whd = wh.dimensions();
  return Shape{kind, xd[0], xd[1], xd[2], whd[0], reverse,
               threads > 0 ? threads : int64_t(omp_get_max_threads())};
}

ffi::Error check_kind(int64_t kind) {
  if (kind < kTanh || kind > kGru)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "rnnjax onednn: unknown cell kind");
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> wx, ffi::Buffer<ffi::F32> wh,
                   ffi::Buffer<ffi::F32> b, ffi::Buffer<ffi::F32> h0, ffi::Buffer<ffi::F32> c0,
                   ffi::ResultBuffer<ffi::F32> hs, ffi::ResultBuffer<ffi::F32> hT,
                   ffi::ResultBuffer<ffi::F32> cT, ffi::ResultBuffer<ffi::U8> ws, int64_t kind,
                   int64_t reverse, int64_t threads) {
  if (auto err = check_kind(kind); !err.success()) return err;
  try {
    set_threads(threads);
    const Shape s = shape_of(kind, x, wh, reverse, threads);
    const Prims& p = prims(s, false);
    const UserDescs u(s);
    if (p.fwd_pd.workspace_desc().get_size() != ws->size_bytes())
      return ffi::Error(ffi::ErrorCode::kInternal, "rnnjax onednn: workspace size mismatch");
    dnnl::stream st(engine());
    std::unordered_map<int, memory> args = {
        {DNNL_ARG_SRC_LAYER, wrap(u.x, x.typed_data())},
        {DNNL_ARG_SRC_ITER, wrap(u.h0, h0.typed_data())},
        {DNNL_ARG_WEIGHTS_LAYER,
         as(wrap(u.wx, wx.typed_data()),
            p.fwd_pd.query_md(dnnl::query::exec_arg_md, DNNL_ARG_WEIGHTS_LAYER), st)},
        {DNNL_ARG_WEIGHTS_ITER,
         as(wrap(u.wh, wh.typed_data()),
            p.fwd_pd.query_md(dnnl::query::exec_arg_md, DNNL_ARG_WEIGHTS_ITER), st)},
        {DNNL_ARG_BIAS, wrap(u.b, b.typed_data())},
        {DNNL_ARG_DST_LAYER, wrap(u.hs, hs->typed_data())},
        {DNNL_ARG_DST_ITER, wrap(u.hT, hT->typed_data())},
        {DNNL_ARG_WORKSPACE, wrap(p.fwd_pd.workspace_desc(), ws->untyped_data())},
        {DNNL_ARG_SCRATCHPAD, scratchpad(p.fwd_pd)},
    };
    if (s.has_c()) {
      args[DNNL_ARG_SRC_ITER_C] = wrap(u.c0, c0.typed_data());
      args[DNNL_ARG_DST_ITER_C] = wrap(u.cT, cT->typed_data());
    }
    p.fwd.execute(st, args);
    st.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("rnnjax onednn forward: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> wx, ffi::Buffer<ffi::F32> wh,
                    ffi::Buffer<ffi::F32> b, ffi::Buffer<ffi::F32> h0, ffi::Buffer<ffi::F32> c0,
                    ffi::Buffer<ffi::F32> hs, ffi::Buffer<ffi::F32> hT, ffi::Buffer<ffi::F32> cT,
                    ffi::Buffer<ffi::U8> ws, ffi::Buffer<ffi::F32> dhs,
                    ffi::Buffer<ffi::F32> dhT, ffi::Buffer<ffi::F32> dcT,
                    ffi::ResultBuffer<ffi::F32> dx, ffi::ResultBuffer<ffi::F32> dwx,
                    ffi::ResultBuffer<ffi::F32> dwh, ffi::ResultBuffer<ffi::F32> db,
                    ffi::ResultBuffer<ffi::F32> dh0, ffi::ResultBuffer<ffi::F32> dc0,
                    int64_t kind, int64_t reverse, int64_t threads) {
  if (auto err = check_kind(kind); !err.success()) return err;
  try {
    set_threads(threads);
    const Shape s = shape_of(kind, x, wh, reverse, threads);
    const Prims& p = prims(s, true);
    const UserDescs u(s);
    if (p.bwd_pd.workspace_desc().get_size() != ws.size_bytes())
      return ffi::Error(ffi::ErrorCode::kInternal, "rnnjax onednn: workspace size mismatch");
    dnnl::stream st(engine());
    auto md = [&](int arg) { return p.bwd_pd.query_md(dnnl::query::exec_arg_md, arg); };
    // oneDNN accumulates into the weight and bias gradients: start them at zero, in the
    // primitive's layout, and reorder the weight gradients to ldigo afterwards.
    memory dwx_user = wrap(u.wx, dwx->typed_data());
    memory dwh_user = wrap(u.wh, dwh->typed_data());
    memory dwx_p = md(DNNL_ARG_DIFF_WEIGHTS_LAYER) == u.wx
                       ? dwx_user : memory(md(DNNL_ARG_DIFF_WEIGHTS_LAYER), engine());
    memory dwh_p = md(DNNL_ARG_DIFF_WEIGHTS_ITER) == u.wh
                       ? dwh_user : memory(md(DNNL_ARG_DIFF_WEIGHTS_ITER), engine());
    std::memset(dwx_p.get_data_handle(), 0, dwx_p.get_desc().get_size());
    std::memset(dwh_p.get_data_handle(), 0, dwh_p.get_desc().get_size());
    std::memset(db->untyped_data(), 0, db->size_bytes());
    std::unordered_map<int, memory> args = {
        {DNNL_ARG_SRC_LAYER, wrap(u.x, x.typed_data())},
        {DNNL_ARG_SRC_ITER, wrap(u.h0, h0.typed_data())},
        {DNNL_ARG_WEIGHTS_LAYER, as(wrap(u.wx, wx.typed_data()), md(DNNL_ARG_WEIGHTS_LAYER), st)},
        {DNNL_ARG_WEIGHTS_ITER, as(wrap(u.wh, wh.typed_data()), md(DNNL_ARG_WEIGHTS_ITER), st)},
        {DNNL_ARG_BIAS, wrap(u.b, b.typed_data())},
        {DNNL_ARG_DST_LAYER, wrap(u.hs, hs.typed_data())},
        {DNNL_ARG_DST_ITER, wrap(u.hT, hT.typed_data())},
        {DNNL_ARG_WORKSPACE, wrap(p.bwd_pd.workspace_desc(), ws.untyped_data())},
        {DNNL_ARG_DIFF_DST_LAYER, wrap(u.hs, dhs.typed_data())},
        {DNNL_ARG_DIFF_DST_ITER, wrap(u.hT, dhT.typed_data())},
        {DNNL_ARG_DIFF_SRC_LAYER, wrap(u.x, dx->typed_data())},
        {DNNL_ARG_DIFF_SRC_ITER, wrap(u.h0, dh0->typed_data())},
        {DNNL_ARG_DIFF_WEIGHTS_LAYER, dwx_p},
        {DNNL_ARG_DIFF_WEIGHTS_ITER, dwh_p},
        {DNNL_ARG_DIFF_BIAS, wrap(u.b, db->typed_data())},
        {DNNL_ARG_SCRATCHPAD, scratchpad(p.bwd_pd)},
    };
    if (s.has_c()) {
      args[DNNL_ARG_SRC_ITER_C] = wrap(u.c0, c0.typed_data());
      args[DNNL_ARG_DST_ITER_C] = wrap(u.cT, cT.typed_data());
      args[DNNL_ARG_DIFF_DST_ITER_C] = wrap(u.cT, dcT.typed_data());
      args[DNNL_ARG_DIFF_SRC_ITER_C] = wrap(u.c0, dc0->typed_data());
    }
    p.bwd.execute(st, args);
    if (dwx_p != dwx_user) dnnl::reorder(dwx_p, dwx_user).execute(st, dwx_p, dwx_user);
    if (dwh_p != dwh_user) dnnl::reorder(dwh_p, dwh_user).execute(st, dwh_p, dwh_user);
    st.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("rnnjax onednn backward: ") + e.what());
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(RnnjaxOnednnForward, Forward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // wx
                                  .Arg<ffi::Buffer<ffi::F32>>()  // wh
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h0
                                  .Arg<ffi::Buffer<ffi::F32>>()  // c0
                                  .Ret<ffi::Buffer<ffi::F32>>()  // hs
                                  .Ret<ffi::Buffer<ffi::F32>>()  // hT
                                  .Ret<ffi::Buffer<ffi::F32>>()  // cT
                                  .Ret<ffi::Buffer<ffi::U8>>()   // workspace
                                  .Attr<int64_t>("kind")
                                  .Attr<int64_t>("reverse")
                                  .Attr<int64_t>("threads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(RnnjaxOnednnBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // wx
                                  .Arg<ffi::Buffer<ffi::F32>>()  // wh
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h0
                                  .Arg<ffi::Buffer<ffi::F32>>()  // c0
                                  .Arg<ffi::Buffer<ffi::F32>>()  // hs
                                  .Arg<ffi::Buffer<ffi::F32>>()  // hT
                                  .Arg<ffi::Buffer<ffi::F32>>()  // cT
                                  .Arg<ffi::Buffer<ffi::U8>>()   // workspace
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dhs
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dhT
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dcT
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dx
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dwx
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dwh
                                  .Ret<ffi::Buffer<ffi::F32>>()  // db
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dh0
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dc0
                                  .Attr<int64_t>("kind")
                                  .Attr<int64_t>("reverse")
                                  .Attr<int64_t>("threads"));

// The workspace size in bytes for a shape (the forward's output buffer is sized from
// it at trace time), or -1 if oneDNN has no primitive for it.
extern "C" int64_t rnnjax_onednn_workspace_bytes(int64_t kind, int64_t T, int64_t B, int64_t D,
                                                 int64_t H, int64_t reverse, int64_t threads) {
  if (kind < kTanh || kind > kGru) return -1;
  try {
    set_threads(threads);
    const Shape s{kind, T, B, D, H, reverse,
                  threads > 0 ? threads : int64_t(omp_get_max_threads())};
    return int64_t(prims(s, false).fwd_pd.workspace_desc().get_size());
  } catch (const dnnl::error&) {
    return -1;
  }
}
