// JSON Patch (RFC 6902) applied to a value tree; errors name the failing operation.
#pragma once

#include "yilian/fhir/issues.hpp"
#include "yilian/fhir/value.hpp"

namespace yilian::fhir {

// `patch` is the parsed JSON Patch document (an array of operations). On failure `target` is left
// unchanged, an issue (code `processing` for a failed test, `invalid` for a malformed patch) is
// added and the function returns false.
bool apply_json_patch(value& target, const value& patch, issue_list& issues);

}  // namespace yilian::fhir
