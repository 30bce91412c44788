// The FHIR R4 REST API as a function from request to response: routing, content negotiation,
// the interactions (create, read, vread, update, patch, delete, history, conditional variants,
// basic search, $validate, metadata) and the single place where failures become an
// OperationOutcome with the right status. It never touches a socket.
#pragma once

#include <memory>
#include <string>

#include "yilian/fhir/definitions.hpp"
#include "yilian/gateway/http_message.hpp"
#include "yilian/gateway/operation.hpp"
#include "yilian/gateway/resource_store.hpp"

namespace yilian::gateway {

struct fhir_api_options {
  std::string base_path = "/fhir";  // where the API is mounted
  std::string base_url;             // public base URL; empty = "http://" + Host + base_path
  std::size_t default_page_size = 50;
  std::size_t max_page_size = 1000;
  std::size_t max_bundle_entries = 20000;  // transaction/batch Bundles with more entries: 413
  std::string software_version = "0.1.0";
};

class fhir_api {
 public:
  fhir_api(resource_store& store, fhir_api_options options, const fhir::definitions& defs = fhir::definitions::r4());
  ~fhir_api();

  // Never throws: every failure is answered with an OperationOutcome.
  http_response handle(const http_request& request) const;

  // Validates and runs a transaction (or batch) Bundle built in code, e.g. by a message adapter,
  // as POST [base] would. With `ctx.transaction` set, a transaction joins that open store
  // transaction and the caller commits (to record the message with its resources). Returns the
  // transaction-response; throws fhir_failure (status and OperationOutcome, naming the entry).
  fhir::value process_transaction(const request_context& ctx, fhir::value bundle) const;

  // Registers an operation (before serving: not thread-safe against handle()). It is routed by
  // level and name and listed in the CapabilityStatement.
  void add_operation(operation_definition operation);

  // The CapabilityStatement this server really supports (JSON text).
  const std::string& capability_statement_json() const noexcept;

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace yilian::gateway
