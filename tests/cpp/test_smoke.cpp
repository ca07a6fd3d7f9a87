#include <gtest/gtest.h>
#include "flashmoe/fused_moe.h"
TEST(Smoke, KernelPathName) { EXPECT_STREQ(flashmoe::kernel_path_name(flashmoe::KernelPath::kNone), "none"); }
