// FHIR R4 knowledge derived from the official definitions (hl7.fhir.r4.examples@4.0.1):
// types with their elements (cardinality, types, choice types, bindings), required value sets,
// search parameters and compartments. Loaded from the compact file that scripts/gen-definitions.py derives
// from the package; the compact file is compiled into the library (see embedded_definitions()).
//
// Navigation model: every type (resource, complex datatype, primitive) has a root `element_def`
// whose `children` are its direct elements in definition order (the order XML needs). An
// element's children are either inline (BackboneElement), the children of its single datatype
// (e.g. HumanName), or those of the element a contentReference names (Questionnaire.item.item).
// After loading, `children` is never null; it is an empty list for:
//  - primitive-valued elements (Patient.birthDate): the JSON companion "_birthDate" has the shape of
//    the primitive type's root, find_type("date")->root.children = {id, extension};
//  - choice elements (Observation.value[x]): find_child reports the chosen type, whose root
//    (find_type(chosen)->root) gives the children;
//  - Resource-typed elements (Bundle.entry.resource, DomainResource.contained): the resourceType in
//    the data names the type.
// A primitive type's `<type>.value` element (string.value) is never a child: it is the JSON value
// itself or the XML value attribute. find_element("string.value") still finds it.
#pragma once

#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace yilian::fhir {

enum class type_kind : std::uint8_t { primitive_type, complex_type, resource, logical };

enum class binding_strength : std::uint8_t { none, example, preferred, extensible, required };

// How a primitive's value is written in JSON.
enum class json_primitive : std::uint8_t { string, number, boolean };

constexpr std::uint32_t unbounded = std::numeric_limits<std::uint32_t>::max();

struct type_def;

struct element_def {
  std::string path;   // "Patient.contact.name"
  std::string name;   // last path segment: "name", or "value[x]" for a choice
  std::uint32_t min = 0;
  std::uint32_t max = 1;                 // `unbounded` for "*"
  std::vector<std::string> type_codes;   // "HumanName", "Reference", "string", "BackboneElement"...
  std::vector<std::string> target_profiles;  // Reference/canonical targets (resource type names)
  std::string content_reference;         // "#Questionnaire.item" when the element reuses another's shape
  binding_strength binding = binding_strength::none;
  std::string value_set;                 // canonical URL (without |version)
  bool is_summary = false;
  bool is_modifier = false;
  bool xml_attribute = false;            // representation xmlAttr (Element.id, Extension.url)
  bool xhtml = false;                    // Narrative.div

  // Resolved by the loader (never null after loading): direct children in definition order; empty
  // for primitive-valued, choice and Resource-typed elements. For a datatype-typed element this
  // points at the datatype's children (the same list for every HumanName).
  const std::vector<const element_def*>* children = nullptr;

  bool is_choice() const noexcept { return name.size() > 3 && name.ends_with("[x]"); }
  bool is_array() const noexcept { return max > 1; }
  // Choice base: "value" for "value[x]".
  std::string_view choice_base() const noexcept {
    return is_choice() ? std::string_view(name).substr(0, name.size() - 3) : std::string_view(name);
  }
};

struct type_def {
  std::string name;      // "Patient", "HumanName", "string"
  type_kind kind = type_kind::complex_type;
  bool is_abstract = false;
  std::string base;      // "DomainResource", "Element", ...
  // Primitive types only.
  json_primitive json = json_primitive::string;
  std::string regex;     // the official regex of the primitive's value, if any
  element_def root;      // root.children are the type's elements
};

struct search_param_component {
  std::string definition;  // canonical URL of the component's SearchParameter
  std::string expression;
};

struct search_param_def {
  std::string url;
  std::string code;                    // "identifier"
  std::vector<std::string> base;       // resource types ("Resource" for _id etc.)
  std::string type;                    // number date string token reference composite quantity uri special
  std::string expression;              // FHIRPath
  std::vector<std::string> target;     // reference targets
  std::vector<std::string> modifiers;
  std::vector<std::string> comparators;
  std::vector<search_param_component> components;
};

class definitions {
 public:
  // Parses a compact definitions document (JSON text). Throws std::runtime_error on malformed input.
  static std::unique_ptr<definitions> load(std::string_view compact_json);
  // The definitions compiled into the binary; loaded once, thread-safe, never null.
  static const definitions& r4();

  const type_def* find_type(std::string_view name) const noexcept;
  bool is_resource_type(std::string_view name) const noexcept;
  // Concrete (non-abstract) resource type names, sorted.
  const std::vector<std::string>& resource_types() const noexcept { return resource_types_; }

  // Child of `parent` (a type root or an element) named as in JSON. For a choice element the JSON
  // name carries the type ("valueQuantity"): `chosen_type` receives "Quantity". For other children
  // it receives the element's type code if it has exactly one, else "" (contentReference).
  const element_def* find_child(const element_def& parent, std::string_view json_name,
                                std::string* chosen_type = nullptr) const noexcept;

  // Element by full path ("Observation.value[x]", "Questionnaire.item.item"), following datatypes
  // and contentReferences.
  const element_def* find_element(std::string_view path) const noexcept;

  // Codes allowed by a value set used in a required binding, as "system|code" (a "|version" on
  // `url` is ignored); nullptr when the set is not expandable from the definitions (too large,
  // unresolvable filter, external code system such as mimetypes or UCUM): skip the check then.
  const std::unordered_set<std::string>* value_set_codes(std::string_view url) const noexcept;

  // Search parameters applicable to a resource type (including those based on Resource and
  // DomainResource): the type's own first, then inherited ones.
  std::vector<const search_param_def*> search_params(std::string_view resource_type) const;
  const search_param_def* find_search_param(std::string_view resource_type, std::string_view code) const noexcept;
  const std::vector<search_param_def>& all_search_params() const noexcept { return search_params_; }

  // Compartments (the official CompartmentDefinitions: "Patient", "Encounter", "RelatedPerson",
  // "Practitioner", "Device").
  // Search parameter codes that place `resource_type` in a compartment of `compartment_type`, e.g.
  // ("Patient", "Observation") -> {"subject", "performer"}; nullptr when the type is not in that
  // compartment (an empty list is never returned). "{def}" entries (the compartment resource
  // itself) are omitted.
  const std::vector<std::string>* compartment_params(std::string_view compartment_type,
                                                     std::string_view resource_type) const noexcept;
  // Resource types that are members of the compartment, sorted; empty for an unknown compartment.
  const std::vector<std::string>& compartment_members(std::string_view compartment_type) const noexcept;

  // Implementation details are exposed to the loader only.
  struct builder;

 private:
  definitions() = default;

  std::vector<std::unique_ptr<type_def>> types_;
  std::unordered_map<std::string, const type_def*> types_by_name_;
  std::vector<std::unique_ptr<element_def>> elements_;  // owned backbone/children elements
  std::vector<std::unique_ptr<std::vector<const element_def*>>> child_lists_;
  std::unordered_map<std::string, const element_def*> elements_by_path_;
  std::vector<std::string> resource_types_;
  std::unordered_map<std::string, std::unordered_set<std::string>> value_sets_;
  std::vector<search_param_def> search_params_;
  std::unordered_map<std::string, std::vector<std::size_t>> search_params_by_base_;
  struct compartment {
    std::vector<std::string> members;  // sorted
    std::unordered_map<std::string, std::vector<std::string>> params_by_member;
  };
  std::unordered_map<std::string, compartment> compartments_;
};

}  // namespace yilian::fhir
