// Structural validation of a resource against the official definitions: unknown elements, wrong
// JSON types, cardinality, primitive formats, choice types, contained resources, extensions,
// required bindings. Every problem becomes an issue with the element path
// ("Patient.name[1].given[0]").
#pragma once

#include <string_view>

#include "yilian/fhir/definitions.hpp"
#include "yilian/fhir/issues.hpp"
#include "yilian/fhir/value.hpp"

namespace yilian::fhir {

struct validation_options {
  bool check_required_bindings = true;
  // When set, resourceType must equal this (the type named by the URL).
  std::string_view expected_type;
};

// Returns true when no error-level issue was added.
bool validate_resource(const value& resource, issue_list& issues, const validation_options& options = {},
                       const definitions& defs = definitions::r4());

// Lexical check of a primitive value against its FHIR type ("date", "instant", "id", ...).
bool is_valid_primitive(std::string_view type, std::string_view text);

}  // namespace yilian::fhir
