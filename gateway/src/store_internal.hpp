// Private to the store: numbered migrations, the built-in identifier index, token parsing.
#pragma once

#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "yilian/gateway/resource_store.hpp"

namespace yilian::gateway::detail {

struct migration {
  int version;
  const char* description;
  const char* sql;
};

// Ordered by version, starting at 1, no gaps.
const std::vector<migration>& migrations();

// One alternative of a token search value: `system|code`, `|code` (no system), `code` (any
// system), `system|` (any code).
struct token_alternative {
  bool has_system = false;  // a `|` was present
  std::string system;       // "" with has_system = "no system"
  std::string code;         // "" with has_system = any code
};
// Splits on unescaped commas and the first unescaped `|`; `\,` `\|` `\\` are escapes.
std::vector<token_alternative> parse_token(std::string_view value);
std::vector<std::string> split_or_list(std::string_view value);

// SQL conditions (each starting with " AND ") on the resource row `alias` for search criteria,
// values appended to `params` as bound parameters. Throws store_error(invalid_criteria).
std::string criteria_condition(const request_context& ctx, std::string_view type,
                               const std::vector<criterion>& criteria, std::vector<std::string>& params,
                               const std::string& alias);

// Rows for one table sent as one statement with one array parameter per column:
//   INSERT INTO t (tenant, c1, c2...) SELECT $1, * FROM unnest($2::type[], $3::type[]...)
// The statement text is the same whatever the number of rows, and a thousand rows cost one round
// trip instead of a thousand. Values are bound parameters (array literals), never SQL text.
class array_rows {
 public:
  // `columns`: name and SQL type ("res_id", "text"), in the order add() receives values.
  array_rows(std::string table, std::vector<std::pair<std::string, std::string>> columns);

  // One value per column; nullopt is NULL.
  void add(std::initializer_list<std::optional<std::string_view>> values);
  std::size_t size() const noexcept { return rows_; }
  bool empty() const noexcept { return rows_ == 0; }

  // The INSERT above; does nothing without rows.
  void insert(pqxx::transaction_base& tx, const std::string& tenant) const;
  // "$2::text[], $3::bigint[]..." and the matching parameters ($1 is left for the tenant), for
  // statements of another shape (UPDATE ... FROM unnest(...)).
  std::string unnest_arguments() const;
  std::vector<std::string> parameters(const std::string& tenant) const;

 private:
  std::string table_;
  std::vector<std::pair<std::string, std::string>> columns_;
  std::vector<std::string> literals_;  // one array literal per column, without the closing brace
  std::size_t rows_ = 0;
};

// The participant that keeps the search index tables in step with every write (registered by
// every resource_store).
std::shared_ptr<write_participant> make_search_indexer();

}  // namespace yilian::gateway::detail
