#include "yilian/fhir/value.hpp"

#include <algorithm>

namespace yilian::fhir {

const value* value::find(std::string_view name) const noexcept {
  for (const auto& m : members_)
    if (m.name == name) return &m.val;
  return nullptr;
}

value* value::find(std::string_view name) noexcept {
  for (auto& m : members_)
    if (m.name == name) return &m.val;
  return nullptr;
}

value& value::set(std::string_view name, value v) {
  if (value* existing = find(name)) {
    *existing = std::move(v);
    return *existing;
  }
  members_.push_back(member{std::string(name), std::move(v)});
  return members_.back().val;
}

bool value::erase(std::string_view name) {
  auto it = std::find_if(members_.begin(), members_.end(), [&](const member& m) { return m.name == name; });
  if (it == members_.end()) return false;
  members_.erase(it);
  return true;
}

bool operator==(const value& a, const value& b) {
  return a.kind_ == b.kind_ && a.text_ == b.text_ && a.members_ == b.members_ && a.items_ == b.items_;
}

}  // namespace yilian::fhir
