// flashmoe_science._C: the nanobind binding. It only converts DLPack arrays (any framework, any
// device) into MoeProblem/MoeArgs, checks that every array matches the problem exactly (so the
// raw-pointer API can never read or write out of bounds), calls the C++ host API, and turns a
// non-ok Status into a Python exception. No torch header: torch-specific glue lives in Python.
//
// Status -> exception: kInvalidArgument -> ValueError, kUnsupportedType -> TypeError,
// kNotSupported -> NotImplementedError, anything else -> RuntimeError.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "flashmoe/fused_moe.h"
#include "flashmoe/options.h"
#include "flashmoe/quantization.h"
#include "flashmoe/reference.h"
#include "flashmoe/routing.h"
#include "flashmoe/types.h"

namespace nb = nanobind;

namespace {

using flashmoe::DType;
using flashmoe::MoeArgs;
using flashmoe::MoeProblem;
using flashmoe::Status;
using flashmoe::StatusCode;

using InArray = nb::ndarray<nb::ro>;  // read-only view of any dtype/device
using OutArray = nb::ndarray<>;       // writable view of any dtype/device
using OptIn = std::optional<InArray>;
using OptOut = std::optional<OutArray>;

// DLPack device types (dlpack.h).
constexpr int kDLCPU = 1;
constexpr int kDLCUDA = 2;

[[noreturn]] void raise(PyObject* type, std::string const& message) {
  PyErr_SetString(type, message.c_str());
  throw nb::python_error();
}

[[noreturn]] void raise_status(Status const& s) {
  switch (s.code()) {
    case StatusCode::kInvalidArgument:
      raise(PyExc_ValueError, s.message());
    case StatusCode::kUnsupportedType:
      raise(PyExc_TypeError, s.message());
    case StatusCode::kNotSupported:
      raise(PyExc_NotImplementedError, s.message());
    default:
      raise(PyExc_RuntimeError, s.message());
  }
}

void check_ok(Status const& s) {
  if (!s.ok()) raise_status(s);
}

// ---- problem dict -> MoeProblem -------------------------------------------------------------

std::string dtype_list() {
  return "'float32', 'float64', 'float16', 'bfloat16', 'float8_e4m3fn', 'int32', 'int64'";
}

DType parse_dtype_name(std::string const& key, std::string const& name) {
  for (DType t : {DType::kFloat32, DType::kFloat64, DType::kFloat16, DType::kBFloat16,
                  DType::kFloat8E4M3, DType::kInt32, DType::kInt64}) {
    if (name == flashmoe::dtype_name(t)) return t;
  }
  raise(PyExc_ValueError,
        "problem['" + key + "'] must be one of " + dtype_list() + ", got '" + name + "'");
}

template <typename Enum>
Enum parse_choice(std::string const& key, std::string const& value,
                  std::vector<std::pair<char const*, Enum>> const& choices) {
  std::string accepted;
  for (auto const& [name, e] : choices) {
    if (value == name) return e;
    accepted += (accepted.empty() ? "'" : ", '") + std::string(name) + "'";
  }
  raise(PyExc_ValueError, key + " must be one of " + accepted + "; got '" + value + "'");
}

flashmoe::WeightScale parse_weight_scale(std::string const& key, std::string const& value) {
  return parse_choice<flashmoe::WeightScale>(key, value,
                                             {{"none", flashmoe::WeightScale::kNone},
                                              {"channel", flashmoe::WeightScale::kChannel},
                                              {"block128", flashmoe::WeightScale::kBlock128}});
}

// Fills a MoeProblem from a dict of plain values. Keys are the MoeProblem / RoutingOptions field
// names; strings for enums; absent keys keep the C++ defaults; unknown keys are an error (a typo
// must not silently fall back to a default).
MoeProblem parse_problem(nb::dict const& d) {
  MoeProblem p;
  for (auto [k, v] : d) {
    std::string const key = nb::cast<std::string>(k);
    try {
      if (key == "num_tokens")
        p.num_tokens = nb::cast<int64_t>(v);
      else if (key == "hidden")
        p.hidden = nb::cast<int64_t>(v);
      else if (key == "num_experts")
        p.num_experts = nb::cast<int64_t>(v);
      else if (key == "num_local_experts")
        p.num_local_experts = nb::cast<int64_t>(v);
      else if (key == "out_dim")
        p.out_dim = nb::cast<int64_t>(v);
      else if (key == "inter_dim")
        p.inter_dim = nb::cast<int64_t>(v);
      else if (key == "kind")
        p.kind =
            parse_choice<flashmoe::ExpertKind>("kind", nb::cast<std::string>(v),
                                               {{"linear", flashmoe::ExpertKind::kLinear},
                                                {"gated_ffn", flashmoe::ExpertKind::kGatedFFN}});
      else if (key == "activation")
        p.activation = parse_choice<flashmoe::Activation>(
            "activation", nb::cast<std::string>(v),
            {{"silu", flashmoe::Activation::kSilu}, {"gelu", flashmoe::Activation::kGelu}});
      else if (key == "layout")
        p.layout =
            parse_choice<flashmoe::WeightLayout>("layout", nb::cast<std::string>(v),
                                                 {{"in_out", flashmoe::WeightLayout::kInOut},
                                                  {"out_in", flashmoe::WeightLayout::kOutIn}});
      else if (key == "precision")
        p.precision = parse_choice<flashmoe::Precision>("precision", nb::cast<std::string>(v),
                                                        {{"auto", flashmoe::Precision::kAuto},
                                                         {"bf16", flashmoe::Precision::kBF16},
                                                         {"fp8", flashmoe::Precision::kFP8}});
      else if (key == "top_k")
        p.routing.top_k = nb::cast<int>(v);
      else if (key == "scoring")
        p.routing.scoring =
            parse_choice<flashmoe::Scoring>("scoring", nb::cast<std::string>(v),
                                            {{"softmax", flashmoe::Scoring::kSoftmax},
                                             {"sigmoid", flashmoe::Scoring::kSigmoid},
                                             {"none", flashmoe::Scoring::kNone}});
      else if (key == "renormalize")
        p.routing.renormalize = nb::cast<bool>(v);
      else if (key == "temperature")
        p.routing.temperature = nb::cast<double>(v);
      else if (key == "n_group")
        p.routing.n_group = nb::cast<int>(v);
      else if (key == "topk_group")
        p.routing.topk_group = nb::cast<int>(v);
      else if (key == "routed_scaling_factor")
        p.routing.routed_scaling_factor = nb::cast<double>(v);
      else if (key == "capacity_factor")
        p.routing.capacity_factor = nb::cast<double>(v);
      else if (key == "overflow")
        p.routing.overflow = parse_choice<flashmoe::Overflow>(
            "overflow", nb::cast<std::string>(v),
            {{"drop", flashmoe::Overflow::kDrop}, {"reroute", flashmoe::Overflow::kReroute}});
      else if (key == "token_dtype")
        p.token_dtype = parse_dtype_name(key, nb::cast<std::string>(v));
      else if (key == "weight_dtype")
        p.weight_dtype = parse_dtype_name(key, nb::cast<std::string>(v));
      else if (key == "score_dtype")
        p.score_dtype = parse_dtype_name(key, nb::cast<std::string>(v));
      else if (key == "prerouted")
        p.prerouted = nb::cast<bool>(v);
      else if (key == "has_correction_bias")
        p.has_correction_bias = nb::cast<bool>(v);
      else if (key == "has_expert_map")
        p.has_expert_map = nb::cast<bool>(v);
      else if (key == "weights_prepared")
        p.weights_prepared = nb::cast<bool>(v);
      else if (key == "weight_scale")
        p.weight_scale = parse_weight_scale("weight_scale", nb::cast<std::string>(v));
      else if (key == "deterministic")
        p.deterministic = nb::cast<bool>(v);
      else
        raise(PyExc_ValueError, "problem has an unknown key '" + key + "'");
    } catch (nb::cast_error const&) {
      raise(PyExc_TypeError, "problem['" + key + "'] has the wrong type (" +
                                 nb::cast<std::string>(nb::str(v.type())) + ")");
    }
  }
  return p;
}

// ---- arrays ---------------------------------------------------------------------------------

std::optional<DType> dlpack_to_dtype(nb::dlpack::dtype dt) {
  if (dt.lanes != 1) return std::nullopt;
  using Code = nb::dlpack::dtype_code;
  switch (static_cast<Code>(dt.code)) {
    case Code::Float:
      if (dt.bits == 16) return DType::kFloat16;
      if (dt.bits == 32) return DType::kFloat32;
      if (dt.bits == 64) return DType::kFloat64;
      break;
    case Code::Bfloat:
      if (dt.bits == 16) return DType::kBFloat16;
      break;
    case Code::Int:
      if (dt.bits == 32) return DType::kInt32;
      if (dt.bits == 64) return DType::kInt64;
      break;
    case Code::Float8_E4M3FN:
      if (dt.bits == 8) return DType::kFloat8E4M3;
      break;
    default:
      break;
  }
  return std::nullopt;
}

bool is_uint8(nb::dlpack::dtype dt) {
  return dt.lanes == 1 && dt.bits == 8 &&
         static_cast<nb::dlpack::dtype_code>(dt.code) == nb::dlpack::dtype_code::UInt;
}

std::string dlpack_dtype_str(nb::dlpack::dtype dt) {
  return "DLPack(code=" + std::to_string(dt.code) + ", bits=" + std::to_string(dt.bits) +
         ", lanes=" + std::to_string(dt.lanes) + ")";
}

template <typename Array>
std::string shape_str(Array const& a) {
  std::string s = "[";
  for (size_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + "]";
}

std::string shape_str(std::vector<int64_t> const& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// Tracks the one device all arrays of a call must share.
struct DeviceCheck {
  int type = 0;
  int id = 0;
  std::string first;

  template <typename Array>
  void add(char const* name, Array const& a) {
    int const t = a.device_type(), i = a.device_id();
    if (t != kDLCPU && t != kDLCUDA) {
      raise(PyExc_ValueError, std::string(name) + " is on DLPack device type " + std::to_string(t) +
                                  "; only CPU and CUDA arrays are accepted");
    }
    if (first.empty()) {
      type = t, id = i, first = name;
    } else if (t != type || (t == kDLCUDA && i != id)) {
      raise(PyExc_ValueError, std::string("all arrays must be on one device: ") + first +
                                  " is on " + where(type, id) + " but " + name + " is on " +
                                  where(t, i));
    }
  }
  static std::string where(int t, int i) {
    return t == kDLCPU ? std::string("cpu") : "cuda:" + std::to_string(i);
  }
};

// Checks dtype, exact shape and C-contiguity (strides in elements; size-1 dims are free, as are
// arrays with no element) and returns the data pointer (null for an empty array).
template <typename Array>
auto checked_data(char const* name, Array const& a, std::vector<DType> const& dtypes,
                  std::vector<int64_t> const& shape, DeviceCheck* dev) {
  dev->add(name, a);
  std::optional<DType> dt = dlpack_to_dtype(a.dtype());
  if (!dt && is_uint8(a.dtype())) {
    // uint8 arrays carry E4M3 bytes (prepared FP8 weights; torch.float8_e4m3fn viewed as uint8).
    for (DType t : dtypes)
      if (t == DType::kFloat8E4M3) dt = DType::kFloat8E4M3;
  }
  bool dtype_ok = false;
  for (DType t : dtypes) dtype_ok |= dt && *dt == t;
  if (!dtype_ok) {
    std::string accepted;
    for (DType t : dtypes) accepted += (accepted.empty() ? "" : ", ") + std::string(dtype_name(t));
    raise(PyExc_TypeError, std::string(name) + " must have dtype " + accepted + ", got " +
                               (dt ? dtype_name(*dt) : dlpack_dtype_str(a.dtype())));
  }
  bool shape_ok = a.ndim() == shape.size();
  for (size_t i = 0; shape_ok && i < shape.size(); ++i)
    shape_ok = static_cast<int64_t>(a.shape(i)) == shape[i];
  if (!shape_ok) {
    raise(PyExc_ValueError,
          std::string(name) + " must have shape " + shape_str(shape) + ", got " + shape_str(a));
  }
  int64_t expected = 1;
  bool const empty = a.size() == 0;
  for (size_t i = a.ndim(); !empty && i-- > 0;) {
    if (a.shape(i) != 1 && a.stride(i) != expected) {
      raise(PyExc_ValueError, std::string(name) + " must be C-contiguous (row-major, dense)");
    }
    expected *= static_cast<int64_t>(a.shape(i));
  }
  return empty ? nullptr : a.data();
}

template <typename T, typename Array>
T const* in_ptr(char const* name, std::optional<Array> const& a, std::vector<DType> const& dtypes,
                std::vector<int64_t> const& shape, DeviceCheck* dev) {
  if (!a) return nullptr;
  return static_cast<T const*>(checked_data(name, *a, dtypes, shape, dev));
}

template <typename T>
T* out_ptr(char const* name, OptOut const& a, DType dtype, std::vector<int64_t> const& shape,
           DeviceCheck* dev) {
  if (!a) return nullptr;
  return static_cast<T*>(checked_data(name, *a, {dtype}, shape, dev));
}

DType array_dtype(char const* name, InArray const& a) {
  std::optional<DType> dt = dlpack_to_dtype(a.dtype());
  if (!dt) {
    raise(PyExc_TypeError,
          std::string(name) + " has an unsupported dtype " + dlpack_dtype_str(a.dtype()));
  }
  return *dt;
}

// Prepared FP8 weights: float8_e4m3fn, or uint8 holding the E4M3 bytes.
DType prepared_dtype(char const* name, InArray const& a) {
  if (is_uint8(a.dtype())) return DType::kFloat8E4M3;
  return array_dtype(name, a);
}

std::vector<int64_t> scale_shape(flashmoe::PreparedLayout const& l) {
  return std::vector<int64_t>(l.scale_shape, l.scale_shape + l.scale_rank);
}

flashmoe::PreparedLayout layout_of(MoeProblem const& p, int which, flashmoe::WeightScale scale) {
  flashmoe::PreparedLayout l;
  check_ok(flashmoe::prepared_layout(p, which, scale, &l));
  return l;
}

// ---- exported functions -------------------------------------------------------------------

std::string forward(nb::dict problem_dict, InArray tokens, InArray w1, OptIn w2,
                    OptIn routing_weights, OptIn correction_bias, OptIn topk_ids,
                    OptIn topk_weights, OptIn expert_map, OutArray out, OptOut topk_ids_out,
                    OptOut topk_weights_out, OptOut expert_load, OptOut counts, OptOut workspace,
                    uintptr_t stream, OptIn w1_scale, OptIn w2_scale, bool workspace_zeroed) {
  MoeProblem p = parse_problem(problem_dict);
  // The arrays are the truth for types and presence; the dict gives shapes and options.
  p.token_dtype = array_dtype("tokens", tokens);
  p.weight_dtype = p.weights_prepared ? prepared_dtype("expert_weights", w1)
                                      : array_dtype("expert_weights", w1);
  if (p.weights_prepared != w1_scale.has_value()) {
    raise(PyExc_ValueError, p.weights_prepared
                                ? "prepared FP8 expert_weights need their scales (w1_scale)"
                                : "w1_scale is given but the expert weights are not prepared "
                                  "(problem['weights_prepared'] is false)");
  }
  if (routing_weights) p.score_dtype = array_dtype("routing_weights", *routing_weights);
  p.prerouted = topk_ids.has_value();
  p.has_correction_bias = correction_bias.has_value();
  p.has_expert_map = expert_map.has_value();
  if (p.prerouted != topk_weights.has_value()) {
    raise(PyExc_ValueError, "topk_ids and topk_weights must be given together");
  }
  if (p.prerouted == routing_weights.has_value()) {
    raise(PyExc_ValueError, "give either routing_weights or topk_ids/topk_weights");
  }
  bool const ffn = p.kind == flashmoe::ExpertKind::kGatedFFN;
  if (ffn != w2.has_value()) {
    raise(PyExc_ValueError,
          ffn ? "gated-FFN experts need w_down" : "linear experts take one array");
  }
  check_ok(flashmoe::validate_problem(p));

  int64_t const T = p.num_tokens, H = p.hidden, E = p.num_experts, El = p.num_local_experts;
  int64_t const k = p.routing.top_k, D = p.out_dim, I = p.inter_dim;
  bool const oi = p.layout == flashmoe::WeightLayout::kOutIn;
  std::vector<DType> const floats = {DType::kFloat32, DType::kFloat64, DType::kFloat16,
                                     DType::kBFloat16};
  std::vector<DType> weight_types = floats;
  weight_types.push_back(DType::kFloat8E4M3);

  DeviceCheck dev;
  MoeArgs a;
  a.tokens = checked_data("tokens", tokens, floats, {T, H}, &dev);
  if (p.weights_prepared) {
    // Prepared layout (flashmoe/options.h, MoeArgs): [E_local, Np, K] E4M3 plus float32 scales.
    std::vector<DType> const e4m3 = {DType::kFloat8E4M3};
    flashmoe::PreparedLayout const l1 = layout_of(p, 1, p.weight_scale);
    a.w1 = checked_data(ffn ? "w_gate_up (prepared)" : "expert_weights (prepared)", w1, e4m3,
                        {l1.experts, l1.rows, l1.cols}, &dev);
    a.w1_scale = static_cast<float const*>(
        checked_data("w1_scale", *w1_scale, {DType::kFloat32}, scale_shape(l1), &dev));
    if (ffn) {
      if (!w2_scale) raise(PyExc_ValueError, "prepared gated-FFN weights need w2_scale");
      flashmoe::PreparedLayout const l2 = layout_of(p, 2, p.weight_scale);
      a.w2 = checked_data("w_down (prepared)", *w2, e4m3, {l2.experts, l2.rows, l2.cols}, &dev);
      a.w2_scale = static_cast<float const*>(
          checked_data("w2_scale", *w2_scale, {DType::kFloat32}, scale_shape(l2), &dev));
    } else if (w2_scale) {
      raise(PyExc_ValueError, "linear experts take no w2_scale");
    }
  } else if (ffn) {
    a.w1 = checked_data(
        "w_gate_up", w1, weight_types,
        oi ? std::vector<int64_t>{El, 2 * I, H} : std::vector<int64_t>{El, H, 2 * I}, &dev);
    a.w2 = checked_data("w_down", *w2, {p.weight_dtype},
                        oi ? std::vector<int64_t>{El, H, I} : std::vector<int64_t>{El, I, H}, &dev);
  } else {
    a.w1 = checked_data("expert_weights", w1, weight_types,
                        oi ? std::vector<int64_t>{El, D, H} : std::vector<int64_t>{El, H, D}, &dev);
  }
  a.routing_weights = in_ptr<void>("routing_weights", routing_weights, floats, {T, E}, &dev);
  a.correction_bias =
      in_ptr<float>("correction_bias", correction_bias, {DType::kFloat32}, {E}, &dev);
  a.topk_ids_in = in_ptr<int32_t>("topk_ids", topk_ids, {DType::kInt32}, {T, k}, &dev);
  a.topk_weights_in = in_ptr<float>("topk_weights", topk_weights, {DType::kFloat32}, {T, k}, &dev);
  a.expert_map = in_ptr<int32_t>("expert_map", expert_map, {DType::kInt32}, {E}, &dev);
  a.out = checked_data("out", out, {p.token_dtype}, {T, p.output_dim()}, &dev);
  a.topk_ids_out = out_ptr<int32_t>("topk_ids_out", topk_ids_out, DType::kInt32, {T, k}, &dev);
  a.topk_weights_out =
      out_ptr<float>("topk_weights_out", topk_weights_out, DType::kFloat32, {T, k}, &dev);
  a.expert_load = out_ptr<int32_t>("expert_load", expert_load, DType::kInt32, {E}, &dev);
  a.drop_reroute_counts = out_ptr<int64_t>("counts", counts, DType::kInt64, {2}, &dev);

  if (dev.type == kDLCPU) {
    Status s;
    {
      nb::gil_scoped_release release;
      s = flashmoe::reference_fused_moe(p, a);
    }
    check_ok(s);
    return "reference-cpu";
  }

  // CUDA: the caller's stream and workspace; the run only enqueues work.
  void* ws = nullptr;
  std::size_t ws_bytes = 0;
  if (workspace) {
    dev.add("workspace", *workspace);
    if (workspace->size() != 0) {
      int64_t expected = 1;
      for (size_t i = workspace->ndim(); i-- > 0;) {
        if (workspace->shape(i) != 1 && workspace->stride(i) != expected)
          raise(PyExc_ValueError, "workspace must be C-contiguous");
        expected *= static_cast<int64_t>(workspace->shape(i));
      }
      ws = workspace->data();
      ws_bytes = workspace->nbytes();
    }
  }
  std::size_t const needed = flashmoe::fused_moe_workspace_size(p);
  if (ws_bytes < needed) {
    raise(PyExc_ValueError, "workspace must hold at least " + std::to_string(needed) +
                                " bytes, got " + std::to_string(ws_bytes));
  }
  flashmoe::KernelPath path = flashmoe::KernelPath::kNone;
  a.workspace_zeroed = workspace_zeroed && ws != nullptr;
  Status s;
  {
    nb::gil_scoped_release release;
    s = flashmoe::fused_moe_run(p, a, ws, ws_bytes, reinterpret_cast<cudaStream_t>(stream), &path);
  }
  check_ok(s);
  return flashmoe::kernel_path_name(path);
}

nb::dict prepared_layout_dict(nb::dict problem_dict, int which, std::string const& scale) {
  MoeProblem p = parse_problem(problem_dict);
  p.weights_prepared = false;  // the sizes do not depend on it
  flashmoe::PreparedLayout const l = layout_of(p, which, parse_weight_scale("scale", scale));
  nb::dict d;
  d["experts"] = l.experts;
  d["rows"] = l.rows;
  d["cols"] = l.cols;
  d["channels"] = l.channels;
  d["gate_up"] = l.gate_up;
  nb::list shape;
  for (int i = 0; i < l.scale_rank; ++i) shape.append(l.scale_shape[i]);
  d["scale_shape"] = nb::tuple(shape);
  d["weight_bytes"] = l.weight_bytes;
  d["scale_bytes"] = l.scale_bytes;
  return d;
}

// Quantizes raw CUDA expert weights into caller-allocated prepared arrays on `stream`; with
// source scales, packs already-quantized E4M3 weights (prepare_quantized_experts_fp8) instead.
void prepare_fp8(nb::dict problem_dict, InArray w1_raw, OptIn w2_raw, std::string const& scale,
                 OutArray w1_fp8, OutArray w1_scale, OptOut w2_fp8, OptOut w2_scale,
                 uintptr_t stream, OptIn w1_source_scale, OptIn w2_source_scale) {
  MoeProblem p = parse_problem(problem_dict);
  flashmoe::WeightScale const ws = parse_weight_scale("scale", scale);
  p.weights_prepared = false;
  p.weight_scale = flashmoe::WeightScale::kNone;
  bool const packed = w1_source_scale.has_value();
  p.weight_dtype = packed ? prepared_dtype("expert_weights", w1_raw)
                          : array_dtype("expert_weights", w1_raw);
  bool const ffn = p.kind == flashmoe::ExpertKind::kGatedFFN;
  if (ffn != w2_raw.has_value() || ffn != w2_fp8.has_value() || ffn != w2_scale.has_value()) {
    raise(PyExc_ValueError, ffn ? "gated-FFN experts need w_down, w2_fp8 and w2_scale"
                                : "linear experts take one array (no w2)");
  }
  if ((ffn && packed) != w2_source_scale.has_value()) {
    raise(PyExc_ValueError, packed ? "already-quantized gated-FFN experts need the scales of "
                                     "w_down too (w2_source_scale)"
                                   : "w2_source_scale is given without w1_source_scale");
  }
  int64_t const H = p.hidden, El = p.num_local_experts, D = p.out_dim, I = p.inter_dim;
  if (H <= 0 || El <= 0 || (ffn ? I <= 0 : D <= 0)) {
    raise(PyExc_ValueError, "prepare_experts: H, E and D (or I) must be positive");
  }
  bool const oi = p.layout == flashmoe::WeightLayout::kOutIn;
  std::vector<DType> const raw =
      packed ? std::vector<DType>{DType::kFloat8E4M3}
             : std::vector<DType>{DType::kFloat32, DType::kFloat16, DType::kBFloat16};
  DeviceCheck dev;
  void const* w1p;
  void const* w2p = nullptr;
  if (ffn) {
    w1p = checked_data("w_gate_up", w1_raw, raw,
                       oi ? std::vector<int64_t>{El, 2 * I, H} : std::vector<int64_t>{El, H, 2 * I},
                       &dev);
    w2p = checked_data("w_down", *w2_raw, {p.weight_dtype},
                       oi ? std::vector<int64_t>{El, H, I} : std::vector<int64_t>{El, I, H}, &dev);
  } else {
    w1p = checked_data("expert_weights", w1_raw, raw,
                       oi ? std::vector<int64_t>{El, D, H} : std::vector<int64_t>{El, H, D}, &dev);
  }
  if (dev.type != kDLCUDA) {
    raise(PyExc_ValueError, "prepare_experts quantizes on the GPU: the weights must be CUDA arrays");
  }
  std::vector<DType> const e4m3 = {DType::kFloat8E4M3};
  flashmoe::PreparedLayout const l1 = layout_of(p, 1, ws);
  void* q1 = const_cast<void*>(checked_data("w1_fp8", w1_fp8, e4m3, {l1.experts, l1.rows, l1.cols}, &dev));
  float* s1 = static_cast<float*>(
      const_cast<void*>(checked_data("w1_scale", w1_scale, {DType::kFloat32}, scale_shape(l1), &dev)));
  void* q2 = nullptr;
  float* s2 = nullptr;
  if (ffn) {
    flashmoe::PreparedLayout const l2 = layout_of(p, 2, ws);
    q2 = const_cast<void*>(checked_data("w2_fp8", *w2_fp8, e4m3, {l2.experts, l2.rows, l2.cols}, &dev));
    s2 = static_cast<float*>(const_cast<void*>(
        checked_data("w2_scale", *w2_scale, {DType::kFloat32}, scale_shape(l2), &dev)));
  }
  float const* src1 = nullptr;
  float const* src2 = nullptr;
  if (packed) {
    std::vector<DType> const f32 = {DType::kFloat32};
    src1 = static_cast<float const*>(
        checked_data("w1_source_scale", *w1_source_scale, f32, scale_shape(l1), &dev));
    if (ffn) {
      src2 = static_cast<float const*>(checked_data("w2_source_scale", *w2_source_scale, f32,
                                                    scale_shape(layout_of(p, 2, ws)), &dev));
    }
  }
  Status s;
  {
    nb::gil_scoped_release release;
    cudaStream_t const st = reinterpret_cast<cudaStream_t>(stream);
    s = packed ? flashmoe::prepare_quantized_experts_fp8(p, w1p, src1, w2p, src2, ws, q1, s1, q2,
                                                         s2, st)
               : flashmoe::prepare_experts_fp8(p, w1p, w2p, ws, q1, s1, q2, s2, st);
  }
  check_ok(s);
}

std::size_t workspace_size(nb::dict problem_dict) {
  MoeProblem const p = parse_problem(problem_dict);
  check_ok(flashmoe::validate_problem(p));
  return flashmoe::fused_moe_workspace_size(p);
}

}  // namespace

NB_MODULE(_C, m) {
  m.doc() = "flashmoe C++ core: DLPack arrays in, the CPU reference or the CUDA op out.";

  m.def("forward", &forward, nb::arg("problem"), nb::arg("tokens"), nb::arg("w1"),
        nb::arg("w2").none(), nb::arg("routing_weights").none(), nb::arg("correction_bias").none(),
        nb::arg("topk_ids").none(), nb::arg("topk_weights").none(), nb::arg("expert_map").none(),
        nb::arg("out"), nb::arg("topk_ids_out").none(), nb::arg("topk_weights_out").none(),
        nb::arg("expert_load").none(), nb::arg("counts").none(), nb::arg("workspace").none(),
        nb::arg("stream") = 0, nb::arg("w1_scale").none() = nb::none(),
        nb::arg("w2_scale").none() = nb::none(), nb::arg("workspace_zeroed") = false,
        "Runs one forward. CPU arrays run the C++ reference (returns 'reference-cpu'); CUDA "
        "arrays run fused_moe_run on `stream` (a cudaStream_t as int) with `workspace` and "
        "return the kernel path's name. Every array must be C-contiguous and match `problem`.");
  m.def("prepared_layout", &prepared_layout_dict, nb::arg("problem"), nb::arg("which"),
        nb::arg("scale"),
        "Shapes of prepared FP8 matrix `which` (1 = w1, 2 = w_down) of `problem` with scales "
        "`scale` ('channel' | 'block128'): dict(experts, rows, cols, channels, gate_up, "
        "scale_shape, weight_bytes, scale_bytes).");
  m.def("prepare_experts_fp8", &prepare_fp8, nb::arg("problem"), nb::arg("w1"),
        nb::arg("w2").none(), nb::arg("scale"), nb::arg("w1_fp8"), nb::arg("w1_scale"),
        nb::arg("w2_fp8").none(), nb::arg("w2_scale").none(), nb::arg("stream") = 0,
        nb::arg("w1_source_scale").none() = nb::none(),
        nb::arg("w2_source_scale").none() = nb::none(),
        "Quantizes raw CUDA expert weights (problem describes them: kind, hidden, out_dim / "
        "inter_dim, num_local_experts, layout) into the caller's prepared arrays (uint8 or "
        "float8_e4m3fn [E, rows, cols], float32 scales), enqueued on `stream`; never syncs. "
        "With w1_source_scale (and w2_source_scale for gated FFN; float32 in the prepared scale "
        "shape) the weights are already E4M3 (float8_e4m3fn or uint8) and are packed, not "
        "re-quantized.");
  m.def("workspace_size", &workspace_size, nb::arg("problem"),
        "Bytes of device workspace a CUDA forward of `problem` needs.");
  m.def("annealed_temperature", &flashmoe::annealed_temperature, nb::arg("step"),
        nb::arg("total_steps"), nb::arg("t_start"), nb::arg("t_end"),
        "Cosine schedule: t_end + (t_start - t_end) * 0.5 * (1 + cos(pi * min(step, total) / "
        "total)); total_steps <= 0 gives t_end.");
}
