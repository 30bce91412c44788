#include "yilian/gateway/http_message.hpp"

#include <cctype>

namespace yilian::gateway {

bool iequals(std::string_view a, std::string_view b) noexcept {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i]))) return false;
  return true;
}

std::string_view http_request::header(std::string_view name) const noexcept {
  for (const auto& h : headers)
    if (iequals(h.name, name)) return h.value;
  return {};
}

std::string_view http_response::header(std::string_view name) const noexcept {
  for (const auto& h : headers)
    if (iequals(h.name, name)) return h.value;
  return {};
}

void http_response::set_header(std::string_view name, std::string value) {
  for (auto& h : headers)
    if (iequals(h.name, name)) {
      h.value = std::move(value);
      return;
    }
  headers.push_back(http_header{std::string(name), std::move(value)});
}

}  // namespace yilian::gateway
