// A FHIR resource as a generic, ordered tree: the shape of the JSON representation, with numbers
// kept as their literal text so decimals round-trip exactly ("1.50" stays "1.50"). Resource
// types are not C++ classes; what an element means comes from `definitions`.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace yilian::fhir {

// `raw_json` holds already-serialised, valid JSON (a stored resource spliced into a Bundle without
// re-parsing it); write_json copies it verbatim, other consumers parse it when they need the tree.
enum class value_kind : std::uint8_t { null, boolean, number, string, object, array, raw_json };

class value;

struct member;

class value {
 public:
  value() = default;
  explicit value(value_kind kind) : kind_(kind) {}

  static value make_string(std::string text) { return value(value_kind::string, std::move(text)); }
  static value make_number(std::string literal) { return value(value_kind::number, std::move(literal)); }
  static value make_boolean(bool b) { return value(value_kind::boolean, b ? "true" : "false"); }
  static value make_object() { return value(value_kind::object); }
  static value make_array() { return value(value_kind::array); }
  static value make_raw_json(std::string json) { return value(value_kind::raw_json, std::move(json)); }

  value_kind kind() const noexcept { return kind_; }
  bool is_null() const noexcept { return kind_ == value_kind::null; }
  bool is_object() const noexcept { return kind_ == value_kind::object; }
  bool is_array() const noexcept { return kind_ == value_kind::array; }
  bool is_string() const noexcept { return kind_ == value_kind::string; }
  bool is_number() const noexcept { return kind_ == value_kind::number; }
  bool is_boolean() const noexcept { return kind_ == value_kind::boolean; }
  bool is_raw_json() const noexcept { return kind_ == value_kind::raw_json; }

  // String contents, the number literal, or "true"/"false".
  const std::string& text() const noexcept { return text_; }
  void set_text(std::string text) { text_ = std::move(text); }
  bool as_bool() const noexcept { return kind_ == value_kind::boolean && text_ == "true"; }

  // Object members in document order (FHIR JSON has no duplicate keys; parsers reject them).
  std::vector<member>& members() noexcept { return members_; }
  const std::vector<member>& members() const noexcept { return members_; }
  const value* find(std::string_view name) const noexcept;
  value* find(std::string_view name) noexcept;
  // Sets or replaces a member, keeping the position of an existing one.
  value& set(std::string_view name, value v);
  bool erase(std::string_view name);

  // Array items.
  std::vector<value>& items() noexcept { return items_; }
  const std::vector<value>& items() const noexcept { return items_; }
  value& push_back(value v) {
    items_.push_back(std::move(v));
    return items_.back();
  }

  friend bool operator==(const value& a, const value& b);

 private:
  value(value_kind kind, std::string text) : kind_(kind), text_(std::move(text)) {}

  value_kind kind_ = value_kind::null;
  std::string text_;
  std::vector<member> members_;
  std::vector<value> items_;
};

struct member {
  std::string name;
  value val;
  friend bool operator==(const member& a, const member& b) { return a.name == b.name && a.val == b.val; }
};

}  // namespace yilian::fhir
