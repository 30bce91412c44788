// Transaction and batch Bundles (POST [base]): the rules of FHIR R4 http.html#transaction on top
// of the single interactions, which the REST layer runs for each entry through `bundle_host`.
//
// A transaction is one PostgreSQL transaction (resource_store::begin): entries run in the order
// the specification requires (DELETE, POST, PUT/PATCH, GET/HEAD), `urn:uuid:`/`urn:oid:` fullUrls
// become the ids the server assigns (decided before any write, so entries may reference each
// other in any order), conditional creates and updates are matched first, conditional references
// (`Patient?identifier=...`) are resolved when their entry runs (so they see earlier entries),
// and the first failing entry rolls everything back and is named in the OperationOutcome.
// A batch runs each entry on its own; every entry gets its own status or OperationOutcome.
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include "yilian/fhir/value.hpp"
#include "yilian/gateway/http_message.hpp"
#include "yilian/gateway/resource_store.hpp"

namespace yilian::gateway::detail {

// One entry's interaction as the REST layer runs it.
struct entry_call {
  std::string method;                    // GET HEAD POST PUT PATCH DELETE
  std::string url;                       // relative to the base: "Patient/1", "Patient?identifier=x"
  std::vector<http_header> headers;      // If-Match, If-None-Exist, If-None-Match, Prefer, Content-Type
  const fhir::value* resource = nullptr; // parsed body (POST, PUT, PATCH Parameters)
  bool validated = true;                 // `resource` was validated with the whole Bundle
  std::string raw_body;                  // PATCH with a JSON Patch document
  std::string assigned_id;               // POST in a transaction: create under this id
  const request_context* context = nullptr;
};

struct entry_reply {
  http_response response;    // JSON body when there is one
  std::string last_updated;  // FHIR instant of the version written or read ("" when none)
};

struct bundle_host {
  // Runs one interaction; failures come back as a response with an OperationOutcome, except
  // conflicts a whole transaction should be retried for, which are thrown.
  std::function<entry_reply(const entry_call&)> dispatch;
  // Ids of current resources of `type` matching a query string (at most `limit`); throws
  // fhir_failure (400) when the criteria are malformed.
  std::function<std::vector<std::string>(const request_context&, const std::string& type, const std::string& query,
                                         std::size_t limit)>
      find;
};

struct bundle_options {
  std::size_t max_entries = 20000;  // more: 413
  bool return_representation = false;  // Prefer: return=representation: entry responses carry the resource
  std::string base_url;                // for the location of a conditional create's existing match
};

// `bundle` has been parsed and validated as a Bundle. Returns the transaction-response or
// batch-response Bundle; a failed transaction throws fhir_failure naming the entry. When `ctx`
// carries an open store transaction, a transaction Bundle joins it and the caller commits.
fhir::value process_bundle(resource_store& store, const request_context& ctx, fhir::value bundle,
                           const bundle_host& host, const bundle_options& options);

}  // namespace yilian::gateway::detail
