// Reduced copies of a resource as FHIR R4 `_summary` and `_elements` define them (search and read,
// http://hl7.org/fhir/R4/search.html#summary and #elements).
#pragma once

#include <string>
#include <vector>

#include "yilian/fhir/definitions.hpp"
#include "yilian/fhir/value.hpp"

namespace yilian::fhir {

enum class summary_mode { full, summary, text, data };

// A copy of `resource` reduced as `_summary` (mode) and `_elements` (elements) specify:
//  full:     unchanged (unless `elements` is given);
//  summary:  only elements the definitions mark isSummary, recursively into backbone elements and
//            datatypes, each following its own flags (Patient.name is summary, so each HumanName
//            keeps its summary elements: all but id and extension). Extensions that stay (backbone
//            modifierExtension) and Resource-typed elements (Bundle.entry.resource) stay whole.
//            Narrative, contained resources and, in R4, the resource's own extension and
//            modifierExtension are not summary;
//  text:     id, meta, text and the top-level mandatory elements (min > 0);
//  data:     everything except text (narrative);
//  elements: (non-empty list of top-level names, "value" or "valueQuantity" for a choice; applied
//            when mode is full) those plus resourceType, id, meta and the mandatory top-level
//            elements.
// Unknown elements are dropped under summary, text and elements. Whenever something was removed,
// meta.tag gets the SUBSETTED code of http://terminology.hl7.org/CodeSystem/v3-ObservationValue
// (once). JSON companions of primitives ("_birthDate") follow their primitive. A `resource` that
// is not an object with a resourceType the definitions know is returned unchanged.
value subset_resource(const value& resource, summary_mode mode, const std::vector<std::string>& elements,
                      const definitions& defs = definitions::r4());

}  // namespace yilian::fhir
