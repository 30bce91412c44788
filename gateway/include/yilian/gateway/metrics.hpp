// Request counters and latency histogram, exposed in the Prometheus text format at /metrics.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include "yilian/gateway/http_server.hpp"

namespace yilian::gateway {

class metrics {
 public:
  metrics();
  void record(const request_log_entry& entry);
  // Prometheus exposition text (version 0.0.4).
  std::string prometheus_text() const;

 private:
  static constexpr std::array<double, 12> bucket_bounds{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                                        0.05,   0.1,   0.25,   0.5,   1.0,  5.0};
  mutable std::mutex mutex_;
  std::map<std::pair<std::string, int>, std::uint64_t> requests_;  // (method, status) -> count
  std::array<std::uint64_t, bucket_bounds.size()> buckets_{};
  std::uint64_t observations_ = 0;
  double duration_sum_ = 0;
  std::uint64_t response_bytes_ = 0;
  std::chrono::steady_clock::time_point started_;
};

}  // namespace yilian::gateway
