#include "yilian/gateway/metrics.hpp"

#include <sstream>

namespace yilian::gateway {

metrics::metrics() : started_(std::chrono::steady_clock::now()) {}

void metrics::record(const request_log_entry& entry) {
  double seconds = std::chrono::duration<double>(entry.duration).count();
  std::lock_guard lock(mutex_);
  ++requests_[{entry.method, entry.status}];
  for (std::size_t i = 0; i < bucket_bounds.size(); ++i)
    if (seconds <= bucket_bounds[i]) ++buckets_[i];
  ++observations_;
  duration_sum_ += seconds;
  response_bytes_ += entry.response_bytes;
}

std::string metrics::prometheus_text() const {
  std::ostringstream out;
  std::lock_guard lock(mutex_);
  out << "# HELP yilian_http_requests_total HTTP requests answered, by method and status.\n"
         "# TYPE yilian_http_requests_total counter\n";
  for (const auto& [key, count] : requests_)
    out << "yilian_http_requests_total{method=\"" << key.first << "\",status=\"" << key.second << "\"} " << count
        << "\n";
  out << "# HELP yilian_http_request_duration_seconds Time from request read to response ready.\n"
         "# TYPE yilian_http_request_duration_seconds histogram\n";
  for (std::size_t i = 0; i < bucket_bounds.size(); ++i)
    out << "yilian_http_request_duration_seconds_bucket{le=\"" << bucket_bounds[i] << "\"} " << buckets_[i] << "\n";
  out << "yilian_http_request_duration_seconds_bucket{le=\"+Inf\"} " << observations_ << "\n"
      << "yilian_http_request_duration_seconds_sum " << duration_sum_ << "\n"
      << "yilian_http_request_duration_seconds_count " << observations_ << "\n"
      << "# HELP yilian_http_response_bytes_total Response body bytes sent.\n"
         "# TYPE yilian_http_response_bytes_total counter\n"
      << "yilian_http_response_bytes_total " << response_bytes_ << "\n"
      << "# HELP yilian_uptime_seconds Seconds since the gateway started.\n"
         "# TYPE yilian_uptime_seconds gauge\n"
      << "yilian_uptime_seconds "
      << std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count() << "\n";
  return out.str();
}

}  // namespace yilian::gateway
