// Search value syntax shared by the search engine and conditional interactions: OR lists and
// token values with their escapes.
#include <pqxx/pqxx>

#include "store_internal.hpp"

namespace yilian::gateway::detail {

std::vector<std::string> split_or_list(std::string_view value) {
  std::vector<std::string> out;
  std::string cur;
  for (std::size_t i = 0; i < value.size(); ++i) {
    char c = value[i];
    if (c == '\\' && i + 1 < value.size()) {
      // Keep the escape: token parsing below needs to tell `\|` from `|`.
      cur += c;
      cur += value[++i];
    } else if (c == ',') {
      out.push_back(std::move(cur));
      cur.clear();
    } else {
      cur += c;
    }
  }
  out.push_back(std::move(cur));
  return out;
}

namespace {
std::string unescape(std::string_view s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size()) ++i;
    out += s[i];
  }
  return out;
}
}  // namespace

std::vector<token_alternative> parse_token(std::string_view value) {
  std::vector<token_alternative> out;
  for (const auto& part : split_or_list(value)) {
    token_alternative t;
    std::size_t bar = std::string::npos;
    for (std::size_t i = 0; i < part.size(); ++i) {
      if (part[i] == '\\') {
        ++i;
      } else if (part[i] == '|') {
        bar = i;
        break;
      }
    }
    if (bar == std::string::npos) {
      t.code = unescape(part);
    } else {
      t.has_system = true;
      t.system = unescape(std::string_view(part).substr(0, bar));
      t.code = unescape(std::string_view(part).substr(bar + 1));
    }
    out.push_back(std::move(t));
  }
  return out;
}

}  // namespace yilian::gateway::detail
