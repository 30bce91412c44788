// FHIR R4 search over the index tables: the parsed form of a search request and its result.
//
// The REST layer (fhir_api) splits the query string into filter criteria and result parameters
// (_sort, _count, _include...); run_search() turns the criteria into one SQL statement whose
// every value is a bound parameter, pages with keyset cursors (stable while data changes), and
// adds _include/_revinclude resources. Malformed criteria throw store_error(invalid_criteria)
// with a message naming the parameter; unknown parameters are returned, never guessed at.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "yilian/gateway/resource_store.hpp"

namespace yilian::gateway {

// `automatic` (no _total): the total only when it costs nothing — the first page holds every
// match. Counting 25,000 matches costs more than finding the page, so counting is on request.
enum class total_mode { automatic, none, estimate, accurate };

struct sort_key {
  std::string param;  // search parameter code, "_id" or "_lastUpdated"
  bool descending = false;
};

struct include_spec {
  std::string source_type;   // "Observation" ("*" only with param "*")
  std::string param;         // reference parameter code, "*" = all
  std::string target_type;   // "" = any
  bool iterate = false;
};

struct search_query {
  std::vector<criterion> criteria;  // name may carry a modifier and chain: "subject:Patient.name:exact"
  // Compartment search (Patient/123/Observation): the resources linked to this one.
  std::string compartment_type;
  std::string compartment_id;
  std::vector<sort_key> sort;
  std::size_t count = 50;
  std::string cursor;               // opaque keyset position from a previous page ("" = first page)
  total_mode total = total_mode::automatic;
  std::vector<include_spec> includes;
  std::vector<include_spec> revincludes;
  std::string base_url;             // absolute references to this base are matched as relative ones
};

struct search_result {
  std::vector<stored_resource> matches;
  std::vector<stored_resource> included;
  std::optional<std::int64_t> total;
  std::string next_cursor;          // "" = last page
  std::string prev_cursor;          // "" = first page
};

// Splits a query parameter name into parameter code and modifier ("code:text" -> code, text).
// Criteria whose parameter is not known for `type` are reported by unknown_criteria().
std::vector<std::string> unknown_criteria(std::string_view type, const std::vector<criterion>& criteria);

search_result run_search(resource_store& store, const request_context& ctx, std::string_view type,
                         const search_query& query);

// EXPLAIN (ANALYZE, BUFFERS) of the statement that finds the matches (benchmarks and debugging).
std::string explain_search(resource_store& store, const request_context& ctx, std::string_view type,
                           const search_query& query);

}  // namespace yilian::gateway
