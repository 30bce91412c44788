// Structural validation: one walk over the JSON-shaped tree, guided by the definitions. The
// element path is built incrementally in one string (appended on the way down, truncated on the
// way up), so a valid resource costs no allocation per node beyond the occasional choice type.
#include "yilian/fhir/validator.hpp"

#include <string>
#include <string_view>

namespace yilian::fhir {
namespace {

constexpr int max_depth = 128;

class walker {
 public:
  walker(const definitions& defs, issue_list& issues, const validation_options& options)
      : defs_(defs), issues_(issues), options_(options) {
    path_.reserve(256);
  }

  // Validates a resource whose element path is already in path_.
  void resource(const value& v, std::string_view expected_type, bool contained) {
    if (!v.is_object()) {
      error(issue_type::structure, "A resource must be a JSON object");
      return;
    }
    const value* type_value = v.find("resourceType");
    if (type_value == nullptr) {
      error(issue_type::structure, "Missing 'resourceType'");
      return;
    }
    if (!type_value->is_string()) {
      error(issue_type::structure, "'resourceType' must be a string");
      return;
    }
    const std::string& type_name = type_value->text();
    const type_def* type = defs_.find_type(type_name);
    if (type == nullptr || type->kind != type_kind::resource || type->is_abstract) {
      error(issue_type::structure, "Unknown resource type '" + type_name + "'");
      return;
    }
    if (!expected_type.empty() && type_name != expected_type) {
      error(issue_type::invalid,
            "Resource type '" + type_name + "' does not match the expected type '" + std::string(expected_type) + "'");
      return;
    }
    if (path_.empty()) path_ = type_name;
    if (contained && v.find("contained") != nullptr) {
      std::size_t mark = path_.size();
      path_ += ".contained";
      error(issue_type::structure, "A contained resource must not contain resources");
      path_.resize(mark);
    }
    object(v, type->root, /*is_resource_root=*/true, contained);
  }

 private:
  // --- reporting ----------------------------------------------------------------------------
  void error(issue_type type, std::string diagnostics) { issues_.error(type, std::move(diagnostics), path_); }

  struct scope {
    walker& w;
    std::size_t mark;
    scope(walker& owner, std::string_view name) : w(owner), mark(owner.path_.size()) {
      w.path_ += '.';
      w.path_ += name;
    }
    scope(walker& owner, std::size_t index) : w(owner), mark(owner.path_.size()) {
      w.path_ += '[';
      w.path_ += std::to_string(index);
      w.path_ += ']';
    }
    ~scope() { w.path_.resize(mark); }
    scope(const scope&) = delete;
    scope& operator=(const scope&) = delete;
  };

  static const value* find_underscore(const value& obj, std::string_view name) {
    for (const auto& m : obj.members()) {
      if (m.name.size() == name.size() + 1 && m.name[0] == '_' && std::string_view(m.name).substr(1) == name)
        return &m.val;
    }
    return nullptr;
  }

  bool is_primitive(std::string_view type) const {
    const type_def* t = defs_.find_type(type);
    return t != nullptr && t->kind == type_kind::primitive_type;
  }

  // Type of element `e` as used in the data; `chosen` is set for choice elements.
  static std::string_view element_type(const element_def& e, const std::string& chosen) {
    if (e.is_choice()) return chosen;
    if (!e.content_reference.empty()) return "BackboneElement";
    if (e.type_codes.size() == 1) return e.type_codes.front();
    return {};
  }

  // --- objects ------------------------------------------------------------------------------
  void object(const value& obj, const element_def& def, bool is_resource_root, bool in_contained) {
    if (++depth_ > max_depth) {
      if (depth_ == max_depth + 1) error(issue_type::too_costly, "Resource nesting is too deep");
      --depth_;
      return;
    }
    if (obj.members().empty()) error(issue_type::structure, "Empty objects are not allowed in FHIR JSON");
    std::string chosen;
    for (const auto& m : obj.members()) {
      const std::string& name = m.name;
      if (is_resource_root && name == "resourceType") continue;
      if (!name.empty() && name[0] == '_') {
        primitive_extension_member(obj, def, m);
        continue;
      }
      const element_def* child = defs_.find_child(def, name, &chosen);
      scope s(*this, name);
      if (child == nullptr) {
        error(issue_type::structure, "Unknown element '" + name + "'");
        continue;
      }
      std::string_view type = element_type(*child, chosen);
      if (is_resource_root && name == "id") type = "id";  // Resource.id is System.String in the R4 snapshots
      if (is_resource_root && name == "contained" && in_contained) continue;  // reported in resource()
      if (child->is_choice() && repeated_choice(obj, def, *child, m)) {
        error(issue_type::structure, "Only one type of '" + child->name + "' is allowed; found more than one");
        continue;
      }
      element(obj, *child, type, m.val, name);
    }
    required_children(obj, def);
    --depth_;
  }

  // True when a member before `current` already gave a value to the choice element `choice`.
  bool repeated_choice(const value& obj, const element_def& def, const element_def& choice, const member& current) const {
    std::string_view base = choice.choice_base();
    for (const auto& m : obj.members()) {
      if (&m == &current) return false;
      if (m.name.size() > base.size() && m.name.starts_with(base) && defs_.find_child(def, m.name) == &choice) return true;
    }
    return false;
  }

  void required_children(const value& obj, const element_def& def) {
    if (def.children == nullptr) return;
    for (const element_def* child : *def.children) {
      if (child->min == 0) continue;
      bool present = false;
      if (child->is_choice()) {
        std::string_view base = child->choice_base();
        for (const auto& m : obj.members()) {
          std::string_view n = m.name;
          if (!n.empty() && n[0] == '_') n.remove_prefix(1);
          if (n.size() > base.size() && n.starts_with(base) && defs_.find_child(def, n) == child) {
            present = true;
            break;
          }
        }
      } else {
        present = obj.find(child->name) != nullptr || find_underscore(obj, child->name) != nullptr;
      }
      if (!present) {
        scope s(*this, child->name);
        std::string message = "Missing required element '" + child->name + "'";
        message += " (minimum cardinality " + std::to_string(child->min) + ")";
        error(issue_type::required, std::move(message));
      }
    }
  }

  // --- elements -----------------------------------------------------------------------------
  void element(const value& parent, const element_def& def, std::string_view type, const value& v,
               std::string_view name) {
    if (type.empty()) {
      error(issue_type::structure, "Element '" + std::string(name) + "' has no usable type in the definitions");
      return;
    }
    bool primitive = is_primitive(type);
    if (def.max == 0) {
      error(issue_type::structure, "Element '" + std::string(name) + "' is not allowed here (maximum cardinality 0)");
      return;
    }
    if (def.is_array()) {
      if (!v.is_array()) {
        error(issue_type::structure, "Element '" + std::string(name) + "' must be a JSON array (maximum cardinality " +
                                         max_text(def.max) + ")");
        item(def, type, primitive, v);
        return;
      }
      const auto& items = v.items();
      if (items.empty()) {
        error(issue_type::structure, "Empty arrays are not allowed in FHIR JSON");
        return;
      }
      if (items.size() > def.max)
        error(issue_type::structure, "Element '" + std::string(name) + "' has " + std::to_string(items.size()) +
                                         " values, at most " + max_text(def.max) + " allowed");
      if (items.size() < def.min)
        error(issue_type::required, "Element '" + std::string(name) + "' has " + std::to_string(items.size()) +
                                        " values, at least " + std::to_string(def.min) + " required");
      const value* extensions = primitive ? find_underscore(parent, name) : nullptr;
      for (std::size_t i = 0; i < items.size(); ++i) {
        scope s(*this, i);
        if (items[i].is_null()) {
          bool has_extension = extensions != nullptr && extensions->is_array() && i < extensions->items().size() &&
                               extensions->items()[i].is_object();
          if (!primitive || !has_extension) error(issue_type::structure, "Null values are not allowed here");
          continue;
        }
        item(def, type, primitive, items[i]);
      }
      return;
    }
    if (v.is_array()) {
      error(issue_type::structure, "Element '" + std::string(name) + "' must be a single value, not an array (maximum cardinality 1)");
      return;
    }
    if (v.is_null()) {
      error(issue_type::structure, "Null values are not allowed here");
      return;
    }
    item(def, type, primitive, v);
  }

  static std::string max_text(std::uint32_t max) { return max == unbounded ? "*" : std::to_string(max); }

  void item(const element_def& def, std::string_view type, bool primitive, const value& v) {
    if (v.is_raw_json()) return;  // already-serialised content is not re-validated here
    if (primitive) {
      primitive_value(def, type, v);
      return;
    }
    if (!v.is_object()) {
      error(issue_type::structure, "Expected a JSON object for type " + std::string(type));
      return;
    }
    if (type == "Resource" || type == "DomainResource") {
      bool contained = def.name == "contained";
      resource(v, {}, contained);
      return;
    }
    const element_def* shape = &def;
    if (def.is_choice()) {
      const type_def* t = defs_.find_type(type);
      if (t == nullptr) {
        error(issue_type::structure, "Unknown type " + std::string(type));
        return;
      }
      shape = &t->root;
    }
    object(v, *shape, false, false);
    if (type == "Extension") extension_rules(v);
    if (def.binding == binding_strength::required && options_.check_required_bindings && !def.value_set.empty()) {
      if (type == "Coding") {
        coding_binding(v, def.value_set);
      } else if (type == "CodeableConcept") {
        if (const value* codings = v.find("coding"); codings != nullptr && codings->is_array()) {
          scope s(*this, "coding");
          for (std::size_t i = 0; i < codings->items().size(); ++i) {
            scope si(*this, i);
            if (codings->items()[i].is_object()) coding_binding(codings->items()[i], def.value_set);
          }
        }
      }
    }
  }

  void primitive_value(const element_def& def, std::string_view type, const value& v) {
    const type_def* t = defs_.find_type(type);
    json_primitive expected = t != nullptr ? t->json : json_primitive::string;
    bool kind_ok = (expected == json_primitive::string && v.is_string()) ||
                   (expected == json_primitive::number && v.is_number()) ||
                   (expected == json_primitive::boolean && v.is_boolean());
    if (!kind_ok) {
      static constexpr std::string_view names[] = {"a JSON string", "a JSON number", "a JSON boolean"};
      error(issue_type::structure,
            "Type " + std::string(type) + " must be " + std::string(names[static_cast<int>(expected)]) + ", found " +
                std::string(kind_name(v)));
      return;
    }
    const std::string& text = v.text();
    if (v.is_string() && text.empty()) {
      error(issue_type::structure, "Empty strings are not allowed in FHIR JSON");
      return;
    }
    if (!is_valid_primitive(type, text)) {
      std::string shown = text.size() > 100 ? text.substr(0, 100) + "..." : text;
      error(issue_type::value, "Invalid " + std::string(type) + " value '" + shown + "'");
      return;
    }
    if (def.xhtml || type == "xhtml") narrative_div(text);
    if (type == "code" && def.binding == binding_strength::required && options_.check_required_bindings &&
        !def.value_set.empty())
      code_binding(text, def.value_set);
  }

  static std::string_view kind_name(const value& v) {
    switch (v.kind()) {
      case value_kind::null: return "null";
      case value_kind::boolean: return "a boolean";
      case value_kind::number: return "a number";
      case value_kind::string: return "a string";
      case value_kind::object: return "an object";
      case value_kind::array: return "an array";
      case value_kind::raw_json: return "raw JSON";
    }
    return "?";
  }

  // --- primitive extensions (_name) ---------------------------------------------------------
  void primitive_extension_member(const value& obj, const element_def& def, const member& m) {
    std::string_view base = std::string_view(m.name).substr(1);
    std::string chosen;
    const element_def* child = base.empty() ? nullptr : defs_.find_child(def, base, &chosen);
    scope s(*this, base);
    if (child == nullptr || !is_primitive(element_type(*child, chosen))) {
      error(issue_type::structure, "Unknown element '" + m.name + "'");
      return;
    }
    const value* values = obj.find(base);
    if (child->is_array()) {
      if (!m.val.is_array()) {
        error(issue_type::structure, "Element '" + m.name + "' must be a JSON array aligned with '" +
                                         std::string(base) + "'");
        return;
      }
      const auto& items = m.val.items();
      if (items.empty()) {
        error(issue_type::structure, "Empty arrays are not allowed in FHIR JSON");
        return;
      }
      if (values != nullptr && values->is_array() && values->items().size() != items.size()) {
        error(issue_type::structure, "Element '" + m.name + "' has " + std::to_string(items.size()) +
                                         " entries but '" + std::string(base) + "' has " +
                                         std::to_string(values->items().size()) + "; the arrays must be aligned");
      }
      if (values == nullptr && items.size() > child->max)
        error(issue_type::structure, "Element '" + m.name + "' has too many entries");
      for (std::size_t i = 0; i < items.size(); ++i) {
        scope si(*this, i);
        if (items[i].is_null()) {
          bool has_value = values != nullptr && values->is_array() && i < values->items().size() &&
                           !values->items()[i].is_null();
          if (!has_value) error(issue_type::structure, "Null in both the value and the extension array");
          continue;
        }
        primitive_extension_object(items[i]);
      }
      return;
    }
    if (m.val.is_array()) {
      error(issue_type::structure, "Element '" + m.name + "' must be a single object, not an array");
      return;
    }
    primitive_extension_object(m.val);
  }

  // {id, extension} of a primitive.
  void primitive_extension_object(const value& v) {
    if (!v.is_object()) {
      error(issue_type::structure, "A primitive's extension element must be a JSON object");
      return;
    }
    const type_def* element = defs_.find_type("Element");
    if (element == nullptr) return;
    object(v, element->root, false, false);
  }

  // --- rules of particular types ------------------------------------------------------------
  void extension_rules(const value& ext) {
    bool has_value = false;
    for (const auto& m : ext.members()) {
      if (m.name.size() > 5 && m.name.starts_with("value")) has_value = true;
      if (m.name.size() > 6 && m.name.starts_with("_value")) has_value = true;
    }
    const value* nested = ext.find("extension");
    bool has_nested = nested != nullptr && !(nested->is_array() && nested->items().empty());
    if (has_value && has_nested)
      error(issue_type::invariant, "Extension must have either extensions or value[x], not both (ext-1)");
    else if (!has_value && !has_nested)
      error(issue_type::invariant, "Extension must have either extensions or value[x] (ext-1)");
  }

  void narrative_div(const std::string& text) {
    std::string_view s = text;
    while (!s.empty() && (s.front() == ' ' || s.front() == '\n' || s.front() == '\r' || s.front() == '\t'))
      s.remove_prefix(1);
    if (!s.starts_with("<div") || s.size() < 5 || (s[4] != ' ' && s[4] != '>' && s[4] != '\n' && s[4] != '/')) {
      error(issue_type::value, "Narrative div must be an XHTML <div> element");
      return;
    }
    std::string_view tag = s.substr(0, s.find('>'));
    if (tag.find("http://www.w3.org/1999/xhtml") == std::string_view::npos || tag.find("xmlns") == std::string_view::npos)
      error(issue_type::value, "Narrative div must be in the XHTML namespace (xmlns=\"http://www.w3.org/1999/xhtml\")");
  }

  static bool code_in(const std::unordered_set<std::string>& codes, std::string_view code) {
    // Entries are "system|code"; try the first entry's system before scanning.
    if (codes.empty()) return false;
    std::string_view first = *codes.begin();
    if (auto bar = first.find('|'); bar != std::string_view::npos) {
      std::string key(first.substr(0, bar + 1));
      key += code;
      if (codes.contains(key)) return true;
    }
    for (const std::string& entry : codes) {
      std::string_view e = entry;
      auto bar = e.find('|');
      if (bar != std::string_view::npos && e.substr(bar + 1) == code) return true;
    }
    return false;
  }

  void code_binding(const std::string& code, const std::string& value_set) {
    const auto* codes = defs_.value_set_codes(value_set);
    if (codes == nullptr) return;
    if (!code_in(*codes, code))
      error(issue_type::code_invalid, "The code '" + code + "' is not in the required value set " + value_set);
  }

  void coding_binding(const value& coding, const std::string& value_set) {
    const value* system = coding.find("system");
    const value* code = coding.find("code");
    if (system == nullptr || code == nullptr || !system->is_string() || !code->is_string()) return;
    const auto* codes = defs_.value_set_codes(value_set);
    if (codes == nullptr) return;
    std::string key = system->text() + "|" + code->text();
    if (codes->contains(key)) return;
    std::string prefix = system->text() + "|";
    bool system_known = false;
    for (const std::string& entry : *codes) {
      if (entry.starts_with(prefix)) {
        system_known = true;
        break;
      }
    }
    if (system_known) {
      scope s(*this, "code");
      error(issue_type::code_invalid, "The code '" + code->text() + "' of system " + system->text() +
                                          " is not in the required value set " + value_set);
    }
  }

  const definitions& defs_;
  issue_list& issues_;
  const validation_options& options_;
  std::string path_;
  int depth_ = 0;
};

}  // namespace

bool validate_resource(const value& resource, issue_list& issues, const validation_options& options,
                       const definitions& defs) {
  std::size_t before = issues.size();
  walker w(defs, issues, options);
  w.resource(resource, options.expected_type, false);
  for (std::size_t i = before; i < issues.size(); ++i) {
    severity level = issues.all()[i].level;
    if (level == severity::error || level == severity::fatal) return false;
  }
  return true;
}

}  // namespace yilian::fhir
