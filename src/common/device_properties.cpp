#include "common/device_properties.h"

#include <array>
#include <mutex>

namespace flashmoe {

cudaError_t current_device_properties(int* device, DeviceProperties* props) {
  static std::array<std::once_flag, kMaxTrackedDevices> once;
  static std::array<DeviceProperties, kMaxTrackedDevices> cache;
  static std::array<cudaError_t, kMaxTrackedDevices> errors;
  cudaError_t const got = cudaGetDevice(device);
  if (got != cudaSuccess) return got;
  if (*device < 0 || *device >= kMaxTrackedDevices) return cudaErrorInvalidDevice;
  int const d = *device;
  std::call_once(once[d], [d] {
    DeviceProperties& p = cache[d];
    errors[d] = cudaDeviceGetAttribute(&p.major, cudaDevAttrComputeCapabilityMajor, d);
    if (errors[d] == cudaSuccess) {
      errors[d] = cudaDeviceGetAttribute(&p.minor, cudaDevAttrComputeCapabilityMinor, d);
    }
    int clock_khz = 0;
    int bus_bits = 0;
    if (cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, d) == cudaSuccess &&
        cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, d) == cudaSuccess) {
      p.hbm_gbps = 2.0 * clock_khz * 1e3 * (bus_bits / 8.0) / 1e9;  // double data rate
    } else {
      (void)cudaGetLastError();  // not an error of the call: hbm_gbps stays 0
    }
  });
  *props = cache[d];
  return errors[d];
}

}  // namespace flashmoe
