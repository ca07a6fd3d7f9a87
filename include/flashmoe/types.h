// flashmoe: basic types shared by every layer (status, element types).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

namespace flashmoe {

/// What went wrong, coarse enough for a binding to map onto an exception type.
enum class StatusCode : int {
  kSuccess = 0,
  kInvalidArgument = 1,  // a value or shape the op does not accept (Python: ValueError)
  kUnsupportedType = 2,  // an element type the op does not accept (Python: TypeError)
  kNotSupported = 3,     // valid, but this build or device has no path for it
  kCudaError = 4,        // a CUDA runtime call failed
  kInternal = 5,
};

/// A status with a human-readable message naming the offending argument.
/// Every host entry point returns one; nothing throws across the library boundary.
class Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }
  static Status Invalid(std::string m) { return {StatusCode::kInvalidArgument, std::move(m)}; }
  static Status BadType(std::string m) { return {StatusCode::kUnsupportedType, std::move(m)}; }
  static Status Unsupported(std::string m) { return {StatusCode::kNotSupported, std::move(m)}; }

  bool ok() const { return code_ == StatusCode::kSuccess; }
  StatusCode code() const { return code_; }
  std::string const& message() const { return message_; }

 private:
  StatusCode code_ = StatusCode::kSuccess;
  std::string message_;
};

/// Returns early from the enclosing function when `expr` yields a non-ok Status.
#define FLASHMOE_RETURN_IF_ERROR(expr)          \
  do {                                          \
    ::flashmoe::Status _fm_status = (expr);     \
    if (!_fm_status.ok()) return _fm_status;    \
  } while (0)

/// Element types that cross the API. Arrays are dense, row-major (C-contiguous).
enum class DType : int {
  kFloat32 = 0,
  kFloat64 = 1,
  kFloat16 = 2,
  kBFloat16 = 3,
  kFloat8E4M3 = 4,  // OCP E4M3FN: 1-4-3, bias 7, max finite 448, no infinities
  kInt32 = 5,
  kInt64 = 6,
};

inline std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::kFloat64:
    case DType::kInt64:
      return 8;
    case DType::kFloat32:
    case DType::kInt32:
      return 4;
    case DType::kFloat16:
    case DType::kBFloat16:
      return 2;
    case DType::kFloat8E4M3:
      return 1;
  }
  return 0;
}

inline char const* dtype_name(DType t) {
  switch (t) {
    case DType::kFloat32: return "float32";
    case DType::kFloat64: return "float64";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
    case DType::kFloat8E4M3: return "float8_e4m3fn";
    case DType::kInt32: return "int32";
    case DType::kInt64: return "int64";
  }
  return "unknown";
}

inline bool is_float_dtype(DType t) {
  return t == DType::kFloat32 || t == DType::kFloat64 || t == DType::kFloat16 ||
         t == DType::kBFloat16;
}

}  // namespace flashmoe
