// Transport-neutral HTTP request and response. The FHIR API is a function from one to the other
// and never sees a socket, so it is tested without a network; Boost.Beast stays in http_server.cpp.
#pragma once

#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace yilian::gateway {

struct http_header {
  std::string name;
  std::string value;
};

struct http_request {
  std::string method;  // "GET", "POST", ...
  std::string target;  // origin-form: "/fhir/Patient/1?_format=json"
  std::vector<http_header> headers;
  std::string body;
  std::string remote_address;

  // Case-insensitive lookup; empty when absent.
  std::string_view header(std::string_view name) const noexcept;
};

struct http_response {
  int status = 200;
  std::vector<http_header> headers;
  std::string body;

  std::string_view header(std::string_view name) const noexcept;
  // Replaces an existing header of the same name (case-insensitive).
  void set_header(std::string_view name, std::string value);
};

// Runs on a worker thread (it may block on PostgreSQL), never on an I/O thread.
using request_handler = std::function<http_response(const http_request&)>;

bool iequals(std::string_view a, std::string_view b) noexcept;

}  // namespace yilian::gateway
