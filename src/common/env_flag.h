// flashmoe (internal): the environment switches (FLASHMOE_*), read on the host.
#pragma once

#include <cstdlib>
#include <cstring>

namespace flashmoe::detail {

/// Whether the environment variable `name` is set to exactly `value` (unset: false).
inline bool env_is(char const* name, char const* value) {
  char const* const v = std::getenv(name);
  return v != nullptr && std::strcmp(v, value) == 0;
}

}  // namespace flashmoe::detail
