// Search indexing: the values of every applicable SearchParameter of a resource, extracted by
// evaluating the parameters' FHIRPath expressions, as rows of the index tables (migration 2):
// index_string, index_token, index_reference, index_date, index_number, index_quantity, index_uri.
//
// The normalisation and value parsing here are shared with the query side (search_query.cpp), so
// a stored value and a searched value are always normalised the same way.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "yilian/fhir/definitions.hpp"
#include "yilian/fhir/value.hpp"
#include "yilian/gateway/resource_store.hpp"

namespace yilian::gateway::detail {

// Composite parameters: each item of the composite's expression gets a group number > 0; its
// components are indexed as rows named "<code>$<component index>" (0-based) with that group.
// Plain rows have group 0.
struct string_row {
  std::string param;
  std::string norm;   // normalise_string(exact)
  std::string exact;
  int group = 0;
};

struct token_row {
  std::string param;  // "<code>:of-type" rows: system = type system, code = "<type code>|<value>"
  std::string system; // "" = no system
  std::string code;
  std::string text_norm;  // normalised Coding.display / CodeableConcept.text / Identifier.type.text
  int group = 0;
};

struct reference_row {
  std::string param;
  std::string target_type;  // "Patient" ("" when unknown: canonical or foreign absolute URL)
  std::string target_id;    // "123"
  std::string url;          // absolute or canonical URL without |version ("" for relative refs)
  std::string version;      // "|version" of a canonical or "_history/n" of a reference
  int group = 0;
};
// Reference.identifier is indexed as a token row named "<code>:identifier".

struct date_row {
  std::string param;
  std::string low;   // timestamptz text, inclusive; "-infinity" for an open start
  std::string high;  // timestamptz text, exclusive; "infinity" for an open end
  int group = 0;
};

struct number_row {
  std::string param;
  std::string value;  // decimal text as written
  int group = 0;
};

struct quantity_row {
  std::string param;
  std::string value;  // decimal text as written
  std::string system;
  std::string code;   // Quantity.code, else Quantity.unit
  std::optional<std::string> canonical_value;  // UCUM canonical (when the unit converts)
  std::optional<std::string> canonical_code;
  int group = 0;
};

struct uri_row {
  std::string param;
  std::string uri;
  int group = 0;
};

struct index_rows {
  std::vector<string_row> strings;
  std::vector<token_row> tokens;
  std::vector<reference_row> references;
  std::vector<date_row> dates;
  std::vector<number_row> numbers;
  std::vector<quantity_row> quantities;
  std::vector<uri_row> uris;
};

// Every applicable search parameter of `resource` (type from resourceType), including those of
// Resource/DomainResource (_id is not indexed: it is resource_current.res_id; _lastUpdated is
// resource_current.last_updated). Parameters whose expression cannot be evaluated are skipped
// (never an exception for data problems); duplicates within a parameter are removed.
index_rows extract_index_rows(const fhir::definitions& defs, const fhir::value& resource);

// The parameters of `type` that are indexed and searchable: every applicable parameter of the
// definitions whose FHIRPath expression compiles, plus _id and _lastUpdated (columns of the
// resource row). Types "special" (near, _text, _content...) are not supported.
std::vector<const fhir::search_param_def*> searchable_params(const fhir::definitions& defs, std::string_view type);

// Lower case (Unicode simple case folding for Latin, Greek, Cyrillic and full-width forms),
// accents removed (Latin letters with diacritics → base letter), whitespace runs → one space,
// trimmed. Chinese text passes through unchanged.
std::string normalise_string(std::string_view text);

// The range a FHIR date/dateTime/instant value covers at its precision, as timestamptz text:
// "2013" → [2013-01-01T00:00:00+08:00, 2014-01-01T00:00:00+08:00). Values without a time zone
// are read in the alliance's zone (+08:00, China Standard Time). nullopt when malformed.
struct date_range {
  std::string low;
  std::string high;
};
std::optional<date_range> fhir_date_range(std::string_view value);

// Writes the index rows of each committed version (deleting the previous version's rows). A batch
// of writes costs one DELETE and one INSERT per index table, whatever the number of resources.
class search_indexer : public write_participant {
 public:
  explicit search_indexer(const fhir::definitions& defs = fhir::definitions::r4()) : defs_(defs) {}
  void in_transaction(pqxx::transaction_base& tx, const write_event& event) override;
  void in_transaction_batch(pqxx::transaction_base& tx, const std::vector<write_event>& events) override;

 private:
  const fhir::definitions& defs_;
};

}  // namespace yilian::gateway::detail
