// FHIRPath (N1, http://hl7.org/fhirpath/N1, as used by FHIR R4) over the generic value tree.
//
//   auto expr = fhirpath::compile("Patient.name.where(use = 'official').given");  // throws syntax_error
//   fhirpath::collection out = expr.evaluate(patient);                             // throws evaluation_error
//
// A compiled `expression` is immutable and cheap to copy (shared program); evaluate it from any
// number of threads at once. Types come from the R4 definitions: every node item knows its FHIR
// type ("HumanName", "code", "Quantity" for Observation.valueQuantity...), so `is`, `as`, `ofType`
// and choice elements (`Observation.value`) work as the specification says.
//
// Errors: compile() throws `syntax_error` (with the 0-based character offset) for malformed
// expressions and for semantic errors the parser can see (unknown function, wrong argument
// count). evaluate() throws `evaluation_error` for what the specification calls execution errors
// (single() on several items, comparing a string with a number, as() on a collection...).
//
// Limits (documented, not silently wrong):
//  - memberOf/elementDefinition/slice/checkModifiers need a terminology or profile engine and are
//    evaluation errors; conformsTo answers only for the core StructureDefinitions
//    (http://hl7.org/fhir/StructureDefinition/<Type>) and is an error for any other profile;
//    htmlChecks() is always true (narrative is checked by the validator).
//  - UCUM is a table of common units with metric prefixes (mass, length, volume, time, amount,
//    %, [iU], [lb_av], [in_i]...) and their products/quotients ("mg/dL", "m2"). Calendar durations
//    follow the specification: week..millisecond equal their UCUM units, year/month never equal
//    'a'/'mo' (the comparison is empty), and date arithmetic refuses 'a' and 'mo'.
//  - Decimals are exact (128-bit mantissa and the literal's scale); division and the
//    transcendental functions give 8 decimal places.
//  - Regular expressions (matches, matchesFull, replaceMatches) use std::regex, ECMAScript flavour
//    with '.' matching line breaks; literal patterns are compiled once, with the expression.
//  - compile() rejects expressions nested deeper than 100 levels or longer than 2000 operators.
//  - FHIRPath 2.0 additions present in the official R4 test file are implemented too: trim,
//    split, join, encode/decode, escape/unescape, sort, aggregate, precision, lowBoundary,
//    highBoundary, comparable, matchesFull.
//
// resolve() finds contained resources ("#id") and Bundle entries (fullUrl or Type/id) of
// %rootResource. A reference it cannot find still yields an item of the type the reference names
// ("Patient/1" -> a Patient with no content), so "subject.where(resolve() is Patient)" works in
// search parameters without a store.
//
// The `as` operator filters a collection like ofType() (R4 search parameters apply it to
// collections: "Observation.component.value as Quantity"); the as() function keeps the
// single-item rule of the specification. Type tests on FHIR primitives: is() follows the
// definitions' inheritance (code is a string), as()/ofType() match the exact type.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "yilian/fhir/definitions.hpp"
#include "yilian/fhir/value.hpp"

namespace yilian::fhir::fhirpath {

class syntax_error : public std::runtime_error {
 public:
  syntax_error(const std::string& message, std::size_t position)
      : std::runtime_error(message + " (at offset " + std::to_string(position) + ")"), position_(position) {}
  // 0-based offset of the offending character in the expression text.
  std::size_t position() const noexcept { return position_; }

 private:
  std::size_t position_;
};

class evaluation_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Exact decimal: mantissa * 10^-scale. The scale is the literal's precision ("1.50" has scale 2);
// arithmetic keeps it as the specification expects (1.0 = 1.00, 1.2 * 1.8 = 2.16, division to
// 8 places).
struct decimal {
  __extension__ typedef __int128 int128;
  int128 mantissa = 0;
  int scale = 0;

  static std::optional<decimal> parse(std::string_view text);
  static decimal from_integer(std::int64_t v) { return decimal{v, 0}; }
  static decimal from_double(long double v, int scale = 8);
  long double to_double() const;
  std::string to_string() const;
  // -1 / 0 / 1 (exact, scales aligned).
  friend int compare(const decimal& a, const decimal& b);
  decimal rounded(int to_scale) const;  // half away from zero
};

enum class precision : std::uint8_t { year, month, day, hour, minute, second, millisecond };

// Date, DateTime or Time (item_kind tells which); fields below `prec` are zero.
struct temporal {
  int year = 0, month = 0, day = 0, hour = 0, minute = 0, second = 0, millisecond = 0;
  precision prec = precision::year;
  bool has_tz = false;
  int tz_minutes = 0;  // offset east of UTC
};

enum class item_kind : std::uint8_t {
  node,       // an element of the tree (resource, complex or primitive element)
  boolean,
  string,
  integer,
  decimal,
  date,
  datetime,
  time,
  quantity,
  type_info,  // result of type(): `name` and `namespace` members
};

// One element of a FHIRPath collection.
struct item {
  item_kind kind = item_kind::node;
  bool boolean_value = false;
  std::int64_t integer_value = 0;
  decimal decimal_value;        // decimal, quantity value
  temporal temporal_value;      // date, datetime, time
  std::string string_value;     // string, quantity unit, type_info namespace

  // Nodes: the JSON value (null for a primitive that has only extensions), the "_name" companion
  // of a primitive (id/extension), the element definition (null for roots/unknown), the FHIR type
  // ("HumanName", "code", "Patient"; empty when unknown) and, when requested, the path.
  const value* node = nullptr;
  const value* companion = nullptr;
  const element_def* element = nullptr;
  std::string_view fhir_type;   // also the type name of a type_info item
  std::string path;             // "Patient.name[0].given[1]" (evaluate_options::track_paths)

  static item make_boolean(bool b);
  static item make_string(std::string s);
  static item make_integer(std::int64_t i);
  static item make_decimal(decimal d);
  static item make_quantity(decimal d, std::string unit);

  bool is_node() const noexcept { return kind == item_kind::node; }
  // "System" or "FHIR" type name of this item: "Boolean", "String", "HumanName", "code"...
  std::string type_name() const;
  // Text of a primitive (node or system value) as FHIRPath toString() gives it; nullopt otherwise.
  std::optional<std::string> to_string() const;
};

using collection = std::vector<item>;

struct evaluate_options {
  const definitions* defs = nullptr;  // defaults to definitions::r4()
  // %resource / %rootResource (default: the evaluated resource). %context is the input.
  const value* resource = nullptr;
  const value* root_resource = nullptr;
  // User variables: %name.
  std::map<std::string, collection, std::less<>> variables;
  // Strict mode reports semantic problems found while evaluating: unknown element names on a
  // known type, type filters that cannot match, non-boolean iif criteria.
  bool strict = false;
  // With strict: first/last/tail/skip/take/[] directly on children()/descendants() (whose order
  // is not defined) are errors.
  bool check_ordered_functions = false;
  bool track_paths = false;
  // trace(name [, projection]) receives its output here (nothing when empty).
  std::function<void(std::string_view name, const collection& items)> trace;
  // now()/today()/timeOfDay() use this instead of the clock when set (tests, reproducibility).
  std::optional<temporal> now;
};

namespace detail {
struct program;
}

class expression {
 public:
  expression() = default;
  const std::string& text() const noexcept;
  bool valid() const noexcept { return program_ != nullptr; }

  // Evaluates on a resource (or any subtree whose type the resourceType member names).
  collection evaluate(const value& resource, const evaluate_options& options = {}) const;
  // Evaluates with an explicit input collection (%context); `resource` is %resource.
  collection evaluate(const collection& input, const value* resource, const evaluate_options& options = {}) const;
  // Boolean result by the singleton rules: empty -> nullopt; one boolean -> it; one other item -> true.
  std::optional<bool> evaluate_boolean(const value& resource, const evaluate_options& options = {}) const;

 private:
  friend expression compile(std::string_view text);
  std::shared_ptr<const detail::program> program_;
};

// Parses and checks an expression (function names and argument counts). Throws syntax_error.
expression compile(std::string_view text);

// Node item for a resource (type from resourceType).
item resource_item(const value& resource, const definitions& defs = definitions::r4());
// Node item for any element given its FHIR type ("HumanName", "Quantity", "string"): evaluate
// invariants of datatypes with expression::evaluate({node_item(...)}, &resource, options).
// An unknown type name gives an untyped node (plain JSON navigation).
item node_item(const value& element, std::string_view fhir_type, const definitions& defs = definitions::r4());

// Formatting helpers (FHIRPath literal text without the '@').
std::string to_string(const temporal& t, item_kind kind);
std::optional<temporal> parse_temporal(std::string_view text, item_kind kind);

// A UCUM quantity in canonical base units (the table described above): the value converted and a
// canonical unit expression ("g.m-3" for mg/dL), equal for units of equal dimension. nullopt when
// the unit is not in the table.
std::optional<std::pair<decimal, std::string>> ucum_canonical(const decimal& value, std::string_view unit);

}  // namespace yilian::fhir::fhirpath
