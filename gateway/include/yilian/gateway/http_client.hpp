// Outgoing HTTP/1.1 requests (rest-hook notifications) behind a Beast-free interface: one request
// per connection, http:// and https:// (OpenSSL, the peer's certificate verified against the
// system's trust store), and one deadline for connecting, sending and receiving.
#pragma once

#include <chrono>
#include <stdexcept>
#include <string>
#include <vector>

#include "yilian/gateway/http_message.hpp"

namespace yilian::gateway {

struct http_client_request {
  std::string method = "POST";
  std::string url;  // absolute http:// or https:// URL
  std::vector<http_header> headers;
  std::string body;
  std::chrono::milliseconds timeout{10'000};
};

// Thrown when no response arrived: malformed URL, name resolution, connection, TLS, timeout.
class http_client_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Sends the request and returns the response (any status); throws http_client_error otherwise.
http_response send_http_request(const http_client_request& request);

}  // namespace yilian::gateway
