// JSON Patch (RFC 6902) with JSON Pointer (RFC 6901). The patch is applied to a copy of the
// target, which replaces the target only when every operation succeeded (atomic application).
#include "yilian/fhir/json_patch.hpp"

#include <charconv>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace yilian::fhir {
namespace {

struct patch_error {
  issue_type type = issue_type::invalid;
  std::string message;
};

// Splits a JSON Pointer into unescaped reference tokens; nullopt when malformed.
std::optional<std::vector<std::string>> parse_pointer(std::string_view pointer) {
  std::vector<std::string> tokens;
  if (pointer.empty()) return tokens;
  if (pointer.front() != '/') return std::nullopt;
  std::string current;
  for (std::size_t i = 1; i <= pointer.size(); ++i) {
    if (i == pointer.size() || pointer[i] == '/') {
      tokens.push_back(std::move(current));
      current.clear();
      continue;
    }
    char c = pointer[i];
    if (c == '~') {
      if (i + 1 >= pointer.size()) return std::nullopt;
      char next = pointer[++i];
      if (next == '0') {
        current += '~';
      } else if (next == '1') {
        current += '/';
      } else {
        return std::nullopt;
      }
    } else {
      current += c;
    }
  }
  return tokens;
}

// Array index per RFC 6901: "0" or digits without a leading zero.
std::optional<std::size_t> parse_index(std::string_view token) {
  if (token.empty() || token.size() > 18) return std::nullopt;
  if (token.size() > 1 && token[0] == '0') return std::nullopt;
  std::size_t n = 0;
  auto [p, ec] = std::from_chars(token.data(), token.data() + token.size(), n);
  if (ec != std::errc() || p != token.data() + token.size()) return std::nullopt;
  return n;
}

// Resolves tokens [0, count) from root; nullptr when a step does not exist.
value* resolve(value& root, const std::vector<std::string>& tokens, std::size_t count) {
  value* current = &root;
  for (std::size_t i = 0; i < count; ++i) {
    const std::string& token = tokens[i];
    if (current->is_object()) {
      current = current->find(token);
      if (current == nullptr) return nullptr;
    } else if (current->is_array()) {
      auto index = parse_index(token);
      if (!index || *index >= current->items().size()) return nullptr;
      current = &current->items()[*index];
    } else {
      return nullptr;
    }
  }
  return current;
}

bool numbers_equal(const std::string& a, const std::string& b) {
  if (a == b) return true;
  char* end_a = nullptr;
  char* end_b = nullptr;
  long double x = std::strtold(a.c_str(), &end_a);
  long double y = std::strtold(b.c_str(), &end_b);
  return *end_a == '\0' && *end_b == '\0' && x == y;
}

// JSON equality: object members compared regardless of order, numbers by value.
bool json_equal(const value& a, const value& b) {
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case value_kind::null: return true;
    case value_kind::number: return numbers_equal(a.text(), b.text());
    case value_kind::boolean:
    case value_kind::string:
    case value_kind::raw_json: return a.text() == b.text();
    case value_kind::array:
      if (a.items().size() != b.items().size()) return false;
      for (std::size_t i = 0; i < a.items().size(); ++i)
        if (!json_equal(a.items()[i], b.items()[i])) return false;
      return true;
    case value_kind::object:
      if (a.members().size() != b.members().size()) return false;
      for (const auto& m : a.members()) {
        const value* other = b.find(m.name);
        if (other == nullptr || !json_equal(m.val, *other)) return false;
      }
      return true;
  }
  return false;
}

std::optional<patch_error> add_at(value& doc, const std::vector<std::string>& tokens, value v) {
  if (tokens.empty()) {
    doc = std::move(v);
    return std::nullopt;
  }
  value* parent = resolve(doc, tokens, tokens.size() - 1);
  if (parent == nullptr) return patch_error{issue_type::invalid, "parent of the target location does not exist"};
  const std::string& last = tokens.back();
  if (parent->is_object()) {
    parent->set(last, std::move(v));
    return std::nullopt;
  }
  if (parent->is_array()) {
    auto& items = parent->items();
    if (last == "-") {
      items.push_back(std::move(v));
      return std::nullopt;
    }
    auto index = parse_index(last);
    if (!index || *index > items.size()) return patch_error{issue_type::invalid, "array index out of range"};
    items.insert(items.begin() + static_cast<std::ptrdiff_t>(*index), std::move(v));
    return std::nullopt;
  }
  return patch_error{issue_type::invalid, "parent of the target location is not an object or array"};
}

// Removes the value at tokens; stores it in `removed` when non-null.
std::optional<patch_error> remove_at(value& doc, const std::vector<std::string>& tokens, value* removed) {
  if (tokens.empty()) return patch_error{issue_type::invalid, "cannot remove the whole document"};
  value* parent = resolve(doc, tokens, tokens.size() - 1);
  if (parent == nullptr) return patch_error{issue_type::invalid, "target location does not exist"};
  const std::string& last = tokens.back();
  if (parent->is_object()) {
    value* target = parent->find(last);
    if (target == nullptr) return patch_error{issue_type::invalid, "target location does not exist"};
    if (removed != nullptr) *removed = std::move(*target);
    parent->erase(last);
    return std::nullopt;
  }
  if (parent->is_array()) {
    auto& items = parent->items();
    auto index = parse_index(last);
    if (!index || *index >= items.size()) return patch_error{issue_type::invalid, "array index out of range"};
    if (removed != nullptr) *removed = std::move(items[*index]);
    items.erase(items.begin() + static_cast<std::ptrdiff_t>(*index));
    return std::nullopt;
  }
  return patch_error{issue_type::invalid, "target location does not exist"};
}

bool is_proper_prefix(const std::vector<std::string>& prefix, const std::vector<std::string>& path) {
  if (prefix.size() >= path.size()) return false;
  for (std::size_t i = 0; i < prefix.size(); ++i)
    if (prefix[i] != path[i]) return false;
  return true;
}

std::optional<patch_error> apply_operation(value& doc, const value& op) {
  if (!op.is_object()) return patch_error{issue_type::invalid, "operation is not an object"};
  const value* name = op.find("op");
  if (name == nullptr || !name->is_string()) return patch_error{issue_type::invalid, "missing or invalid 'op'"};
  const value* path_value = op.find("path");
  if (path_value == nullptr || !path_value->is_string())
    return patch_error{issue_type::invalid, "missing or invalid 'path'"};
  auto path = parse_pointer(path_value->text());
  if (!path) return patch_error{issue_type::invalid, "malformed JSON Pointer '" + path_value->text() + "'"};
  const std::string& kind = name->text();

  auto need_value = [&]() -> const value* { return op.find("value"); };
  auto need_from = [&]() -> std::optional<std::vector<std::string>> {
    const value* from = op.find("from");
    if (from == nullptr || !from->is_string()) return std::nullopt;
    return parse_pointer(from->text());
  };

  if (kind == "add") {
    const value* v = need_value();
    if (v == nullptr) return patch_error{issue_type::invalid, "'add' without 'value'"};
    return add_at(doc, *path, *v);
  }
  if (kind == "remove") return remove_at(doc, *path, nullptr);
  if (kind == "replace") {
    const value* v = need_value();
    if (v == nullptr) return patch_error{issue_type::invalid, "'replace' without 'value'"};
    value* target = resolve(doc, *path, path->size());
    if (target == nullptr) return patch_error{issue_type::invalid, "target location does not exist"};
    *target = *v;
    return std::nullopt;
  }
  if (kind == "move" || kind == "copy") {
    auto from = need_from();
    if (!from) return patch_error{issue_type::invalid, "'" + kind + "' without a valid 'from'"};
    if (kind == "move") {
      if (*from == *path) return std::nullopt;
      if (is_proper_prefix(*from, *path))
        return patch_error{issue_type::invalid, "cannot move a value into one of its children"};
      value moved;
      if (auto err = remove_at(doc, *from, &moved)) return patch_error{issue_type::invalid, "'from' " + err->message};
      return add_at(doc, *path, std::move(moved));
    }
    value* source = resolve(doc, *from, from->size());
    if (source == nullptr) return patch_error{issue_type::invalid, "'from' location does not exist"};
    value copy = *source;
    return add_at(doc, *path, std::move(copy));
  }
  if (kind == "test") {
    const value* v = need_value();
    if (v == nullptr) return patch_error{issue_type::invalid, "'test' without 'value'"};
    value* target = resolve(doc, *path, path->size());
    if (target == nullptr) return patch_error{issue_type::processing, "test failed: target location does not exist"};
    if (!json_equal(*target, *v)) return patch_error{issue_type::processing, "test failed: values differ"};
    return std::nullopt;
  }
  return patch_error{issue_type::invalid, "unknown operation '" + kind + "'"};
}

}  // namespace

bool apply_json_patch(value& target, const value& patch, issue_list& issues) {
  if (!patch.is_array()) {
    issues.error(issue_type::invalid, "JSON Patch document must be an array of operations");
    return false;
  }
  value work = target;
  for (std::size_t i = 0; i < patch.items().size(); ++i) {
    const value& op = patch.items()[i];
    if (auto err = apply_operation(work, op)) {
      std::string where = "operation " + std::to_string(i);
      if (op.is_object()) {
        if (const value* name = op.find("op"); name != nullptr && name->is_string()) where += " (" + name->text();
        else where += " (?";
        if (const value* path = op.find("path"); path != nullptr && path->is_string())
          where += " " + path->text();
        where += ")";
      }
      issues.error(err->type, "JSON Patch " + where + ": " + err->message);
      return false;
    }
  }
  target = std::move(work);
  return true;
}

}  // namespace yilian::fhir
