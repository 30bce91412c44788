#include "yilian/fhir/subset.hpp"

#include <algorithm>
#include <string_view>

namespace yilian::fhir {

namespace {

constexpr std::string_view subsetted_system = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue";
constexpr std::string_view subsetted_code = "SUBSETTED";

// "_birthDate" is the JSON companion of "birthDate": it goes wherever its primitive goes.
std::string_view element_name(std::string_view json_name) {
  return json_name.size() > 1 && json_name.front() == '_' ? json_name.substr(1) : json_name;
}

bool is_empty_container(const value& v) {
  return (v.is_object() && v.members().empty()) || (v.is_array() && v.items().empty());
}

// Recursive reduction to the elements marked isSummary. Records whether anything was removed.
class summary_reducer {
 public:
  explicit summary_reducer(const definitions& defs) : defs_(defs) {}

  bool removed() const noexcept { return removed_; }

  // Keeps the summary members of `object`, whose element children are those of `parent`.
  value reduce_object(const value& object, const element_def& parent) {
    value out = value::make_object();
    for (const member& m : object.members()) {
      if (m.name == "resourceType") {  // not an element of the definitions, but always stays
        out.members().push_back(m);
        continue;
      }
      std::string chosen;
      const element_def* element = defs_.find_child(parent, element_name(m.name), &chosen);
      if (!element || !element->is_summary) {
        removed_ = true;
        continue;
      }
      value reduced = m.name.starts_with('_') ? m.val : reduce_element(m.val, *element, chosen);
      if (is_empty_container(reduced)) {
        removed_ = true;
        continue;
      }
      out.members().push_back({m.name, std::move(reduced)});
    }
    return out;
  }

 private:
  // The shape whose children describe a value of `element` (nullptr: keep the value whole).
  const element_def* shape_of(const element_def& element, const std::string& chosen_type) const {
    // Extensions carry their meaning in url + value, which are not summary flagged themselves.
    if (!chosen_type.empty()) {
      if (chosen_type == "Extension") return nullptr;
      if (element.is_choice()) {
        const type_def* type = defs_.find_type(chosen_type);
        return type && type->kind == type_kind::complex_type ? &type->root : nullptr;
      }
    }
    if (!element.children || element.children->empty()) return nullptr;  // primitives, resources
    return &element;
  }

  value reduce_element(const value& v, const element_def& element, const std::string& chosen_type) {
    const element_def* shape = shape_of(element, chosen_type);
    if (!shape) return v;
    if (v.is_object()) return reduce_object(v, *shape);
    if (!v.is_array()) return v;
    value out = value::make_array();
    for (const value& item : v.items()) {
      if (!item.is_object()) {
        out.push_back(item);
        continue;
      }
      value reduced = reduce_object(item, *shape);
      if (is_empty_container(reduced)) {
        removed_ = true;
        continue;
      }
      out.push_back(std::move(reduced));
    }
    return out;
  }

  const definitions& defs_;
  bool removed_ = false;
};

bool is_requested(const element_def& element, std::string_view json_name, const std::vector<std::string>& elements) {
  for (const std::string& requested : elements) {
    if (requested == json_name || requested == element.name) return true;
    if (element.is_choice() && requested == element.choice_base()) return true;
  }
  return false;
}

// Top-level selection for text mode and _elements: the element is kept or dropped as a whole.
bool keep_top_level(const definitions& defs, const element_def& root, std::string_view json_name, summary_mode mode,
                    const std::vector<std::string>& elements) {
  std::string_view name = element_name(json_name);
  if (name == "resourceType" || name == "id" || name == "meta") return true;
  const element_def* element = defs.find_child(root, name);
  if (!element) return false;
  if (element->min > 0) return true;
  if (mode == summary_mode::text) return name == "text";
  return is_requested(*element, name, elements);
}

void add_subsetted_tag(value& resource) {
  value* meta = resource.find("meta");
  if (!meta) {
    // Right after resourceType and id, where meta usually sits.
    auto& members = resource.members();
    auto position = std::find_if(members.begin(), members.end(),
                                 [](const member& m) { return m.name != "resourceType" && m.name != "id"; });
    meta = &members.insert(position, member{"meta", value::make_object()})->val;
  }
  if (!meta->is_object()) return;  // malformed input: nothing sensible to add to
  value* tags = meta->find("tag");
  if (!tags) tags = &meta->set("tag", value::make_array());
  if (!tags->is_array()) return;
  for (const value& tag : tags->items()) {
    const value* system = tag.find("system");
    const value* code = tag.find("code");
    if (system && code && system->text() == subsetted_system && code->text() == subsetted_code) return;
  }
  value tag = value::make_object();
  tag.set("system", value::make_string(std::string(subsetted_system)));
  tag.set("code", value::make_string(std::string(subsetted_code)));
  tag.set("display", value::make_string("subsetted"));
  tags->push_back(std::move(tag));
}

}  // namespace

value subset_resource(const value& resource, summary_mode mode, const std::vector<std::string>& elements,
                      const definitions& defs) {
  if (!resource.is_object()) return resource;
  const value* resource_type = resource.find("resourceType");
  if (!resource_type || !resource_type->is_string()) return resource;
  const type_def* type = defs.find_type(resource_type->text());
  if (!type || type->kind != type_kind::resource) return resource;

  value out = value::make_object();
  bool removed = false;
  if (mode == summary_mode::summary) {
    summary_reducer reducer(defs);
    out = reducer.reduce_object(resource, type->root);
    removed = reducer.removed();
  } else if (mode == summary_mode::data) {
    for (const member& m : resource.members()) {
      if (element_name(m.name) == "text") {
        removed = true;
        continue;
      }
      out.members().push_back(m);
    }
  } else if (mode == summary_mode::text || !elements.empty()) {
    for (const member& m : resource.members()) {
      if (!keep_top_level(defs, type->root, m.name, mode, elements)) {
        removed = true;
        continue;
      }
      out.members().push_back(m);
    }
  } else {
    return resource;
  }
  if (removed) add_subsetted_tag(out);
  return out;
}

}  // namespace yilian::fhir
