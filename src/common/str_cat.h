// flashmoe (internal): message building without iostreams.
//
// Error messages are formatted with std::to_chars, which touches no locale: inside a Python
// extension, iostream number formatting crashed on the GPU machine (an ostream's locale facets
// in the extension's copy of libstdc++ were not usable there), and a status message must never
// be able to crash the process that asked for it.
#pragma once

#include <charconv>
#include <string>
#include <string_view>
#include <type_traits>

namespace flashmoe::detail {

inline void append_part(std::string& s, std::string_view v) { s.append(v.data(), v.size()); }
inline void append_part(std::string& s, char const* v) { s.append(v); }
inline void append_part(std::string& s, char v) { s.push_back(v); }
inline void append_part(std::string& s, bool v) { s.append(v ? "true" : "false"); }

template <typename T>
std::enable_if_t<std::is_arithmetic_v<T> && !std::is_same_v<T, bool> && !std::is_same_v<T, char>>
append_part(std::string& s, T v) {
  char buf[64];
  // Shortest round-trip form for floating point; nan/inf print as "nan"/"inf".
  auto const r = std::to_chars(buf, buf + sizeof(buf), v);
  s.append(buf, r.ptr);
}

template <typename T>
std::enable_if_t<std::is_enum_v<T>> append_part(std::string& s, T v) {
  append_part(s, static_cast<std::underlying_type_t<T>>(v));
}

/// Concatenates strings and numbers into one message.
template <typename... Parts>
std::string cat(Parts const&... parts) {
  std::string s;
  (append_part(s, parts), ...);
  return s;
}

}  // namespace flashmoe::detail
