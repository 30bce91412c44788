// FHIRPath internals shared by the parser, the evaluator and the function library.
#pragma once

#include <memory>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include "yilian/fhir/fhirpath.hpp"

namespace yilian::fhir::fhirpath::detail {

enum class node_kind : std::uint8_t {
  literal,       // value in `literal`; empty collection when `empty_literal`
  empty,         // {}
  identifier,    // member (or type name) on the input
  function,      // name(args) on the input
  this_ref,      // $this
  index_ref,     // $index
  total_ref,     // $total
  variable,      // %name
  indexer,       // input[arg0]
  unary_minus,
  unary_plus,
  binary,        // op in `op`
  is_type,       // input is type_name
  as_type,       // input as type_name
};

enum class binary_op : std::uint8_t {
  mul, div, int_div, mod, add, sub, concat, union_, lt, gt, le, ge, eq, equiv, ne, nequiv, in, contains,
  and_, or_, xor_, implies,
};

struct ast {
  node_kind kind = node_kind::literal;
  binary_op op = binary_op::eq;
  int function = -1;           // index into the function table
  std::size_t position = 0;
  std::string name;            // identifier, function or variable name
  std::string type_namespace;  // is/as/ofType: "FHIR", "System" or "" (either)
  std::string type_name;
  item literal;
  std::unique_ptr<ast> input;  // invocation target (null: the focus, $this)
  std::vector<std::unique_ptr<ast>> args;  // function args; binary: lhs, rhs
  std::shared_ptr<const std::regex> regex;  // pre-compiled literal pattern (matches/replaceMatches)
};

struct program {
  std::string text;
  std::unique_ptr<ast> root;
};

// Function table (parser checks arity; evaluator dispatches on the index, in this order).
enum class fn : std::uint8_t {
  f_empty, f_exists, f_all, f_allTrue, f_anyTrue, f_allFalse, f_anyFalse, f_subsetOf, f_supersetOf, f_count, f_distinct, f_isDistinct, f_where, f_select, f_repeat, f_ofType, f_single, f_first, f_last, f_tail, f_skip, f_take, f_intersect, f_exclude, f_union, f_combine, f_iif, f_toBoolean, f_convertsToBoolean, f_toInteger, f_convertsToInteger, f_toDecimal, f_convertsToDecimal, f_toString, f_convertsToString, f_toDate, f_convertsToDate, f_toDateTime, f_convertsToDateTime, f_toTime, f_convertsToTime, f_toQuantity, f_convertsToQuantity, f_indexOf, f_substring, f_startsWith, f_endsWith, f_contains, f_upper, f_lower, f_replace, f_matches, f_replaceMatches, f_length, f_toChars, f_abs, f_ceiling, f_exp, f_floor, f_ln, f_log, f_power, f_round, f_sqrt, f_truncate, f_children, f_descendants, f_trace, f_now, f_today, f_timeOfDay, f_not, f_is, f_as, f_type, f_aggregate, f_extension, f_hasValue, f_getValue, f_resolve, f_memberOf, f_conformsTo, f_elementDefinition, f_slice, f_checkModifiers, f_htmlChecks, f_matchesFull, f_trim, f_split, f_join, f_encode, f_decode, f_escape, f_unescape, f_sort, f_precision, f_lowBoundary, f_highBoundary, f_comparable
};

struct function_info {
  const char* name;
  int min_args;
  int max_args;
};
const function_info* find_function(std::string_view name, int* index);
const function_info& function_at(int index);

std::unique_ptr<ast> parse(std::string_view text);
// ECMAScript pattern where '.' also matches line breaks (FHIRPath regexes are single-line mode).
std::string regex_dotall(const std::string& pattern);

// Shared value helpers (fhirpath_values.cpp).
bool is_calendar_unit(std::string_view word);
// Equality / equivalence / ordering of two single items; nullopt when the result is empty
// (different precisions). Throws evaluation_error when the types cannot be compared (ordering).
std::optional<bool> items_equal(const item& a, const item& b, const definitions& defs);
bool items_equivalent(const item& a, const item& b, const definitions& defs);
std::optional<int> items_compare(const item& a, const item& b, const definitions& defs);
// A node converted to a system value when it is a primitive (or a Quantity); otherwise the node.
item to_system(const item& it, const definitions& defs);
// The same without copying: returns `it` itself when there is nothing to convert, else `storage`.
const item& to_system(const item& it, const definitions& defs, item& storage);
std::optional<temporal> add_duration(const temporal& t, item_kind kind, const decimal& amount, std::string_view unit,
                                     bool subtract);
std::optional<item> quantity_multiply(const item& a, const item& b, bool divide);
bool units_comparable(std::string_view a, std::string_view b);
std::optional<item> parse_quantity_text(std::string_view text);
std::string format_quantity(const item& q);
std::optional<decimal> decimal_div(const decimal& a, const decimal& b);
decimal decimal_add(const decimal& a, const decimal& b, bool subtract);
decimal decimal_mul(const decimal& a, const decimal& b);

}  // namespace yilian::fhir::fhirpath::detail
