// flashmoe (internal): the properties of a CUDA device that the host code consults on every
// call, read from the driver once per device (thread-safe) and kept.
#pragma once

#include <cuda_runtime.h>

namespace flashmoe {

/// Device ordinals this cache covers.
inline constexpr int kMaxTrackedDevices = 64;

struct DeviceProperties {
  int major = 0;  // compute capability
  int minor = 0;
  double hbm_gbps = 0.0;  // peak HBM bandwidth, 2 x memory clock x bus width; 0 if not readable
};

/// The current device's ordinal (*device, set whenever cudaGetDevice succeeds) and properties.
/// Returns cudaSuccess; cudaGetDevice's error; cudaErrorInvalidDevice for an ordinal >=
/// kMaxTrackedDevices; or the compute-capability query's error (kept for the device). The
/// bandwidth query failing leaves hbm_gbps at 0 and is not an error.
cudaError_t current_device_properties(int* device, DeviceProperties* props);

}  // namespace flashmoe
